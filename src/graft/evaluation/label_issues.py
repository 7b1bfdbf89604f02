"""Likely label errors: out-of-fold class probabilities from linear heads on body features,
ranked the confident-learning way (Northcutt et al., "Confident Learning", JAIR 2021).

graft implements the ranking itself (a few lines of NumPy) rather than use cleanlab, whose
AGPL-3.0 licence does not fit this Apache-2.0 project. An image is *flagged* when, with it left
out of the head's training data, another class clears that class's own confidence bar (the mean
probability the head gives the images labelled with it) while its own label falls below its
bar; or, if more, how many images the heads give under half a uniform guess's probability
(a confident head makes the bars so high that an image at 0.89 for the other class of two
misses them). That many images are flagged: those the heads give another class, with the least
probability left for their own label.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# The heads' L2 penalty per training image (sklearn's C is 1 / (this x images)): strong, so a
# few hundred mislabelled images cannot bend a head towards their labels.
PENALTY = 0.2
FOLDS = 5
# A label whose out-of-fold probability is under this share of 1 / classes is flagged even when
# no other class clears its confidence bar (with two classes: under 0.25).
UNLIKELY = 0.5


@dataclass
class LabelIssues:
    """Per labelled image: how likely its label is wrong, and what the heads say instead.

    Attributes:
        probs: ``(n, classes)`` out-of-fold probabilities.
        score: ``1 - probs[i, label]``: higher is more suspect.
        suggested: The class with the highest out-of-fold probability.
        flagged: The images reported (see the module).
        accuracy: Out-of-fold accuracy against the given labels.
    """

    probs: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    flagged: np.ndarray
    accuracy: float


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per image, each class dealt round-robin over the folds in a seeded order."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        out[idx] = (np.arange(len(idx)) + start) % folds
        start += len(idx)  # small classes do not all start in fold 0
    return out


def out_of_fold(
    features: np.ndarray, labels: np.ndarray, classes: int, *, folds: int = FOLDS, seed: int = 0
) -> np.ndarray:
    """Class probabilities of each image from a logistic-regression head trained without it.

    Features are standardised; each fold's head is an L2-penalised multinomial logistic
    regression (scikit-learn, L-BFGS). A class a fold's training part lacks gets probability 0.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    fold = stratified_folds(labels, folds, seed)
    probs = np.zeros((len(labels), classes))
    for k in range(folds):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        seen = np.unique(labels[train])
        if len(seen) < 2:  # nothing to learn from: the label's own class keeps all probability
            probs[test, labels[test]] = 1.0
            continue
        head = LogisticRegression(C=1.0 / (PENALTY * train.sum()), max_iter=1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            head.fit(x[train], labels[train])
        probs[np.ix_(test, seen)] = head.predict_proba(x[test])
    return probs


def rank_label_issues(probs: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """Score, suggest and flag from out-of-fold ``probs`` and the given ``labels``."""
    n, classes = probs.shape
    rows = np.arange(n)
    given = probs[rows, labels]
    # Each class's bar: the mean probability of the class over the images labelled with it.
    bars = np.array([probs[labels == c, c].mean() if (labels == c).any() else 1.0 for c in range(classes)])
    confident = probs >= bars[None, :]
    confident[rows, labels] = False
    # How many to flag comes from the confident joint (images whose label is under its bar while
    # another class clears its own); which ones, from the ranking.
    count = int((confident.any(1) & (given < bars[labels])).sum())
    suggested = probs.argmax(1)
    # ...or, when more, the images whose label gets under half a uniform guess's share.
    count = max(count, int(((suggested != labels) & (given < UNLIKELY / classes)).sum()))
    score = 1.0 - given
    wrong = np.flatnonzero(suggested != labels)
    flagged = np.zeros(n, bool)
    flagged[wrong[np.argsort(-score[wrong], kind="stable")[:count]]] = True
    return LabelIssues(probs, score, suggested, flagged, float((suggested == labels).mean()))
