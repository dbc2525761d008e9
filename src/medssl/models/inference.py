"""Scoring a classifier on dataset rows: batched float32 logits and the predictions table that the
train stage writes and the evaluate stage reads (also used to score a registered champion on a
challenger's test split)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from medssl.data.contract import SCORE_PREFIX, Dataset, label_column
from medssl.errors import DataContractError
from medssl.models.scoring import probabilities

PREDICTION_ID_COLUMNS = ["image", "patient_id", "exam_id", "lesion_id", "split"]


def predictions_table(
    dataset: Dataset, rows: np.ndarray, classes: Sequence[str], scores: np.ndarray
) -> pd.DataFrame:
    """One row per manifest row in `rows`: ids, split, label_<c> (Int8; a binary dataset's
    `target`), score_<c> (float32)."""
    m = dataset.manifest
    table = m.iloc[rows][PREDICTION_ID_COLUMNS].reset_index(drop=True)
    for c, col in zip(classes, dataset.info.class_columns(list(classes)), strict=True):
        table[label_column(c)] = m[col].iloc[rows].astype("Int8").array
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
    from medssl.imaging import decode_image

    info, m = dataset.info, dataset.manifest
    labeled = m[info.class_columns(list(classes))].notna().all(axis=1)
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
