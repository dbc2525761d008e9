"""Multi-label metrics of paper 000 §3.2: a class-specific threshold that maximises each class's F1
on the validation split, then per-class precision/recall/F1 and their support-weighted average."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_fscore_support


def best_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per class, the score threshold t (predict positive iff score >= t) that maximises F1.

    Exact: every distinct score is a candidate, evaluated in one sorted pass per class. Ties in F1
    go to the highest threshold. A class with no positives gets +inf (never predicted).
    """
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    out = np.full(y_true.shape[1], np.inf)
    for c in range(y_true.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        s, y = scores[order, c], y_true[order, c]
        positives = y.sum()
        if positives == 0:
            continue
        tp = np.cumsum(y)
        k = np.arange(1, len(y) + 1)  # predicted positives when cutting after position k-1
        last_of_value = np.r_[s[1:] != s[:-1], True]  # a cut can only fall between distinct scores
        f1 = np.where(last_of_value, 2 * tp / (k + positives), -1.0)
        best = np.flatnonzero(f1 == f1.max())[0]  # smallest k = highest threshold
        out[c] = s[best]
    return out


def constant_score_thresholds(y_true: np.ndarray) -> np.ndarray:
    """Thresholds for a classifier whose score is the same for every image (the label-prevalence
    baseline): predicting every image positive is F1-optimal for any class with a positive."""
    return np.where(np.asarray(y_true).sum(axis=0) > 0, -np.inf, np.inf)


@dataclass
class MultilabelReport:
    classes: list[str]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    weighted: dict[str, float]

    def as_dict(self) -> dict:
        per_class = {
            c: {
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
            }
            for i, c in enumerate(self.classes)
        }
        return {"per_class": per_class, "weighted": self.weighted}


def multilabel_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> MultilabelReport:
    """Per-class and support-weighted precision, recall and F1 (scikit-learn's definitions,
    zero_division=0), as in paper 000 Tables 1-2."""
    p, r, f, s = _prfs(y_true, y_pred, None)
    wp, wr, wf, _ = _prfs(y_true, y_pred, "weighted")
    weighted = {"precision": float(wp), "recall": float(wr), "f1": float(wf)}
    return MultilabelReport(list(classes), p, r, f, s, weighted)


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(_prfs(y_true, y_pred, "weighted")[2])


def _prfs(y_true: np.ndarray, y_pred: np.ndarray, average: str | None) -> tuple:
    """scikit-learn's precision_recall_fscore_support over the columns of [n, C] 0/1 arrays. One
    column (a binary task) is the positive class alone: scikit-learn would read it as a binary
    vector and average over both classes."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        p, r, f, s = precision_recall_fscore_support(
            y_true[:, 0], y_pred[:, 0], labels=[1], average=None, zero_division=0
        )
        return (p, r, f, s) if average is None else (p[0], r[0], f[0], None)
    return precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
