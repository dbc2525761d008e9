"""Binary metrics: paper 004 §3 (Tables 1-2: AUC, accuracy, sensitivity, precision, specificity,
F1, the inner-lesion misclassification rate MCR) and paper 002 Table 1 (both classes' precision —
the negative's is the NPV —, recall and F1, their macro and support-weighted averages)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(bool)
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def mcr(y_true: np.ndarray, y_pred: np.ndarray, lesions: np.ndarray) -> tuple[float, int]:
    """Paper 004 §3.2: MCR(L) = W_L / N_L (misclassified images / images of lesion L), averaged
    over the lesions with at least one misclassified image; and how many such lesions there are.
    NaN when no image is misclassified."""
    wrong = np.asarray(y_true).astype(bool) != np.asarray(y_pred).astype(bool)
    per_lesion = pd.Series(wrong).groupby(np.asarray(lesions, dtype=object), sort=False).mean()
    erring = per_lesion[per_lesion > 0]
    return (float(erring.mean()) if len(erring) else math.nan), len(erring)


def binary_report(
    y_true: np.ndarray, scores: np.ndarray, y_pred: np.ndarray, lesions: np.ndarray | None = None
) -> dict[str, float]:
    """Paper 004 Table 1's columns for one test set: auc (from `scores`), and at the decisions
    `y_pred`: accuracy, sensitivity (recall of the positive class), precision, specificity, f1,
    and mcr / mcr_lesions when `lesions` (one id per image) is given; paper 002 Table 1's
    negative-class row (npv, specificity, f1_negative) and the macro averages (precision_macro,
    balanced_accuracy = recall_macro, f1_macro). NaN where undefined."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp, tn = int((y & p).sum()), int((~y & ~p).sum())
    fp, fn = int((~y & p).sum()), int((y & ~p).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    out = {
        "auc": roc_auc(y, scores),
        "accuracy": ratio(tp + tn, len(y)),
        "sensitivity": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "npv": ratio(tn, tn + fn),
        "f1_negative": ratio(2 * tn, 2 * tn + fn + fp),
    }
    for key, pos, neg in (
        ("precision_macro", "precision", "npv"),
        ("balanced_accuracy", "sensitivity", "specificity"),
        ("f1_macro", "f1", "f1_negative"),
    ):
        out[key] = (out[pos] + out[neg]) / 2
    if lesions is not None:
        out["mcr"], out["mcr_lesions"] = mcr(y, p, lesions)
    return out


def accuracy_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """Accuracy of a one-class (binary) confusion count [..., 1] (a bootstrap statistic)."""
    return ((n - fp - fn) / np.maximum(n, 1))[..., 0]


def balanced_accuracy_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """(sensitivity + specificity) / 2 = macro-averaged recall, from one-class counts."""
    tn = n - tp - fp - fn
    return ((tp / np.maximum(tp + fn, 1) + tn / np.maximum(tn + fp, 1)) / 2)[..., 0]


def macro_f1_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """(F1 of the positive + F1 of the negative class) / 2, from one-class counts."""
    tn = n - tp - fp - fn
    pos = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    neg = 2 * tn / np.maximum(2 * tn + fp + fn, 1)
    return ((pos + neg) / 2)[..., 0]
