"""Scoring a classifier: batched float32 logits and probabilities, and the per-class 0/1 decision
at val-tuned thresholds. numpy, pandas and torch only: the self-contained registered model imports
it without the rest of medssl's dependencies."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from medssl.data.augment import to_float


def batched_logits(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: Callable[[np.ndarray], torch.Tensor],
    rows: np.ndarray,
    batch_size: int,
    num_classes: int,
) -> np.ndarray:
    """float32 logits [len(rows), C]: `images(chunk)` gives the float input batch of a chunk of
    rows (on the model's device); call under no_grad / eval (Context.inference)."""
    out = []
    for start in range(0, len(rows), batch_size):
        out.append(model(images(rows[start : start + batch_size])).float().cpu())
    if not out:
        num_classes = num_classes or int(getattr(model, "num_classes", 0))
        return np.zeros((0, num_classes), dtype=np.float32)
    return torch.cat(out).numpy()


PROB_SUFFIX = "_prob"


def probabilities(
    model: nn.Module,
    pixels: np.ndarray,
    *,
    image_size: int | None = None,
    batch_size: int = 128,
    device: torch.device | None = None,
) -> np.ndarray:
    """float32 sigmoid probabilities [N, C] of uint8 images [N, H, W(, 3)], in float32 without
    autocast, batched on `device` (resized to `image_size` when they are not)."""
    device = device or torch.device("cpu")

    def images(chunk: np.ndarray) -> torch.Tensor:
        x = to_float(torch.from_numpy(np.ascontiguousarray(pixels[chunk]))).to(device)
        if image_size and x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear")
        return x

    with torch.no_grad():
        logits = batched_logits(model, images, np.arange(len(pixels)), batch_size, 0)
    return torch.sigmoid(torch.from_numpy(logits)).numpy().astype(np.float32)


def decisions(probs: np.ndarray, thresholds: Sequence[float | None]) -> np.ndarray:
    """0/1 per class: probability >= the class's val-tuned threshold (None: never predicted)."""
    cut = np.array([np.inf if t is None else t for t in thresholds], dtype=np.float64)
    return (probs >= cut).astype(np.int8)


def decision_frame(
    probs: np.ndarray, classes: Sequence[str], thresholds: Sequence[float | None]
) -> pd.DataFrame:
    """Per image: `<class>_prob` (float32) then `<class>` (0/1) for every class."""
    decided = decisions(probs, thresholds)
    frame = {f"{c}{PROB_SUFFIX}": probs[:, i] for i, c in enumerate(classes)}
    frame |= {c: decided[:, i] for i, c in enumerate(classes)}
    return pd.DataFrame(frame)


DETECTION_COLUMNS = ["row", "label", "score", "x1", "y1", "x2", "y2"]


def detection_frame(
    model: nn.Module,
    pixels: np.ndarray,
    classes: Sequence[str],
    *,
    image_size: int | None = None,
    batch_size: int = 8,
    device: torch.device | None = None,
) -> pd.DataFrame:
    """A detector's boxes of uint8 images [N, H, W(, 3)], one row per detection: `row` (the
    image's position in `pixels`), label, score (float32) and x1 y1 x2 y2 in the pixels of the
    model's input (`image_size` when the images are resized to it); float32, no autocast."""
    device = device or torch.device("cpu")
    names = np.asarray(list(classes), dtype=object)
    parts = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            chunk = np.ascontiguousarray(pixels[start : start + batch_size])
            x = to_float(torch.from_numpy(chunk)).to(device)
            if image_size and x.shape[-1] != image_size:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear")
            for i, out in enumerate(model(x)):
                boxes = out["boxes"].float().cpu().numpy().astype(np.float64)
                frame = pd.DataFrame(boxes, columns=DETECTION_COLUMNS[3:])
                frame.insert(0, "row", np.full(len(boxes), start + i, dtype=np.int64))
                frame.insert(1, "label", names[out["labels"].cpu().numpy() - 1])
                frame.insert(2, "score", out["scores"].float().cpu().numpy())
                parts.append(frame)
    if not parts:
        return pd.DataFrame({c: [] for c in DETECTION_COLUMNS})
    table = pd.concat(parts, ignore_index=True)
    return table.astype({"label": "string", "score": "float32"})
