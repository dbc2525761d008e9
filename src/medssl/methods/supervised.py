"""Supervised fine-tuning (paper 000 §2.2.4, eq. 9): binary cross-entropy over the C + 1 organ
labels (or the one class of a binary dataset), on the labeled train rows of the label-fraction
subset, batches sampled by exam (§3.2); `supervised.loss: gce` trains with the generalized
cross-entropy instead (paper 002 §4.3: kidney labels are noisy)."""

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
from medssl.method_params import SupervisedParams
from medssl.methods.base import MultilabelMethod


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Paper 000 eq. 9: -1/(C+1) Σ_c [v_c log p_c + (1 - v_c) log(1 - p_c)], p = sigmoid(logits),
    averaged over the batch (eq. 9 sums over images; with Adam the scale does not matter).
    Computed in float32 from the logits (numerically stable under bf16 autocast)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def generalized_bce(logits: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
    """Paper 002 §4.3 (Zhang & Sabuncu 2018, eq. 6) per label: L_q = (1 - p_y^q) / q, p_y the
    predicted probability of the true value (sigmoid(z) for 1, 1 - sigmoid(z) for 0), averaged
    over labels and batch. q → 0 gives BCE, q = 1 gives MAE |y - p|. float32, from the logits:
    p_y^q = exp(q · log σ(±z)), and
    1 - p_y^q = -expm1(·) keeps its precision at small q."""
    z, y = logits.float(), targets.float()
    log_p = y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)
    return (-torch.expm1(q * log_p) / q).mean()


class Supervised(MultilabelMethod):
    name = "supervised"
    tasks = ("multilabel", "binary")
    augmentation = WEAK
    Hyperparameters = SupervisedParams
    hparams: SupervisedParams

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
        hp = self.hparams  # FixMatch, a subclass with its own params, has its own loss()
        logits = model(batch["images"])
        if hp.loss == "gce":
            return StepOutput(generalized_bce(logits, batch["targets"], hp.q))
        return StepOutput(multilabel_bce(logits, batch["targets"]))
