"""How learnable is a synthetic archive? A linear probe on downsampled pixels against a baseline
that ignores the pixels. Later methods need room between the two.

* abdominal-us (multi-label organs): one-vs-rest probe against the label-prevalence baseline, both
  scored with paper 000's protocol (per-class thresholds that maximise validation F1, then
  support-weighted test F1, §3.2) — `linear_probe`;
* cardiac-mr (one category per image): a multinomial probe against the majority class, scored by
  accuracy and macro F1, next to the accuracy of the DICOM header — `category_probe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from medssl.data.synth.archive import CLASSES, plan_archive
from medssl.data.synth.cardiac import plan_cardiac
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


@dataclass
class CategoryProbeResult:
    size: str
    images: int
    pixels: int
    classes: int
    probe_accuracy: float
    probe_macro_f1: float
    majority_accuracy: float
    majority_macro_f1: float
    header_accuracy: float  # share of images whose series_description is their true category
    probe_per_class_f1: dict[str, float]

    def as_dict(self) -> dict:
        return self.__dict__.copy()


class _Renderable(Protocol):
    manifest: Any

    def render(self, row: int) -> np.ndarray: ...


def _downsample(image: np.ndarray, side: int) -> np.ndarray:
    k = image.shape[0] // side
    return image[: side * k, : side * k].reshape(side, k, side, k).mean(axis=(1, 3))


def pixel_features(plan: _Renderable, pixels: int) -> np.ndarray:
    """Every image of `plan` rendered in memory as `pixels`×`pixels` block means: (N, pixels²)."""
    return np.stack(
        [
            _downsample(plan.render(i).astype(np.float32), pixels).ravel()
            for i in range(len(plan.manifest))
        ]
    )


def _standardised(features: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    return StandardScaler().fit(features[fit_rows]).transform(features)


def linear_probe(size: str = "small", seed: int = 0, pixels: int = 16) -> ProbeResult:
    """Render the whole `size` archive in memory (every image labeled) and score a one-vs-rest
    logistic regression on `pixels`×`pixels` block means, next to the prevalence baseline."""
    plan = plan_archive(size, seed, PROBE_SPLITS)
    y = plan.truth()
    split = plan.manifest["split"].to_numpy()
    tr, va, te = (split == s for s in ("train", "val", "test"))
    x = _standardised(pixel_features(plan, pixels), tr)
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


def category_probe(
    size: str = "small", seed: int = 0, pixels: int = 16, metadata_error: float = 0.15
) -> CategoryProbeResult:
    """Render the whole cardiac-MR `size` archive in memory (every image labeled) and score a
    multinomial logistic regression on `pixels`×`pixels` block means, fitted on train + val
    (nothing to tune), next to the majority class of train; both on the test patients."""
    plan = plan_cardiac(size, seed, PROBE_SPLITS, metadata_error)
    classes = plan.classes
    y = plan.category
    split = plan.manifest["split"].to_numpy()
    fit, te = np.isin(split, ("train", "val")), split == "test"
    x = _standardised(pixel_features(plan, pixels), fit)
    predicted = LogisticRegression(C=0.1, max_iter=3000).fit(x[fit], y[fit]).predict(x[te])
    majority = np.full(int(te.sum()), np.bincount(y[fit], minlength=len(classes)).argmax())
    present = np.unique(y[te])  # macro F1 over the categories the test patients have

    def macro_f1(pred: np.ndarray) -> float:
        return float(f1_score(y[te], pred, labels=present, average="macro", zero_division=0))

    per_class = f1_score(
        y[te], predicted, labels=range(len(classes)), average=None, zero_division=0
    )
    return CategoryProbeResult(
        size=size,
        images=len(y),
        pixels=pixels,
        classes=len(classes),
        probe_accuracy=float((predicted == y[te]).mean()),
        probe_macro_f1=macro_f1(predicted),
        majority_accuracy=float((majority == y[te]).mean()),
        majority_macro_f1=macro_f1(majority),
        header_accuracy=plan.header_accuracy(),
        probe_per_class_f1={c: round(float(f), 3) for c, f in zip(classes, per_class, strict=True)},
    )
