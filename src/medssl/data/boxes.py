"""Bounding boxes of several readers (the contract's boxes.parquet): fusing them into one set of
ground-truth boxes (paper 003 §II.A), for the detection task."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medssl.data.contract import BOX_COLUMNS

COORDS = ["x1", "y1", "x2", "y2"]
FUSION_IOU = 0.2  # paper 003 §II.A: "an intersection-over-union (IoU) threshold of 20%"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [N, 4] with every box of b [M, 4] (x1 y1 x2 y2): [N, M] float64
    (torchvision.ops.box_iou)."""
    import torch
    from torchvision.ops import box_iou as torch_box_iou

    ta = torch.tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    tb = torch.tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    return torch_box_iou(ta, tb).numpy()


def fuse_boxes(boxes: np.ndarray, threshold: float = FUSION_IOU) -> list[np.ndarray]:
    """Paper 003 §II.A (weighted boxes fusion, Solovyev et al. 2021, with equal weights): go
    through the boxes of one class in order; a box joins the first cluster whose fused box it
    overlaps with IoU > `threshold`, else starts a cluster; a cluster's fused box is the
    coordinate-wise mean of its members. Returns the members' row positions of each cluster."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clusters: list[list[int]] = []
    fused: list[np.ndarray] = []
    for i, box in enumerate(boxes):
        if fused:
            iou = box_iou(box[None], np.stack(fused))[0]
            best = int(np.argmax(iou))
            if iou[best] > threshold:
                clusters[best].append(i)
                fused[best] = boxes[clusters[best]].mean(axis=0)
                continue
        clusters.append([i])
        fused.append(box.copy())
    return [np.asarray(c, dtype=np.int64) for c in clusters]


def fuse_readers(table: pd.DataFrame, threshold: float = FUSION_IOU) -> pd.DataFrame:
    """One box per group of overlapping same-class boxes of an image, whoever drew them
    (paper 003 §II.A): columns image, label, x1 y1 x2 y2 (the members' mean), readers (how many
    boxes were fused), in image and then first-drawn order."""
    missing = [c for c in BOX_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"boxes table lacks {', '.join(missing)}")
    rows = []
    for (image, label), group in table.groupby(["image", "label"], sort=False):
        coords = group[COORDS].to_numpy(dtype=np.float64)
        for members in fuse_boxes(coords, threshold):
            mean = coords[members].mean(axis=0)
            rows.append((image, label, *mean.tolist(), len(members)))
    columns = ["image", "label", *COORDS, "readers"]
    out = pd.DataFrame(rows, columns=columns)
    return out.astype({"image": "string", "label": "string", "readers": "int64"})


def boxes_per_row(
    images: pd.Series | list[str], fused: pd.DataFrame, classes: list[str]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each manifest row's fused boxes as (float32 [k, 4] x1 y1 x2 y2, int64 [k] class index);
    k = 0 for an image without boxes. A label outside `classes` is a ValueError."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(fused["label"].astype(str)) - set(index))
    if unknown:
        raise ValueError(f"box label(s) {', '.join(unknown)} are not classes of the dataset")
    coords = fused[COORDS].to_numpy(dtype=np.float32)
    labels = fused["label"].astype(str).map(index).to_numpy(dtype=np.int64)
    positions = pd.Series(range(len(fused))).groupby(fused["image"].astype(str).to_numpy())
    members = {image: rows.to_numpy() for image, rows in positions}
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    out = []
    for image in list(images):
        rows = members.get(str(image))
        out.append(empty if rows is None else (coords[rows], labels[rows]))
    return out


def box_presence(per_row: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """float32 [N, C]: 1 where a row's image holds a box of class c, else 0; NaN on the rows
    without any box (an image without findings is not a detection label, paper 003 §II.A)."""
    out = np.full((len(per_row), num_classes), np.nan, dtype=np.float32)
    for i, (_, labels) in enumerate(per_row):
        if len(labels):
            out[i] = 0
            out[i, labels] = 1
    return out
