"""SimCLR pre-training (paper 003 §III.C; Chen et al. 2020): every image of a batch is augmented
twice (random resized crop 0.2-1, horizontal flip, Gaussian blur, Gaussian noise relative to the
image's brightness: `medssl.data.augment.simclr_views`), both views go through the same encoder f
(a ResNet behind the histogram normalisation of §III.C: `input_norm: histogram`) and projection
head g, and the NT-Xent loss (SimCLR eq. 1) makes each view pick its partner among the 2N − 1
other views of the batch by cosine similarity. No label is read, on any dataset kind: the method
sees the dataset without its classes, label columns or boxes, so paper 003's pre-training set is
whatever rows `pretrain.rows` selects (its labels discarded).

Product: encoder.pt in the classifier's layout, `backbone.*` being f, to fine-tune with
`medssl train -S train.init=checkpoint -S train.weights=…/encoder.pt` (classifier or detector);
its input normalisation comes with it. g = W⁽²⁾σ(W⁽¹⁾h): W⁽¹⁾ is the classifier's `head` (so
encoder.pt's outputs are g's hidden layer; fine-tuning keeps `backbone.*` only), σ and W⁽²⁾ are
the extra head `projection`, dropped from encoder.pt.

Logged per step: the loss, the mean cosine of the positive pairs and the contrastive accuracy
(the share of views whose most similar other view is their partner); per epoch: the epoch's means
of both, and the same numbers on up to `simclr.val_images` val images with fixed-seed views
(comparable across epochs; BN in eval mode).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from medssl.config import PretrainConfig
from medssl.data.augment import SIMCLR, simclr_views
from medssl.data.cache import ImageCache
from medssl.data.contract import Dataset
from medssl.engine.context import Context
from medssl.engine.method import StepOutput
from medssl.method_params import SimclrParams
from medssl.methods.base import EncoderMethod
from medssl.models import Classifier

PROJECTION = "projection"  # the extra head: σ then W⁽²⁾
VAL_SEED = 7_919  # the fixed val views' generator: seed + this, the same every epoch


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimCLR eq. 1 over the 2N views of N images (z1[k] and z2[k] are the views of image k):
    ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k ≠ i} exp(sim(z_i, z_k)/τ), sim the cosine, and
    L = 1/(2N) Σ_k [ℓ(2k−1, 2k) + ℓ(2k, 2k−1)]. Returns (L, the mean cosine of the positive
    pairs, the contrastive accuracy: the share of the 2N views whose most similar other view is
    their partner), float32. Swapping z1 and z2 gives the same numbers."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = (sim / temperature).masked_fill(self_pairs, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(logits, partner)
    positive = sim.gather(1, partner[:, None]).mean()
    accuracy = (logits.argmax(dim=1) == partner).float().mean()
    return loss, positive, accuracy


def unlabeled_view(dataset: Dataset) -> Dataset:
    """The dataset as SimCLR sees it: images, ids and splits; no classes (so no label column is
    read), no boxes, a task without labels to look up, whatever the real one."""
    info = dataset.info.model_copy(update={"classes": [], "task": "multilabel"})
    return dataclasses.replace(dataset, info=info, boxes=None)


class Simclr(EncoderMethod):
    """Paper 003 §III.C: SimCLR on the pre-training rows (`pretrain.rows`), any dataset kind."""

    name = "simclr"
    tasks = ("multilabel", "binary", "detection", "image-text")
    Hyperparameters = SimclrParams
    hparams: SimclrParams
    output_name = "dim"  # encoder.pt's head is W⁽¹⁾ of the projection head: g's hidden layer

    def __init__(
        self,
        cfg: PretrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        super().__init__(cfg, unlabeled_view(dataset), cache, hparams)
        self.task = dataset.info.task
        hp = self.hparams
        self.augmentation = dataclasses.replace(
            SIMCLR, scale=(hp.crop_min, 1.0), blur=hp.blur_p, noise=hp.noise_p
        )
        self.val_sample = self.val_rows
        if len(self.val_rows) > hp.val_images:
            rng = np.random.default_rng(cfg.seed)
            self.val_sample = np.sort(rng.choice(self.val_rows, hp.val_images, replace=False))
        # this epoch's sums on the device: positive cosine, contrastive accuracy, steps
        self._sums: torch.Tensor | None = None

    def build_model(self, ctx: Context) -> nn.Module:
        hp = self.hparams
        model = Classifier(self.cfg.backbone, 1, self.cache.channels, input_norm=hp.input_norm)
        d = int(model.feature_dim)
        model.head = nn.Linear(d, d)  # W⁽¹⁾
        model.extra_heads[PROJECTION] = nn.Sequential(nn.ReLU(), nn.Linear(d, hp.projection_dim))
        return model

    def make_batch(
        self, rows: Mapping[str, np.ndarray], ctx: Context
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = ctx.upload(self.cache.take(rows["unlabeled"]))
        return simclr_views(
            images, ctx.generator, self.augmentation, channels_last=ctx.channels_last
        )

    @staticmethod
    def project(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """z = g(f(x))."""
        return model.extra_heads[PROJECTION](model(x))  # type: ignore[index,operator]

    def loss(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], ctx: Context
    ) -> StepOutput:
        v1, v2 = batch
        z1, z2 = self.project(model, torch.cat([v1, v2])).chunk(2)  # one pass: BN sees both
        loss, positive, accuracy = nt_xent(z1, z2, self.hparams.temperature)
        step = torch.stack([positive.detach(), accuracy.detach(), torch.ones_like(accuracy)])
        # (a resumed run's sums come back on the CPU)
        self._sums = step if self._sums is None else self._sums.to(step.device) + step
        return StepOutput(loss, {"positive_cosine": positive.detach(), "contrastive_acc": accuracy})

    def validate(self, model: nn.Module, ctx: Context) -> dict[str, float]:
        """The epoch's mean positive cosine and contrastive accuracy; the val sample's loss and
        numbers with views drawn from a fixed seed."""
        out: dict[str, float] = {}
        if self._sums is not None:
            positive, accuracy, steps = self._sums.tolist()
            out = {"positive_cosine": positive / steps, "contrastive_acc": accuracy / steps}
            self._sums = None
        rows = self.val_sample
        if len(rows) < 2:
            return out
        gen = torch.Generator(device=ctx.device).manual_seed(self.cfg.seed + VAL_SEED)
        z1, z2 = [], []
        for start in range(0, len(rows), self.eval_batch_size):
            images = ctx.upload(self.cache.take(rows[start : start + self.eval_batch_size]))
            v1, v2 = simclr_views(images, gen, self.augmentation, channels_last=ctx.channels_last)
            a, b = self.project(model, torch.cat([v1, v2])).float().chunk(2)
            z1.append(a)
            z2.append(b)
        loss, positive, accuracy = nt_xent(torch.cat(z1), torch.cat(z2), self.hparams.temperature)
        out.update(
            val_loss=float(loss),
            val_positive_cosine=float(positive),
            val_contrastive_acc=float(accuracy),
        )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_sums": None if self._sums is None else self._sums.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sums = state.get("epoch_sums")
        self._sums = None if sums is None else sums.clone()

    def write_artifacts(
        self, model: nn.Module, ctx: Context, out_dir: Path, history: list[dict[str, float]]
    ) -> dict[str, Any]:
        """metrics.json: the last epoch's loss and contrastive numbers (train and val)."""
        last = history[-1] if history else {}
        keys = (
            "train_loss", "contrastive_acc", "positive_cosine",
            "val_loss", "val_contrastive_acc", "val_positive_cosine",
        )  # fmt: skip
        return {
            "val_images": len(self.val_sample),
            **{k: float(last[k]) for k in keys if k in last},
        }
