"""Detection metrics of paper 003 §IV: the COCO summary of Table I (mAP@[.5:.95], mAP@0.5, mAP
small, AR@100, AR small) with the per-class mAP of Fig. 4, and Table II's mean IoUs (between two
readers, and between the fused ground truth and a model's predictions).

Tables are DataFrames with columns image, label (a class name), x1 y1 x2 y2 (pixels); predictions
have a `score` too, a readers' boxes table a `reader_id` (the contract's BOX_COLUMNS).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from medssl.data.boxes import COORDS, box_iou

# Table I's columns: our key → torchmetrics MeanAveragePrecision's key (COCOeval.stats index)
COCO_KEYS = {
    "map": "map",  # stats[0]: AP @[.50:.95], all areas, 100 detections per image and class
    "map50": "map_50",  # stats[1]
    "map_small": "map_small",  # stats[3]: area <= 32² (COCO's areaRng [0, 32²], bounds inclusive)
    "ar100": "mar_100",  # stats[8]: AR @[.50:.95], all areas, 100 detections
    "ar_small": "mar_small",  # stats[9]
}

# COCOeval's own thresholds (pycocotools Params), in float64. torchmetrics' defaults come from a
# float32 torch.linspace (0.55 → 0.550000012, 0.65 → 0.649999976, recall 0.3 → 0.300000012, …):
# an IoU or a recall that falls exactly on a threshold — IoU 0.55 from pixel boxes, recall 3/10 —
# then lands on the other side of it, and mAP / AR differ from pycocotools' by up to ~0.01.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """A ValueError naming the columns `table` lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {', '.join(missing)}")


def _codes(values: pd.Series, known: dict[str, int], what: str, kind: str) -> np.ndarray:
    """Positions of `values` in `known`; a ValueError naming the values not in it."""
    codes = values.astype(object).map(known)
    if codes.isna().any():
        unknown = sorted(map(str, pd.unique(values[codes.isna()].astype(object))))
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise ValueError(f"{what}: {kind}(s) {shown} not among the {len(known)} given")
    return codes.to_numpy(dtype=np.int64)


def _per_image(
    table: pd.DataFrame, classes: dict[str, int], images: dict[str, int], what: str, scored: bool
) -> list[dict]:
    """torchmetrics' input for every image of `images` (in that order): float64 xyxy boxes, int
    labels, and scores when `scored`; empty tensors for an image without rows."""
    import torch

    _require(table, ["image", "label", *COORDS, *(["score"] if scored else [])], what)
    image = _codes(table["image"], images, what, "image")
    label = _codes(table["label"], classes, what, "label")
    order = np.argsort(image, kind="stable")
    bounds = np.searchsorted(image[order], np.arange(len(images) + 1))
    boxes = table[COORDS].to_numpy(dtype=np.float64)[order]
    label = label[order]
    scores = table["score"].to_numpy(dtype=np.float64)[order] if scored else None
    out = []
    for i in range(len(images)):
        part = slice(bounds[i], bounds[i + 1])
        item = {"boxes": torch.from_numpy(boxes[part]), "labels": torch.from_numpy(label[part])}
        if scored:
            item["scores"] = torch.from_numpy(scores[part])
        out.append(item)
    return out


def coco_metrics(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    classes: list[str],
    images: Sequence[str],
) -> dict:
    """Paper 003 Table I (COCO evaluation, torchmetrics' MeanAveragePrecision on the
    faster-coco-eval backend): map, map50, map_small, ar100, ar_small, and map_per_class
    {class: AP@[.5:.95]} (Fig. 4) for the classes with ground truth in the set.

    Every image of `images` is evaluated, also one with no rows (its predictions are false
    positives); a row whose image is not in `images`, or whose label is not in `classes`, is a
    ValueError. pycocotools' COCOeval agrees to 1e-6 (the tests; the five summary values come
    back as float32), with COCO's conventions: area = (x2 − x1)(y2 − y1), no +1 pixel; "small"
    is area <= 32² (bounds inclusive: a 32×32 box is small); per image and class only the 100
    best-scored predictions count; tied scores keep the table's order. A value COCO reports as
    −1 (no ground truth in the area range: map_small without small boxes, anything without
    truth) is NaN here; a class with truth and no predictions has AP 0.
    """
    from torchmetrics.detection import MeanAveragePrecision

    class_ids = {c: i for i, c in enumerate(classes)}
    if len(class_ids) != len(classes):
        raise ValueError("coco_metrics: classes has duplicates")
    image_ids = {m: i for i, m in enumerate(images)}
    if len(image_ids) != len(images):
        raise ValueError("coco_metrics: images has duplicates")
    if not image_ids:
        raise ValueError("coco_metrics: no images to evaluate")
    target = _per_image(truth, class_ids, image_ids, "coco_metrics truth", scored=False)
    preds = _per_image(predictions, class_ids, image_ids, "coco_metrics predictions", scored=True)

    # Per-class AP from COCOeval's precision array (extended_summary) rather than class_metrics,
    # which re-runs the evaluation once per class: the same numbers, in float64, 2.5× faster.
    metric = MeanAveragePrecision(
        iou_type="bbox",
        backend="faster_coco_eval",
        box_format="xyxy",
        extended_summary=True,
        iou_thresholds=IOU_THRESHOLDS,
        rec_thresholds=RECALL_THRESHOLDS,
    )
    # more than 100 predictions on an image is COCO's business (the best 100 count): no warning
    metric.warn_on_many_detections = False
    metric.update(preds, target)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = metric.compute()

    def value(x: float) -> float:
        return math.nan if x < 0 else float(x)

    out = {ours: value(float(result[theirs])) for ours, theirs in COCO_KEYS.items()}
    # precision [IoU thresholds, recall thresholds, classes, areas (all first), max dets (100
    # last)]; a class's AP is the mean of its entries > −1 (−1: no truth of the class)
    precision = result["precision"].numpy() if "precision" in result else np.empty((0, 0, 0, 1, 1))
    ids = result["classes"].reshape(-1).tolist()
    per_class = {}
    for k, class_id in enumerate(ids):
        p = precision[:, :, k, 0, -1]
        if (p > -1).any():
            per_class[classes[class_id]] = float(p[p > -1].mean())
    out["map_per_class"] = {c: per_class[c] for c in classes if c in per_class}
    return out


