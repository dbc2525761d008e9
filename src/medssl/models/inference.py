"""Scoring a classifier on dataset rows: batched float32 logits and the predictions table that the
train stage writes and the evaluate stage reads (also used to score a registered champion on a
challenger's test split)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from medssl.data.augment import to_float
from medssl.data.contract import SCORE_PREFIX, Dataset, label_column
from medssl.errors import DataContractError

PREDICTION_ID_COLUMNS = ["image", "patient_id", "exam_id", "split"]


def batched_logits(
    model: nn.Module,
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


def predictions_table(
    dataset: Dataset, rows: np.ndarray, classes: Sequence[str], scores: np.ndarray
) -> pd.DataFrame:
    """One row per manifest row in `rows`: ids, split, label_<c> (Int8), score_<c> (float32)."""
    m = dataset.manifest
    table = m.iloc[rows][PREDICTION_ID_COLUMNS].reset_index(drop=True)
    for c in classes:
        table[label_column(c)] = m[label_column(c)].iloc[rows].astype("Int8").array
    for i, c in enumerate(classes):
        table[f"{SCORE_PREFIX}{c}"] = scores[:, i].astype(np.float32)
    return table


def score_dataset(
    model: nn.Module,
    dataset: Dataset,
    classes: Sequence[str],
    *,
    splits: Sequence[str] = ("val", "test"),
    image_size: int | None = None,
    batch_size: int = 128,
    device: torch.device | None = None,
) -> pd.DataFrame:
    """The predictions table of `model` on the labeled rows of `splits`, decoding only those
    images, in float32 without autocast. `classes`: the model's outputs in order (they must be
    the dataset's classes); `image_size`: the side the model was trained on (images are resized
    to it)."""
    from medssl.data.cache import decode_image

    info, m = dataset.info, dataset.manifest
    labeled = m[[label_column(c) for c in classes]].notna().all(axis=1)
    rows = np.flatnonzero(m["split"].isin(list(splits)).to_numpy(dtype=bool) & labeled)
    spec = (info.image_size, info.channels, info.bit_depth)
    images = [decode_image(dataset.image_path(p), *spec) for p in m["image"].iloc[rows]]
    if not images:
        raise DataContractError(f"{dataset.root}: no labeled rows in {', '.join(splits)}")
    pixels = np.stack(images)
    model = model.to(device or torch.device("cpu")).eval()
    probs = probabilities(
        model, pixels, image_size=image_size, batch_size=batch_size, device=device
    )
    return predictions_table(dataset, rows, classes, probs)


# ------------------------------------------------------------------------- deciding per class

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
