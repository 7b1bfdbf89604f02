"""The on-disk feature cache: content hashes, tensor hashes, shards, damage and merging."""

import shutil

import pytest
import torch

from graft.features import cache as cache_module
from graft.features.cache import MAX_SHARDS, FeatureCache, file_hash, tensor_hash


def test_file_hash_follows_content_not_path(tmp_path):
    a = tmp_path / "a" / "img.jpg"
    a.parent.mkdir()
    a.write_bytes(bytes(range(256)) * 10)
    b = tmp_path / "elsewhere" / "renamed.png"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    assert file_hash(a) == file_hash(b)
    assert len(file_hash(a)) == 32

    data = bytearray(b.read_bytes())
    data[1000] ^= 0x01
    b.write_bytes(bytes(data))
    assert file_hash(a) != file_hash(b)


def test_tensor_hash_sees_values_and_extra_not_memory_layout():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 5, 5, generator=g)
    base = tensor_hash([("w", w)], {"arch": "x"})

    assert tensor_hash([("w", w.clone())], {"arch": "x"}) == base
    last = w.contiguous(memory_format=torch.channels_last)
    assert not last.is_contiguous()
    assert tensor_hash([("w", last)], {"arch": "x"}) == base

    changed = w.clone()
    changed[1, 2, 3, 4] += 1e-3
    assert tensor_hash([("w", changed)], {"arch": "x"}) != base
    assert tensor_hash([("w", w)], {"arch": "y"}) != base
    assert tensor_hash([("w", w)], {"arch": "x", "precision": "bf16"}) != base
    assert tensor_hash([("v", w)], {"arch": "x"}) != base  # the name counts too
    assert tensor_hash([("w", w.double())], {"arch": "x"}) != base  # and the dtype


def test_put_then_get_from_a_new_instance(tmp_path):
    vectors = {f"eval:{i:032x}": torch.arange(8, dtype=torch.float32) * i for i in range(5)}
    FeatureCache(tmp_path, "body").put(vectors)

    fresh = FeatureCache(tmp_path, "body")  # reads only what is on disk
    assert len(fresh) == 5
    got = fresh.get([*vectors, "eval:missing", "aug0-x:" + "0" * 32])
    assert set(got) == set(vectors)
    for k, v in vectors.items():
        assert torch.equal(got[k], v)
    assert FeatureCache(tmp_path, "other-body").get(list(vectors)) == {}


def test_a_damaged_shard_is_only_a_miss(tmp_path):
    good = {"eval:" + "a" * 32: torch.ones(4)}
    FeatureCache(tmp_path, "body").put(good)
    (tmp_path / "body" / "shard-x.safetensors").write_bytes(b"this is not a safetensors file" * 3)
    (tmp_path / "body" / "shard-empty.safetensors").write_bytes(b"")

    cache = FeatureCache(tmp_path, "body")
    assert cache.get(["eval:" + "b" * 32]) == {}
    got = cache.get(list(good))
    assert torch.equal(got["eval:" + "a" * 32], torch.ones(4))
    # Writing next to the damaged shards still works.
    cache.put({"eval:" + "c" * 32: torch.zeros(4)})
    assert len(FeatureCache(tmp_path, "body")) == 2


def test_shards_merge_and_keep_every_vector(tmp_path):
    cache = FeatureCache(tmp_path, "body")
    expected = {}
    for i in range(MAX_SHARDS):
        batch = {f"eval:{i:04d}{j:028d}": torch.full((3,), float(i * 10 + j)) for j in range(2)}
        cache.put(batch)
        expected.update(batch)
    assert len(list((tmp_path / "body").glob("shard-*.safetensors"))) == MAX_SHARDS

    last = {"aug0-x:" + "f" * 32: torch.tensor([1.0, 2.0, 3.0])}
    cache.put(last)  # one shard too many: everything is merged into one
    expected.update(last)
    shards = list((tmp_path / "body").glob("shard-*.safetensors"))
    assert len(shards) == 1

    for reader in (cache, FeatureCache(tmp_path, "body")):
        got = reader.get(list(expected))
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert len(FeatureCache(tmp_path, "body")) == len(expected) == 2 * MAX_SHARDS + 1


def test_vectors_are_stored_as_float32(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "here"))
    assert cache_module.default_cache_root() == tmp_path / "here"
    cache = FeatureCache(cache_module.default_cache_root(), "body")
    cache.put({"eval:k": torch.tensor([0.5, 1.5], dtype=torch.float64)})
    got = FeatureCache(tmp_path / "here", "body").get(["eval:k"])["eval:k"]
    assert got.dtype == torch.float32 and got.tolist() == [0.5, 1.5]


def test_an_unwritable_cache_warns_and_keeps_going(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = FeatureCache(blocker / "root", "key")
    with pytest.warns(UserWarning, match="could not write the feature cache"):
        cache.put({"eval:abc": torch.ones(4)})
    assert cache.get(["eval:abc"]) == {}
