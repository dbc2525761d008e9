"""Supervised multi-label fine-tuning (paper 000 §2.2.4, eq. 9): binary cross-entropy over the
C + 1 organ labels, on the labeled train rows of the label-fraction subset, batches sampled by
exam (§3.2)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl.data.augment import WEAK, augment, to_float
from medssl.data.samplers import BatchSampler, ExamBatchSampler
from medssl.engine.context import Context
from medssl.engine.method import StepOutput
from medssl.methods.base import MultilabelMethod


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Paper 000 eq. 9: -1/(C+1) Σ_c [v_c log p_c + (1 - v_c) log(1 - p_c)], p = sigmoid(logits),
    averaged over the batch (eq. 9 sums over images; with Adam the scale does not matter).
    Computed in float32 from the logits (numerically stable under bf16 autocast)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


class Supervised(MultilabelMethod):
    name = "supervised"
    augmentation = WEAK

    def streams(self) -> dict[str, BatchSampler]:
        cfg = self.cfg
        rows = self.train_rows
        sampler = ExamBatchSampler(
            rows, self.exam_ids[rows], cfg.batch_exams, cfg.max_batch_images, cfg.seed
        )
        return {"labeled": sampler}

    def make_batch(self, rows: Mapping[str, np.ndarray], ctx: Context) -> dict[str, torch.Tensor]:
        r = rows["labeled"]
        x = to_float(ctx.upload(self.cache.take(r)), ctx.channels_last)
        images = augment(x, self.augmentation, ctx.generator)
        return {"images": images, "targets": ctx.upload(self.targets[r])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: Context) -> StepOutput:
        return StepOutput(multilabel_bce(model(batch["images"]), batch["targets"]))
