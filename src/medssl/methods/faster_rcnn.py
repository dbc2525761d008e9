"""Faster R-CNN lesion detection on chest radiographs (paper 003 §III): the ground truth is every
image's readers' boxes fused (§II.A), the train images are drawn by LVIS repeat-factor sampling
(§III.A), and the detector (medssl.models.detector) starts from random, a local ImageNet file or a
`pretrain` encoder (SimCLR, §III.C: the backbone of the same model). Validation: COCO mAP@[.5:.95]
on the val images (the best epoch is kept, §II.A: "the validation set was used … to determine
when to stop training").

The model folder's predictions.parquet holds, for every val/test image, its readers' boxes
(`source` reader), their fusion (truth) and the model's detections (model, with `score`): the
evaluate stage needs nothing else for paper 003's Tables I-II.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel
from torch import nn

from medssl.config import TrainConfig
from medssl.data.augment import to_float
from medssl.data.boxes import COORDS
from medssl.data.cache import ImageCache
from medssl.data.contract import Dataset
from medssl.data.samplers import BatchSampler, RandomBatchSampler, RepeatFactorSampler
from medssl.data.samplers import repeat_factors as lvis_repeat_factors
from medssl.engine.context import Context
from medssl.engine.method import StepOutput
from medssl.errors import ConfigError, DataContractError
from medssl.method_params import FasterRcnnParams
from medssl.methods.base import DatasetMethod, labeled_train_rows
from medssl.metrics.detection import coco_metrics
from medssl.models.backbones import adapt_state_dict, find_imagenet_weights, read_state_dict
from medssl.models.classifier import _read_model_file
from medssl.models.detector import Detector, backbone_state_from

# predictions.parquet of a detector: one row per box
SOURCE_READER, SOURCE_TRUTH, SOURCE_MODEL = "reader", "truth", "model"
DETECTION_ID_COLUMNS = ["image", "patient_id", "exam_id", "split"]


def detection_table(
    dataset: Dataset,
    rows: np.ndarray,
    source: str,
    boxes: list[np.ndarray],
    labels: list[np.ndarray],
    scores: list[np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per box of manifest rows `rows`: ids, split, source, label, score, x1 y1 x2 y2."""
    m = dataset.manifest
    counts = np.array([len(b) for b in boxes], dtype=np.int64)
    ids = m.iloc[np.repeat(rows, counts)][DETECTION_ID_COLUMNS].reset_index(drop=True)
    classes = np.asarray(dataset.info.classes, dtype=object)
    flat = np.concatenate(boxes) if len(boxes) else np.zeros((0, 4))
    flat_labels = np.concatenate(labels).astype(np.int64) if len(labels) else np.zeros(0, int)
    table = ids.assign(
        source=pd.array([source] * len(ids), dtype="string"),
        reader_id=pd.array([pd.NA] * len(ids), dtype="string"),
        label=pd.array(classes[flat_labels], dtype="string"),
        score=(
            np.concatenate(scores).astype(np.float32)
            if scores is not None and len(scores)
            else np.full(len(ids), np.nan, np.float32)
        ),
    )
    for i, c in enumerate(COORDS):
        table[c] = flat[:, i].astype(np.float64)
    return table


