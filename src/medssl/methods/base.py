"""Shared scaffolding of the methods that train a multi-label classifier (supervised
fine-tuning, FixMatch …): the labeled rows, the model, validation, predictions and export.
A subclass adds its streams, batch recipe and loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from medssl.config import TrainConfig
from medssl.data.augment import to_float
from medssl.data.cache import ImageCache
from medssl.data.contract import Dataset, label_column
from medssl.data.splitting import LABEL_FRACTION_COLUMN
from medssl.engine.context import Context
from medssl.engine.method import Method
from medssl.errors import ConfigError, DataContractError
from medssl.metrics.multilabel import best_thresholds, weighted_f1
from medssl.models import Classifier, build_classifier
from medssl.models.inference import predictions_table
from medssl.models.scoring import batched_logits


def labeled_train_rows(
    manifest: pd.DataFrame, label_cols: list[str], fraction: float
) -> np.ndarray:
    """Positions of the labeled train rows in the `fraction` subset (paper 000 §3.3.2: the split
    stage's nested subsets, label_fraction <= f); all labeled train rows when the dataset has no
    label_fraction column and fraction is 1."""
    train = (manifest["split"] == "train").to_numpy(dtype=bool)
    labeled = manifest[label_cols].notna().all(axis=1).to_numpy(dtype=bool)
    keep = train & labeled
    if LABEL_FRACTION_COLUMN in manifest.columns:
        lf = manifest[LABEL_FRACTION_COLUMN].astype("Float64")
        keep &= (lf <= fraction + 1e-9).fillna(False).to_numpy(dtype=bool)
    elif fraction < 1:
        raise ConfigError(
            f"train.label_fraction={fraction:g} needs a {LABEL_FRACTION_COLUMN!r} column "
            "(run `medssl split` on the dataset first)"
        )
    return np.flatnonzero(keep)


class MultilabelMethod(Method):
    """A method whose product is a multi-label classifier validated by weighted F1."""

    task = "multilabel"
    monitor = "val_f1_weighted"

    def __init__(self, cfg: TrainConfig, dataset: Dataset, cache: ImageCache) -> None:
        info = dataset.info
        if info.task != self.task:
            raise ConfigError(
                f"train.method {self.name!r} needs a {self.task} dataset; "
                f"{dataset.root} is {info.task}"
            )
        if len(cache) != len(dataset.manifest):
            raise ValueError("image cache and manifest disagree on the number of rows")
        self.cfg, self.dataset, self.cache = cfg, dataset, cache
        self.classes = list(info.classes)
        m = dataset.manifest
        label_cols = [label_column(c) for c in self.classes]
        # [N, C] float32 targets, NaN on unlabeled rows
        self.targets = m[label_cols].astype("Float32").to_numpy(dtype=np.float32, na_value=np.nan)
        self.exam_ids = m["exam_id"].to_numpy(dtype=object)
        labeled = ~np.isnan(self.targets).any(axis=1)
        split = m["split"].to_numpy(dtype=object)
        self.train_rows = labeled_train_rows(m, label_cols, cfg.label_fraction)
        self.val_rows = np.flatnonzero((split == "val") & labeled)
        self.test_rows = np.flatnonzero((split == "test") & labeled)
        if len(self.train_rows) == 0:
            raise DataContractError(
                f"{dataset.root}: no labeled train rows in the label_fraction "
                f"<= {cfg.label_fraction:g} subset"
            )
        if len(self.val_rows) == 0:
            raise DataContractError(
                f"{dataset.root}: no labeled val rows (validation selects the best epoch)"
            )

    @property
    def eval_batch_size(self) -> int:
        return 4 * self.cfg.max_batch_images

    def build_model(self, ctx: Context) -> nn.Module:
        return build_classifier(
            self.cfg.backbone,
            len(self.classes),
            self.cache.channels,
            init=self.cfg.init,
            weights=self.cfg.weights,
        )

    def predict_logits(self, model: nn.Module, ctx: Context, rows: np.ndarray) -> np.ndarray:
        """float32 logits [len(rows), C] of un-augmented images (call under ctx.inference)."""

        def images(chunk: np.ndarray) -> torch.Tensor:
            return to_float(ctx.upload(self.cache.take(chunk)), ctx.channels_last)

        return batched_logits(model, images, rows, self.eval_batch_size, len(self.classes))

    def validate(self, model: nn.Module, ctx: Context) -> dict[str, float]:
        """Val BCE loss and val weighted F1 at the per-class F1-maximising thresholds
        (paper 000 §3.2)."""
        logits = self.predict_logits(model, ctx, self.val_rows)
        y = self.targets[self.val_rows]
        loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(y))
        scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
        thresholds = best_thresholds(y, scores)
        return {"val_loss": float(loss), "val_f1_weighted": weighted_f1(y, scores >= thresholds)}

    def predictions(self, model: nn.Module, ctx: Context) -> pd.DataFrame:
        """One row per labeled val and test image: ids, split, label_<c> (Int8), score_<c>
        (float32 sigmoid probability, computed without autocast)."""
        rows = np.concatenate([self.val_rows, self.test_rows])
        with ctx.inference(model, autocast=False):  # float32 whatever the training autocast
            logits = self.predict_logits(model, ctx, rows)
        scores = torch.sigmoid(torch.from_numpy(logits)).numpy()
        return predictions_table(self.dataset, rows, self.classes, scores)

    def export(self, model: nn.Module) -> tuple[Classifier, dict[str, Any]]:
        """The classifier to save as model.pt and its meta."""
        assert isinstance(model, Classifier)
        info = self.dataset.info
        meta = {
            "method": self.name,
            "backbone": self.cfg.backbone,
            "init": self.cfg.init,
            "classes": self.classes,
            "in_channels": self.cache.channels,
            "image_size": info.image_size,
            "task": self.task,
            "dataset": info.name,
            "dataset_version": info.version,
            "label_fraction": self.cfg.label_fraction,
        }
        return model, meta
