"""How learnable is the synthetic archive? A linear probe on downsampled pixels against the
label-prevalence baseline, both scored with paper 000's protocol (per-class thresholds that maximise
validation F1, then support-weighted test F1, §3.2). Later methods need room between the two."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from medssl.data.synth.archive import CLASSES, plan_archive
from medssl.metrics.multilabel import (
    best_thresholds,
    constant_score_thresholds,
    multilabel_report,
)

# every image labeled, patient-disjoint train/val/test
PROBE_SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}


@dataclass
class ProbeResult:
    size: str
    images: int
    pixels: int
    probe_weighted_f1: float
    prevalence_weighted_f1: float
    probe_per_class_f1: dict[str, float]

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _downsample(image: np.ndarray, side: int) -> np.ndarray:
    k = image.shape[0] // side
    return image[: side * k, : side * k].reshape(side, k, side, k).mean(axis=(1, 3))


def linear_probe(size: str = "small", seed: int = 0, pixels: int = 16) -> ProbeResult:
    """Render the whole `size` archive in memory (every image labeled) and score a one-vs-rest
    logistic regression on `pixels`×`pixels` block means, next to the prevalence baseline."""
    plan = plan_archive(size, seed, PROBE_SPLITS)
    features = np.stack(
        [
            _downsample(plan.render(i).astype(np.float32), pixels).ravel()
            for i in range(len(plan.organs))
        ]
    )
    y = plan.truth()
    split = plan.manifest["split"].to_numpy()
    tr, va, te = (split == s for s in ("train", "val", "test"))

    scaler = StandardScaler().fit(features[tr])
    x = scaler.transform(features)
    scores = np.column_stack(
        [
            LogisticRegression(C=0.1, max_iter=2000).fit(x[tr], y[tr, c]).predict_proba(x)[:, 1]
            for c in range(len(CLASSES))
        ]
    )
    probe = multilabel_report(
        y[te], scores[te] >= best_thresholds(y[va], scores[va]), list(CLASSES)
    )
    constant = np.zeros((te.sum(), len(CLASSES)))
    prevalence = multilabel_report(
        y[te], constant >= constant_score_thresholds(y[va]), list(CLASSES)
    )
    return ProbeResult(
        size=size,
        images=len(y),
        pixels=pixels,
        probe_weighted_f1=probe.weighted["f1"],
        prevalence_weighted_f1=prevalence.weighted["f1"],
        probe_per_class_f1={c: float(f) for c, f in zip(CLASSES, probe.f1, strict=True)},
    )