class FasterRcnn(DatasetMethod):
    """Paper 003 §III.B: Faster R-CNN + FPN, SGD (the loop's `train:` knobs), batches of
    `train.batch_exams` images (one image per exam), horizontal flips."""

    name = "faster-rcnn"
    product = "detector"
    tasks = ("detection",)
    monitor = "val_map"
    Hyperparameters = FasterRcnnParams
    hparams: FasterRcnnParams
    cfg: TrainConfig

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        if cfg.cv_folds:
            raise ConfigError("faster-rcnn keeps its best val epoch: train.cv_folds must be 0")
        assert self.boxes is not None  # a detection dataset's (DatasetMethod)
        labeled = ~np.isnan(self.targets).any(axis=1)
        self.train_rows = labeled_train_rows(dataset.manifest, labeled, cfg.label_fraction)
        for split, rows in (("train", self.train_rows), ("val", self.val_rows)):
            if len(rows) == 0:
                raise DataContractError(
                    f"{dataset.root}: no {split} images with boxes"
                    + (
                        f" in the label_fraction <= {cfg.label_fraction:g} subset"
                        if split == "train"
                        else ""
                    )
                )
        image_classes = [self.classes_of(r) for r in self.train_rows]
        self.repeat_factors, self.class_repeat = (
            lvis_repeat_factors(image_classes, self.hparams.repeat_threshold)
            if self.hparams.repeat_threshold is not None
            else (np.ones(len(self.train_rows)), {})
        )

    def classes_of(self, row: int) -> list[str]:
        return [self.classes[k] for k in self.boxes[row][1]]

    # --- model ---------------------------------------------------------------------------------

    def build_model(self, ctx: Context) -> nn.Module:
        cfg, hp = self.cfg, self.hparams
        state, norm = None, "dataset"
        if cfg.init == "checkpoint":
            state, norm = self._checkpoint_backbone()
        elif cfg.init == "imagenet":
            path = find_imagenet_weights(cfg.backbone, cfg.weights)
            state = adapt_state_dict(read_state_dict(path), cfg.backbone, self.cache.channels)
        return Detector(
            cfg.backbone,
            len(self.classes),
            self.cache.channels,
            self.dataset.info.image_size,
            norm,
            frozen=state is not None and hp.frozen_batchnorm,
            backbone_state=state,
            trainable_layers=hp.trainable_layers,
            detections_per_image=hp.detections_per_image,
        )

    def _checkpoint_backbone(self) -> tuple[dict[str, torch.Tensor], Any]:
        """The ResNet of a medssl model.pt / encoder.pt (train.weights) and its input norm."""
        if self.cfg.weights is None:
            raise ConfigError("train.init=checkpoint needs train.weights = a medssl model.pt")
        path = Path(self.cfg.weights)
        if not path.is_file():
            raise ConfigError(
                f"train.weights {path}: not found (run `medssl pretrain DATASET --out "
                f"{path.parent}` first, or start from scratch: -S train.init=random)"
            )
        state, meta = _read_model_file(path)
        if meta.get("backbone") != self.cfg.backbone:
            raise ConfigError(
                f"{path}: a {meta.get('backbone')} model, but train.backbone is {self.cfg.backbone}"
            )
        return backbone_state_from(state), meta.get("input_norm", "dataset")

    # --- training ------------------------------------------------------------------------------

    def streams(self) -> dict[str, BatchSampler]:
        cfg, rows = self.cfg, self.train_rows
        if self.hparams.repeat_threshold is None:
            return {"labeled": RandomBatchSampler(rows, cfg.batch_exams, cfg.seed)}
        return {
            "labeled": RepeatFactorSampler(rows, self.repeat_factors, cfg.batch_exams, cfg.seed)
        }

    def make_batch(self, rows: Mapping[str, np.ndarray], ctx: Context) -> dict[str, Any]:
        r = rows["labeled"]
        images = to_float(ctx.upload(self.cache.take(r)), ctx.channels_last)
        width = images.shape[-1]
        flip = (
            torch.rand(len(r), generator=ctx.generator, device=ctx.device) < self.hparams.hflip
        ).cpu()
        targets = []
        for i, row in enumerate(r):
            boxes, labels = self.boxes[row]
            b = torch.from_numpy(boxes.copy())
            if flip[i]:
                b[:, [0, 2]] = width - b[:, [2, 0]]
            targets.append({"boxes": b.to(ctx.device), "labels": ctx.upload(labels + 1)})
        if flip.any():
            images = torch.where(flip.to(ctx.device)[:, None, None, None], images.flip(-1), images)
        return {"images": images, "targets": targets}

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: Context) -> StepOutput:
        """The sum of the RPN's and the box head's classification and regression losses."""
        losses = model(batch["images"], batch["targets"])
        total = sum(losses.values())
        return StepOutput(total, {k: v.detach() for k, v in losses.items()})  # type: ignore[arg-type]

    # --- inference -----------------------------------------------------------------------------

    def detect(
        self, model: nn.Module, ctx: Context, rows: np.ndarray
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Boxes [k, 4], class indices [k] and scores [k] per row (call under ctx.inference)."""
        boxes, labels, scores = [], [], []
        for start in range(0, len(rows), self.eval_batch_size):
            chunk = rows[start : start + self.eval_batch_size]
            images = to_float(ctx.upload(self.cache.take(chunk)), ctx.channels_last)
            for out in model(images):
                boxes.append(out["boxes"].float().cpu().numpy())
                labels.append(out["labels"].cpu().numpy() - 1)
                scores.append(out["scores"].float().cpu().numpy())
        return boxes, labels, scores

    @property
    def eval_batch_size(self) -> int:
        return 8

    def validate(self, model: nn.Module, ctx: Context) -> dict[str, float]:
        """COCO mAP@[.5:.95] and mAP50 of the val images against their fused boxes."""
        rows = self.val_rows
        found = detection_table(self.dataset, rows, SOURCE_MODEL, *self.detect(model, ctx, rows))
        metrics = coco_metrics(
            self.truth_table(rows), found, self.classes, self.dataset.manifest["image"].iloc[rows]
        )
        return {"val_map": _zero_nan(metrics["map"]), "val_map50": _zero_nan(metrics["map50"])}

    def truth_table(self, rows: np.ndarray) -> pd.DataFrame:
        return detection_table(
            self.dataset,
            rows,
            SOURCE_TRUTH,
            [self.boxes[r][0] for r in rows],
            [self.boxes[r][1] for r in rows],
        )

    def predictions(self, model: nn.Module, ctx: Context) -> pd.DataFrame:
        """Every val/test image's reader boxes, fused truth and detections (float32 inference)."""
        rows = np.concatenate([self.val_rows, self.test_rows])
        with ctx.inference(model, autocast=False):
            found = detection_table(
                self.dataset, rows, SOURCE_MODEL, *self.detect(model, ctx, rows)
            )
        return pd.concat([self.reader_table(rows), self.truth_table(rows), found])

    def reader_table(self, rows: np.ndarray) -> pd.DataFrame:
        """The readers' own boxes of `rows` (paper 003 Table II compares readers)."""
        m = self.dataset.manifest
        assert self.dataset.boxes is not None
        ids = m.iloc[rows][DETECTION_ID_COLUMNS]
        raw = self.dataset.boxes.merge(ids, on="image", how="inner")
        return raw.assign(
            source=pd.array([SOURCE_READER] * len(raw), dtype="string"),
            score=np.full(len(raw), np.nan, np.float32),
        )[[*DETECTION_ID_COLUMNS, "source", "reader_id", "label", "score", *COORDS]]

    def export(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """The detector to save as model.pt and its meta."""
        assert isinstance(model, Detector)
        meta = self.model_meta(
            self.cfg.init,
            product=self.product,
            task="detection",
            label_fraction=self.cfg.label_fraction,
            **model.config(),
            repeat_factors=self.class_repeat,
        )
        return model, meta


def _zero_nan(x: float) -> float:
    return 0.0 if x != x else float(x)
