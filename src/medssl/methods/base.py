"""Shared scaffolding of the methods that train a multi-label classifier (supervised
fine-tuning, FixMatch …): the labeled rows, the model, validation, predictions and export.
A subclass adds its streams, batch recipe and loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from medssl.config import LoopConfig, PretrainConfig, TrainConfig
from medssl.data.augment import to_float
from medssl.data.boxes import box_presence, boxes_per_row, fuse_readers
from medssl.data.cache import ImageCache
from medssl.data.contract import BOXES_FILE, Dataset
from medssl.data.samplers import BatchSampler, ExamBatchSampler
from medssl.data.splitting import LABEL_FRACTION_COLUMN
from medssl.engine.context import Context
from medssl.engine.method import Method
from medssl.errors import ConfigError, DataContractError
from medssl.metrics.multilabel import best_thresholds, weighted_f1
from medssl.models import Classifier, build_classifier
from medssl.models.inference import predictions_table
from medssl.models.scoring import batched_logits


def labeled_train_rows(manifest: pd.DataFrame, labeled: np.ndarray, fraction: float) -> np.ndarray:
    """Positions of the labeled train rows (`labeled`: bool per row) in the `fraction` subset
    (paper 000 §3.3.2: the split stage's nested subsets, label_fraction <= f); all labeled train
    rows when the dataset has no label_fraction column and fraction is 1."""
    train = (manifest["split"] == "train").to_numpy(dtype=bool)
    keep = train & np.asarray(labeled, dtype=bool)
    if LABEL_FRACTION_COLUMN in manifest.columns:
        lf = manifest[LABEL_FRACTION_COLUMN].astype("Float64")
        keep &= (lf <= fraction + 1e-9).fillna(False).to_numpy(dtype=bool)
    elif fraction < 1:
        raise ConfigError(
            f"train.label_fraction={fraction:g} needs a {LABEL_FRACTION_COLUMN!r} column "
            "(run `medssl split` on the dataset first)"
        )
    return np.flatnonzero(keep)


def multilabel_targets(dataset: Dataset) -> tuple[list[str], np.ndarray]:
    """The dataset's classes and its [N, C] float32 targets (NaN on unlabeled rows); a binary
    dataset is its one positive class, read from `target`."""
    classes = list(dataset.info.classes)
    cols = dataset.info.class_columns()
    targets = dataset.manifest[cols].astype("Float32").to_numpy(dtype=np.float32, na_value=np.nan)
    return classes, targets


def detection_boxes(dataset: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each manifest row's ground truth of a detection dataset: its readers' boxes fused
    (paper 003 §II.A) as (boxes [k, 4], class indices [k])."""
    if dataset.boxes is None:
        raise DataContractError(f"{dataset.root}: a detection dataset needs {BOXES_FILE}")
    fused = fuse_readers(dataset.boxes)
    try:
        return boxes_per_row(dataset.manifest["image"], fused, list(dataset.info.classes))
    except ValueError as exc:
        raise DataContractError(f"{dataset.root}/{BOXES_FILE}: {exc}") from None


def labeled_split_rows(dataset: Dataset, targets: np.ndarray, split: str) -> np.ndarray:
    """Positions of the fully labeled rows of `split`."""
    names = dataset.manifest["split"].to_numpy(dtype=object)
    return np.flatnonzero((names == split) & ~np.isnan(targets).any(axis=1))


class DatasetMethod(Method):
    """What every method on a multi-label image dataset binds at construction: its config,
    hyperparameters, dataset, image cache, targets (NaN where unlabeled), exam ids and the labeled
    val and test rows. Subclasses choose `train_rows`."""

    tasks: tuple[str, ...] = ("multilabel",)  # the dataset tasks (dataset.yaml) it trains on
    stage = "train"  # the params.yaml section naming the method, for messages

    def __init__(
        self,
        cfg: LoopConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        self.resolve_hparams(hparams)
        info = dataset.info
        if info.task not in self.tasks:
            wanted = " or ".join(self.tasks)
            article = "an" if wanted[0] in "aeiou" else "a"
            raise ConfigError(
                f"{self.stage}.method {self.name!r} needs {article} {wanted} dataset; "
                f"{dataset.root} is {info.task}"
                + (" (make one with `medssl data pairs`)" if "image-text" in self.tasks else "")
            )
        self.task = info.task
        if len(cache) != len(dataset.manifest):
            raise ValueError("image cache and manifest disagree on the number of rows")
        self.cfg, self.dataset, self.cache = cfg, dataset, cache
        # a detection dataset's labels are its readers' boxes, fused once here; its targets are
        # the classes of each image's boxes (NaN on an image without boxes)
        self.boxes = detection_boxes(dataset) if info.task == "detection" else None
        if self.boxes is not None:
            self.classes = list(info.classes)
            self.targets = box_presence(self.boxes, len(self.classes))
        else:
            self.classes, self.targets = multilabel_targets(dataset)
        self.exam_ids = dataset.manifest["exam_id"].to_numpy(dtype=object)
        self.val_rows = labeled_split_rows(dataset, self.targets, "val")
        self.test_rows = labeled_split_rows(dataset, self.targets, "test")
        self.train_rows = np.zeros(0, dtype=np.int64)

    @property
    def eval_batch_size(self) -> int:
        return 4 * self.cfg.max_batch_images

    # what the train stage writes of a classifier or detector method (an encoder's is `export`)
    def predictions(self, model: nn.Module, ctx: Context) -> pd.DataFrame:
        """predictions.parquet: the val/test rows' predictions (the evaluate stage's input)."""
        raise NotImplementedError(f"{self.name} writes no predictions")

    def export(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """The module to save as model.pt and its meta (medssl.models.save_model)."""
        raise NotImplementedError(f"{self.name} exports no model")

    def model_meta(self, init: str, **extra: Any) -> dict[str, Any]:
        """The meta of a model file this method writes (medssl.models.save_model): `extra` may
        set product, classes and task and adds its other keys at the end (the key order is the
        file's: the same model gives the same bytes)."""
        info = self.dataset.info
        product = {"product": extra.pop("product")} if "product" in extra else {}
        meta = {
            "method": self.name,
            **product,
            "backbone": self.cfg.backbone,
            "init": init,
            "classes": extra.pop("classes", self.classes),
            "in_channels": self.cache.channels,
            "image_size": info.image_size,
            "task": extra.pop("task", self.task),
            "dataset": info.name,
            "dataset_version": info.version,
        }
        return {**meta, **extra}


class MultilabelMethod(DatasetMethod):
    """A method whose product is a multi-label classifier (or a binary one: one class) validated
    by weighted F1. `needs_val`: refuse a dataset without labeled val rows (the best val epoch is
    kept); a method that keeps its last epoch may train without them (cross-validation)."""

    monitor = "val_f1_weighted"
    needs_val = True
    cfg: TrainConfig

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        labeled = ~np.isnan(self.targets).any(axis=1)
        self.train_rows = labeled_train_rows(dataset.manifest, labeled, cfg.label_fraction)
        if len(self.train_rows) == 0:
            raise DataContractError(
                f"{dataset.root}: no labeled train rows in the label_fraction "
                f"<= {cfg.label_fraction:g} subset"
            )
        if len(self.val_rows) == 0 and self.needs_val and cfg.cv_folds:
            raise ConfigError(
                f"train.cv_folds={cfg.cv_folds} leaves no val rows, and {self.name!r} keeps its "
                "best val epoch: cross-validate a method that keeps its last one "
                "(lesion-recognition)"
            )
        if len(self.val_rows) == 0 and self.needs_val:
            raise DataContractError(
                f"{dataset.root}: no labeled val rows (validation selects the best epoch)"
            )

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
        return self.val_metrics(self.predict_logits(model, ctx, self.val_rows))

    def val_metrics(self, logits: np.ndarray) -> dict[str, float]:
        """validate's numbers from the val rows' logits."""
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
        cv = (
            {"cv_folds": self.cfg.cv_folds, "cv_fold": self.cfg.cv_fold}
            if self.cfg.cv_folds
            else {}
        )
        meta = self.model_meta(self.cfg.init, label_fraction=self.cfg.label_fraction, **cv)
        return model, meta


class EncoderMethod(DatasetMethod):
    """A method whose product is an encoder (the `pretrain` stage): it trains on the unlabeled
    rows (and the train rows with `pretrain.rows: unlabeled+train`; with `train-rest`, only
    the train rows outside the `pretrain.label_fraction` subset, paper 003 §III.A: each
    pre-training share is the complement of its fine-tuning subset) without reading a label;
    labels of val/test rows only measure it. No early stopping: the last epoch's weights are
    kept (paper 000 §3.2). encoder.pt is the whole module in the classifier's key layout, so
    `train -S train.init=checkpoint -S train.weights=.../encoder.pt` takes its backbone."""

    product = "encoder"
    monitor = None
    stage = "pretrain"
    output_name = "cluster"  # encoder.pt's head outputs are <output_name>_<k>
    cfg: PretrainConfig

    def __init__(
        self,
        cfg: PretrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        m = dataset.manifest
        if cfg.rows == "train-rest":
            wanted = [f"train rows outside the label_fraction <= {cfg.label_fraction:g} subset"]
            subset = labeled_train_rows(m, np.ones(len(m), dtype=bool), cfg.label_fraction)
            rest = (m["split"] == "train").to_numpy(dtype=bool)
            rest[subset] = False
            self.train_rows = np.flatnonzero(rest)
        else:
            wanted = ["unlabeled"] if cfg.rows == "unlabeled" else ["unlabeled", "train"]
            self.train_rows = np.flatnonzero(m["split"].isin(wanted).to_numpy(dtype=bool))
        if len(self.train_rows) == 0:
            raise DataContractError(
                f"{dataset.root}: no {' or '.join(wanted)} rows to pre-train on "
                "(run `medssl split` first, or set pretrain.rows=unlabeled+train)"
            )

    def streams(self) -> dict[str, BatchSampler]:
        """Paper 000 §3.2: batches of t unlabeled exams."""
        cfg, rows = self.cfg, self.train_rows
        sampler = ExamBatchSampler(
            rows, self.exam_ids[rows], cfg.batch_exams, cfg.max_batch_images, cfg.seed
        )
        return {"unlabeled": sampler}

    def outputs(
        self, model: nn.Module, ctx: Context, rows: np.ndarray, dim: int, fn: str = "forward"
    ) -> np.ndarray:
        """float32 `model.<fn>` outputs [len(rows), dim] of un-augmented images, batched (call
        under ctx.inference)."""
        forward = getattr(model, fn)

        def images(chunk: np.ndarray) -> torch.Tensor:
            return to_float(ctx.upload(self.cache.take(chunk)), ctx.channels_last)

        return batched_logits(forward, images, rows, self.eval_batch_size, dim)

    def export(self, model: nn.Module) -> tuple[Classifier, dict[str, Any]]:
        """The module to save as encoder.pt and its meta (medssl.models.save_model format)."""
        assert isinstance(model, Classifier)
        meta = self.model_meta(
            "random",
            product=self.product,
            classes=[f"{self.output_name}_{k}" for k in range(model.num_classes)],
            task="encoder",
        )
        return model, meta

    def write_artifacts(
        self, model: nn.Module, ctx: Context, out_dir: Path, history: list[dict[str, float]]
    ) -> dict[str, Any]:
        """Write the method's own files into `out_dir` (the run's staging folder) and return
        the numbers for metrics.json."""
        return {}

    def table(self, metrics: dict[str, Any]) -> str | None:
        """The method's own result table for table.txt (a paper's layout), or None."""
        return None