def _best_ious(boxes: pd.DataFrame, others: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `boxes`: the highest IoU with a row of `others` of the same image and label
    (0 where there is none), and whether there was any such row."""
    best = np.zeros(len(boxes))
    found = np.zeros(len(boxes), dtype=bool)
    groups = others.groupby(["image", "label"], sort=False).indices
    coords = boxes[COORDS].to_numpy(dtype=np.float64)
    other_coords = others[COORDS].to_numpy(dtype=np.float64)
    for key, rows in boxes.groupby(["image", "label"], sort=False).indices.items():
        candidates = groups.get(key)
        if candidates is None:
            continue
        best[rows] = box_iou(coords[rows], other_coords[candidates]).max(axis=1)
        found[rows] = True
    return best, found


def _summary(ious: np.ndarray) -> dict:
    """Mean and population std (ddof 0) of `ious`, and how many; NaN when there are none."""
    if len(ious) == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(np.mean(ious)), "std": float(np.std(ious)), "n": len(ious)}


def reader_agreement(boxes: pd.DataFrame, first: str, second: str, threshold: float = 0.2) -> dict:
    """Paper 003 Table II's inter-observer IoU: on the images where both readers drew boxes, each
    box of `first` matched to the box of `second` of the same class with the highest IoU; matches
    with IoU > `threshold` are kept ("to avoid counting multiple instances of a class as the same
    prediction"), the others — and boxes whose class `second` did not draw there — are dropped.
    Returns mean, std (population, ddof 0: the paper does not say), n (kept matches) and images.

    Directional (each box of `first`, as the paper words it); `images` counts the images with
    boxes of both readers, as the boxes table has no row for a reader who found nothing.
    """
    _require(boxes, ["image", "reader_id", "label", *COORDS], "reader_agreement boxes")
    reader = boxes["reader_id"].astype(object)
    a, b = boxes[reader == first], boxes[reader == second]
    both = set(a["image"].astype(object)) & set(b["image"].astype(object))
    a = a[a["image"].astype(object).isin(both)]
    b = b[b["image"].astype(object).isin(both)]
    best, found = _best_ious(a, b)
    out = _summary(best[found & (best > threshold)])  # IoU 0 when not found
    out["images"] = len(both)
    return out


def model_iou(truth_fused: pd.DataFrame, predictions: pd.DataFrame) -> dict:
    """Paper 003 Table II's model rows: the mean IoU between each fused ground-truth box and the
    model's prediction of the box's class on its image that overlaps it most. A truth box with no
    prediction of its class on its image counts IoU 0 (the paper is silent). Returns mean, std
    (population, ddof 0), n (truth boxes), matched (the share of truth boxes with a prediction of
    their class on their image) and mean_matched (the mean over those only).

    Every prediction competes, whatever its score: filter `predictions` first to count only
    confident ones."""
    _require(truth_fused, ["image", "label", *COORDS], "model_iou truth")
    _require(predictions, ["image", "label", *COORDS], "model_iou predictions")
    best, found = _best_ious(truth_fused, predictions)
    out = _summary(best)
    out["matched"] = float(found.mean()) if len(found) else math.nan
    out["mean_matched"] = float(best[found].mean()) if found.any() else math.nan
    return out
