"""Clustering metrics: label combinations as single labels (paper 000 §2.2.3), Algorithm 1 (each
cluster's soft multi-label target from a development set), NMI and purity (paper 001 eq. 2-3)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score


def label_combinations(y: np.ndarray) -> np.ndarray:
    """Paper 000 §2.2.3: every distinct set of labels is one label. [n, C] 0/1 → [n] int ids
    (ids in sorted order of the combinations, so the same rows give the same ids)."""
    y = np.asarray(y).astype(np.int8)
    if y.ndim != 2:
        raise ValueError("expected an [n, C] 0/1 array")
    _, ids = np.unique(y, axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Paper 001 eq. 3: the share of images whose cluster's majority label is their label."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if len(labels) == 0:
        return float("nan")
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    table = np.zeros((ci.max() + 1, li.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, li), 1)
    return float(table.max(axis=1).sum() / len(labels))


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Paper 001 eq. 2: normalised mutual information (arithmetic normalisation)."""
    if len(labels) == 0:
        return float("nan")
    return float(normalized_mutual_info_score(labels, clusters))


def match_clusters(
    clusters: np.ndarray, y: np.ndarray, k: int, fallback: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paper 000 Algorithm 1: v̂_k = the mean multi-hot label of the development-set images
    assigned to cluster k. Returns (soft labels [k, C] float64, development images per cluster
    [k]). A cluster with no development image gets `fallback` (default: the development set's
    label prevalence, an uninformative guess; the paper leaves that case open)."""
    clusters = np.asarray(clusters, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    if len(clusters) != len(y):
        raise ValueError("clusters and labels have different lengths")
    sums = np.zeros((k, y.shape[1]))
    np.add.at(sums, clusters, y)
    counts = np.bincount(clusters, minlength=k)[:k]
    if fallback is None:
        fallback = y.mean(axis=0) if len(y) else np.zeros(y.shape[1])
    soft = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], fallback[None, :])
    return soft, counts
