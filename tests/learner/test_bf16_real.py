"""bf16 inference agrees with fp32 on real photos (slow: bf16 is emulated on CPUs without it)."""

import numpy as np
import pytest

from graft import ImageData, Learner
from graft.inference.predict import sample_probs

pytestmark = pytest.mark.slow


def test_bf16_top1_matches_fp32_on_hymenoptera(shared_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    data = ImageData.from_folder(shared_dataset("hymenoptera"))
    learn = Learner(data, "tf_efficientnet_lite0", device="cpu")
    learn.fit(mode="features", log=lambda _: None)

    val = data.splits["val"]
    assert len(val) == 153
    top1, all_probs = {}, {}
    for precision in ("fp32", "bf16"):
        # use_cache=False: both precisions really run the (folded) network on every image.
        probs, kept = sample_probs(
            learn.model,
            learn.spec,
            learn.preprocessing,
            val,
            learn.device,
            precision=precision,
            use_cache=False,
        )
        assert kept.tolist() == list(range(153))
        assert np.allclose(probs.sum(1), 1.0)
        top1[precision], all_probs[precision] = probs.argmax(1), probs

    labels = np.array([s.label for s in val])
    accuracy = float((top1["fp32"] == labels).mean())
    disagree = int((top1["fp32"] != top1["bf16"]).sum())
    print(f"fp32 val accuracy {accuracy:.4f}; bf16 top-1 differs on {disagree} of 153 images")
    assert accuracy >= 0.93
    assert accuracy == pytest.approx(learn.metrics["val_acc"])
    assert disagree <= 1
    # bf16 really ran in lower precision: the probabilities differ, if only a little.
    gap = float(np.abs(all_probs["fp32"] - all_probs["bf16"]).max())
    print(f"largest probability difference fp32 vs bf16: {gap:.4f}")
    assert gap > 0
