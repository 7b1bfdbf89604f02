"""Failures at the CLI boundary are one line and exit 2, never a traceback (issue 18, item 5).

Every error here is real: a read-only bind mount and a 64 KiB tmpfs in a user namespace
(``unshare -rm``, skipped where the kernel forbids it), ``/dev/full``, a file where a folder
should be, an ``RLIMIT_FSIZE`` or ``RLIMIT_AS`` set in the child process, and PNGs whose chunks
pass their CRC but whose pixel data does not inflate. These tests run as root too.
"""

import os
import resource
import shlex
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from graft import ImageData, Learner
from graft.cli.main import main
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained for seconds, its 6 val images, and 6 PNGs that pass every cheap check (chunk
    CRCs) but cannot be decoded."""
    root = tmp_path_factory.mktemp("errors")
    make_image_folder(root / "train", {"red": 6, "green": 6, "blue": 6}, size=(50, 40), seed=1)
    val = make_image_folder(root / "val", {"red": 2, "green": 2, "blue": 2}, size=(50, 40), seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(mode="features", epochs=1, batch_size=8, lr=0.02, augment=False, workers=0, log=lambda _: None)
    bad = root / "bad"
    for image in sorted(val.rglob("*.png")):
        (bad / image.parent.name).mkdir(parents=True, exist_ok=True)
        _corrupt_png(image, bad / image.parent.name / image.name)
    return str(learn.save(root / "run")), str(val), str(bad)


def _corrupt_png(src: Path, dst: Path) -> None:
    """``src`` with its IDAT data overwritten after the zlib header, and the CRCs recomputed:
    ``verify()`` (the scan's check) passes, decoding fails."""
    data, out, i = src.read_bytes(), bytearray(src.read_bytes()[:8]), 8
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i : i + 8])
        body = bytearray(data[i + 8 : i + 8 + n])
        if kind == b"IDAT":
            body[2:] = b"\xff" * (len(body) - 2)
        out += struct.pack(">I4s", n, kind) + body + struct.pack(">I", zlib.crc32(kind + body))
        i += 12 + n
    dst.write_bytes(bytes(out))


def _one_error_line(err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err
    assert lines[-1].startswith("graft: error: ") and pattern in lines[-1], err


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


needs_userns = pytest.mark.skipif(not _can_unshare(), reason="no unprivileged user+mount namespaces here")


def _graft_in_namespace(setup: str, *argvs: list[str]) -> list[subprocess.CompletedProcess]:
    """Run ``graft`` commands as new processes in a user+mount namespace after the shell ``setup``
    (mounts), so the file systems they see are real read-only or tiny ones, even for root."""
    results = []
    for argv in argvs:
        cmd = f"{setup} && exec {shlex.quote(sys.executable)} -m graft {shlex.join(argv)}"
        results.append(subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True))
    return results


def _graft_limited(limit: int, kind: int, argv: list[str]) -> subprocess.CompletedProcess:
    """``graft argv`` in a child whose ``kind`` resource limit is ``limit`` (Python ignores
    SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG, as on a full quota)."""

    def limited() -> None:
        resource.setrlimit(kind, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "graft", *argv], capture_output=True, text=True, preexec_fn=limited
    )


# Read-only file systems and folders that cannot be made.


def test_a_file_where_the_folder_should_be(run, tmp_path, capsys):
    run_dir, val, _ = run
    (tmp_path / "afile").write_text("x")
    assert main(["predict", run_dir, val, "--csv", str(tmp_path / "afile" / "p.csv")]) == 2
    _one_error_line(
        capsys.readouterr().err, f"cannot write {tmp_path}/afile/p.csv: {tmp_path}/afile is a file"
    )
    assert main(["export", run_dir, "--out", str(tmp_path / "afile" / "sub" / "m.onnx"), "--check", val]) == 2
    _one_error_line(capsys.readouterr().err, f"{tmp_path}/afile is a file, not a folder")
    assert (
        main(["merge-predictions", str(tmp_path / "afile"), "--out", str(tmp_path / "afile" / "m.csv")]) == 2
    )


@needs_userns
def test_read_only_file_system(run, tmp_path):
    run_dir, val, _ = run
    ro = tmp_path / "ro"
    ro.mkdir()
    setup = f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} {ro}"
    predict, export = _graft_in_namespace(
        setup,
        ["predict", run_dir, val, "--csv", str(ro / "p.csv")],
        ["export", run_dir, "--out", str(ro / "m.onnx"), "--check", val],
    )
    assert predict.returncode == 2 and export.returncode == 2
    _one_error_line(predict.stderr, f"cannot write {ro}/p.csv: Read-only file system")
    _one_error_line(export.stderr, f"cannot write {ro}/m.onnx: Read-only file system")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder")
