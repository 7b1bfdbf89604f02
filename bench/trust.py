"""Calibration and the "unknown" answer, measured: train on one dataset, then score another folder
of images of none of its classes.

    python bench/trust.py                       # hymenoptera, with flowers5 as the outside folder
    python bench/trust.py --data D --outside O  # any pair

Runs ``graft train DATA`` and ``graft evaluate RUN DATA --split val --ood OUTSIDE --json`` as a user
would, prints the acceptance numbers (AUROC, share of outside images answered unknown, share of
val images wrongly answered unknown, ECE before and after calibration), then compares the
candidate scores on the same body features (why the unknown score is what it is):

- the maximum softmax probability and the energy score (from the head's logits);
- a class-conditional Mahalanobis distance, shared covariance shrunk by Ledoit-Wolf;
- the cosine distance to the k-th nearest training image, k = 1, 5, 10 (graft's: k = 1).

Each candidate's threshold accepts 95% of val, as graft's does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import graft_cmd, graft_version, machine_info, timed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def run_graft(data: Path, outside: Path, out: Path) -> tuple[dict, dict, dict]:
    """Train and evaluate with the CLI; the train run, the evaluate JSON and graft.json's metrics."""
    env = {**os.environ, "GRAFT_OFFLINE": "1"}
    train = timed(graft_cmd("train", str(data), "--out", str(out), "--overwrite", "--no-report"), env)
    ev = timed(
        graft_cmd("evaluate", str(out), str(data), "--split", "val", "--ood", str(outside), "--json"), env
    )
    line = next(x for x in reversed(ev["stdout"].splitlines()) if x.startswith("{"))
    metrics = json.loads((out / "graft.json").read_text())["metrics"]
    return train, {**json.loads(line), "seconds": ev["wall_s"]}, metrics


def candidates(run: Path, data: Path, outside: Path) -> list[tuple[str, float, float]]:
    """``(score, AUROC, share of outside images past the threshold that accepts 95% of val)``."""
    import torch
    from sklearn.covariance import LedoitWolf
    from sklearn.metrics import roc_auc_score

    from graft.data.dataset import ImageData, Sample
    from graft.data.selection import expand_paths
    from graft.features.extract import extract_features, feature_head
    from graft.features.views import eval_view
    from graft.learner.learner import load_learner

    learn = load_learner(run)
    split = ImageData.from_folder(data).splits
    other = [Sample(p, None) for p in expand_paths(outside)]
    views = [eval_view(learn.preprocessing)]
    jobs = [(split["train"], views), (split["val"], views), (other, views)]
    feats = extract_features(learn.model, learn.spec, learn.preprocessing, jobs, learn.device, cache=None)
    tr, va, ou = (f.vectors[:, 0].double().numpy() for f in feats)
    y = np.array([split["train"][i].label for i in feats[0].index])
    head = feature_head(learn.model, learn.spec).eval()
    with torch.no_grad():
        logit = {
            k: head(torch.tensor(v, dtype=torch.float32)).double().numpy()
            for k, v in (("va", va), ("ou", ou))
        }

    def lse(z):
        m = z.max(1)
        return m + np.log(np.exp(z - m[:, None]).sum(1))

    scores = {
        "max softmax probability": (
            -np.exp(logit["va"].max(1) - lse(logit["va"])),
            -np.exp(logit["ou"].max(1) - lse(logit["ou"])),
        ),
        "energy": (-lse(logit["va"]), -lse(logit["ou"])),
    }
    mu = np.stack([tr[y == c].mean(0) for c in np.unique(y)])
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(tr - mu[y]).covariance_)

    def maha(x):
        return np.min([np.einsum("nd,de,ne->n", x - m, precision, x - m) for m in mu], axis=0)

    scores["Mahalanobis (Ledoit-Wolf)"] = (maha(va), maha(ou))
    unit = tr / np.linalg.norm(tr, axis=1, keepdims=True)
    for k in (1, 5, 10):

        def knn(x, k=k):
            sim = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ unit.T
            return 1 - np.sort(sim, axis=1)[:, -k]

        scores[f"cosine distance, {k}-th nearest" + (" (graft)" if k == 1 else "")] = (knn(va), knn(ou))
    rows = []
    for name, (inside, out) in scores.items():
        auc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(out))], np.r_[inside, out])
        t = np.sort(inside)[int(np.ceil(0.95 * len(inside))) - 1]
        rows.append((name, float(auc), float((out > t).mean())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "hymenoptera")
    parser.add_argument("--outside", type=Path, default=SHARED / "flowers5")
    parser.add_argument("--out", type=Path, default=Path("/tmp/graft-bench-trust"))
    parser.add_argument("--no-candidates", action="store_true", help="skip the comparison of scores")
    args = parser.parse_args(argv)
    for folder in (args.data, args.outside):
        if not folder.is_dir():
            sys.exit(f"{folder} not found (see ../shared/datasets/SOURCES.md)")
    print(f"machine: {machine_info()}  graft {graft_version()}")
    train, ev, m = run_graft(args.data, args.outside, args.out)
    ood = ev["ood"]
    print(f"graft train: {train['wall_s']:.1f} s; graft evaluate --ood: {ev['seconds']:.1f} s")
    print(f"val accuracy {ev['accuracy']:.4f} {ev.get('intervals', {}).get('accuracy')}")
    print(
        f"ECE on val: {m['val_ece_uncalibrated']:.4f} uncalibrated, {m.get('val_ece', float('nan')):.4f} "
        f"calibrated (temperature {m.get('temperature', 1.0):.3f})"
    )
    print(f"AUROC {ood['auroc']:.4f} {ood['intervals'].get('auroc')}")
    print(
        f"at the stored threshold {ood['threshold']:.4f}: outside answered unknown "
        f"{ood['outside_rejected']:.4f} of {ood['outside']}; val answered unknown "
        f"{ood['inside_rejected']:.4f} of {ood['inside']}; "
        f"accuracy of the rest {ood['accepted_accuracy']:.4f}"
    )
    checks = {
        "AUROC >= 0.95": ood["auroc"] >= 0.95,
        ">= 90% of outside images unknown": ood["outside_rejected"] >= 0.90,
        "<= 5% of val images unknown": ood["inside_rejected"] <= 0.05,
        "ECE calibrated < uncalibrated": m.get("val_ece", 1.0) < m["val_ece_uncalibrated"],
    }
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if not args.no_candidates:
        print("\ncandidate scores on the same features (threshold: accepts 95% of val)")
        print(f"{'score':<42} {'AUROC':>7} {'outside unknown':>16}")
        for name, auc, rejected in candidates(args.out, args.data, args.outside):
            print(f"{name:<42} {auc:7.4f} {rejected:16.4f}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