def test_unwritable_folder(run, tmp_path, capsys):
    run_dir, val, _ = run
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main(["predict", run_dir, val, "--csv", str(locked / "p.csv")]) == 2
    _one_error_line(capsys.readouterr().err, f"cannot write {locked}/p.csv: Permission denied")
    assert main(["export", run_dir, "--out", str(locked / "m.onnx"), "--check", val]) == 2
    _one_error_line(capsys.readouterr().err, f"cannot write {locked}/m.onnx: Permission denied")


# Full disks.


def test_predictions_to_a_full_device(run, capsys):
    run_dir, val, _ = run
    assert main(["predict", run_dir, val, "--csv", "/dev/full"]) == 2
    _one_error_line(capsys.readouterr().err, "cannot write /dev/full: No space left on device")


def test_disk_full_in_the_middle_of_predictions_then_resume(run, tmp_path, capsys):
    run_dir, val, _ = run
    whole, csv = tmp_path / "whole.csv", tmp_path / "p.csv"
    assert main(["predict", run_dir, val, "--csv", str(whole)]) == 0
    # Room for the header and two chunks of two rows, and part of the third chunk.
    limit = len("".join(whole.read_text().splitlines(keepends=True)[:5]).encode()) + 10
    argv = ["predict", run_dir, val, "--csv", str(csv), "--chunk-size", "2"]
    cut = _graft_limited(limit, resource.RLIMIT_FSIZE, argv)
    assert cut.returncode == 2, cut.stderr
    _one_error_line(
        cut.stderr, f"cannot write {csv}: File too large; it keeps 4 predictions: graft predict --resume"
    )
    assert main([*argv, "--resume"]) == 0
    assert "dropped a half-written last line (10 bytes)" in capsys.readouterr().err
    assert csv.read_text() == whole.read_text()


def _report_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name == "report.html")


@needs_userns
def test_report_on_a_full_disk(run, tmp_path):
    run_dir, val, _ = run
    small = tmp_path / "small"
    small.mkdir()
    (report,) = _graft_in_namespace(
        f"mount -t tmpfs -o size=64k none {small}",
        ["report", run_dir, val, "--out", str(small / "report")],
    )
    assert report.returncode == 2
    _one_error_line(report.stderr, "No space left on device")
    assert "cannot write" in report.stderr


def test_report_past_the_file_size_limit(run, tmp_path):
    run_dir, val, _ = run
    out = tmp_path / "report"
    report = _graft_limited(30_000, resource.RLIMIT_FSIZE, ["report", run_dir, val, "--out", str(out)])
    assert report.returncode == 2
    _one_error_line(report.stderr, f"cannot write {out}: File too large; the report was not written")
    assert _report_leftovers(out) == []  # no half-written page, no temporary files


# Nothing decodable.


def test_predict_where_no_image_decodes(run, capsys):
    run_dir, val, bad = run
    assert main(["predict", run_dir, bad]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    _one_error_line(err, "6 images given, none could be decoded: nothing was predicted")
    # Some decode: exit 0, the predictions on stdout and the count of the others on stderr.
    assert main(["predict", run_dir, val, bad]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 6
    assert err.strip().splitlines()[-1] == "graft: note: skipped 6 undecodable files"


def test_evaluate_and_report_where_no_image_decodes(run, tmp_path, capsys):
    run_dir, _, bad = run
    assert main(["evaluate", run_dir, bad]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    _one_error_line(err, f"none of the 6 images in {bad} could be decoded: nothing to evaluate")
    assert main(["report", run_dir, bad, "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys.readouterr().err, "could be decoded: no report")


# What no command words itself: main() still prints one line.


def test_any_other_os_error_is_one_line(run, tmp_path, capsys):
    run_dir, val, _ = run
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert main(["predict", run_dir, val, "--csv", str(folder), "--resume"]) == 2
    assert capsys.readouterr().err == f"graft: error: Is a directory: {folder}\n"


def test_out_of_memory_is_one_line(tmp_path):
    # A real MemoryError: merging a 13 MB predictions CSV with the address space capped at what
    # the process already maps plus 64 MiB.
    part = tmp_path / "part.csv"
    rows = "".join(f"/data/img_{i:08d}.png,red,0.500000\n" for i in range(360_000))
    part.write_text("path,label,prob\n" + rows)
    code = (
        "import resource, sys\n"
        "import graft.evaluation.stream\n"
        "from graft.cli.main import build_parser, main\n"
        "build_parser()\n"
        "vm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmSize'))\n"
        "limit = vm * 1024 + (64 << 20)\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        f"sys.exit(main(['merge-predictions', {str(part)!r}, '--out', {str(tmp_path / 'm.csv')!r}]))\n"
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, "graft: error: out of memory")
