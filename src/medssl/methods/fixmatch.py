"""FixMatch for multi-label classification (paper 000 §2.3; Sohn et al. 2020): labeled and
unlabeled images in every step. A weakly augmented view of each unlabeled image gives a
pseudo-label, kept only when the model is confident (τ); the strongly augmented view (RandAugment
+ cutout) is trained against it. Two ways to make the single-label recipe multi-label (§2.3.2):

* One-Head: sigmoid outputs, pseudo-label y_c = 1[p̃_c ≥ 0.5] used when max_c p̃_c ≥ τ, BCE of the
  strong view against it; BCE on labeled images (eq. 9); L = L_s + λ_u·L_u.
* Two-Head: a softmax head over the K label combinations (§2.2.3) takes FixMatch's single-label
  loss (eq. 12) and a CE on the labeled images' combinations; the multi-label head takes BCE on
  labeled images; predictions come from the multi-label head.

The labeled stream (primary: one pass is an epoch) samples `train.batch_exams` exams of the
label-fraction subset; the unlabeled stream μ times as many exams of the unlabeled split and of the
train rows outside the subset (their hidden labels only measure the pseudo-labels). With
`ema > 0` an exponential moving average of the weights is validated and exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medssl.config import TrainConfig
from medssl.data.augment import WEAK, RandAugmentSpec, augment, rand_augment, to_float
from medssl.data.cache import ImageCache
from medssl.data.contract import Dataset
from medssl.data.samplers import BatchSampler, ExamBatchSampler
from medssl.engine.context import Context
from medssl.engine.method import StepOutput
from medssl.errors import ConfigError, DataContractError
from medssl.method_params import FixMatchParams, TwoHeadParams
from medssl.methods.supervised import Supervised, multilabel_bce
from medssl.models import Classifier

COMBINATION_HEAD = "combinations"


def onehead_pseudo_labels(probs: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper 000 §2.3.2 (One-Head): y_c = 1[p̃_c ≥ 0.5] from the weak view's sigmoid outputs
    [B, C]; the row is used when at least one class reaches τ. (targets float [B, C], mask bool
    [B])."""
    return (probs >= 0.5).float(), probs.max(dim=1).values >= tau


def onehead_unlabeled_loss(
    strong_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Paper 000 eq. 12 with the One-Head pseudo-label: the mean over the C classes of the strong
    view's BCE against y, over all B unlabeled rows (masked rows count zero, FixMatch's
    normalisation). float32."""
    per_row = F.binary_cross_entropy_with_logits(
        strong_logits.float(), targets, reduction="none"
    ).mean(dim=1)
    return (per_row * mask.float()).sum() / max(len(mask), 1)


def twohead_pseudo_labels(probs: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper 000 eq. 10-12 (single-label FixMatch on the combination head): the arg-max
    combination of the weak view's softmax [B, K], used when its probability reaches τ."""
    confidence, index = probs.max(dim=1)
    return index, confidence >= tau


def twohead_unlabeled_loss(
    strong_logits: torch.Tensor, index: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Paper 000 eq. 12: cross-entropy H(ỹ, p̂) of the strong view's combination logits [B, K],
    over all B rows (masked rows count zero). float32."""
    per_row = F.cross_entropy(strong_logits.float(), index, reduction="none")
    return (per_row * mask.float()).sum() / max(len(mask), 1)


class WithEma(nn.Module):
    """The trained network and an exponential moving average of its weights and buffers
    (torch.optim.swa_utils); `forward` is the average's (validation, predictions, export)."""

    def __init__(self, student: Classifier, decay: float) -> None:
        super().__init__()
        self.student = student
        self.ema = AveragedModel(
            student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
        )
        self.ema.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ema(x)

    def update(self) -> None:
        self.ema.update_parameters(self.student)

    @property
    def averaged(self) -> Classifier:
        module = self.ema.module
        assert isinstance(module, Classifier)
        return module


def student(model: nn.Module) -> Classifier:
    """The network the optimizer trains."""
    net = model.student if isinstance(model, WithEma) else model
    assert isinstance(net, Classifier)
    return net


class FixMatchOneHead(Supervised):
    """Paper 000 §2.3.2, One-Head model (see the module doc): supervised training's labeled
    stream and batch, plus the unlabeled stream and its two views."""

    name = "fixmatch-onehead"
    tasks = ("multilabel",)
    Hyperparameters = FixMatchParams
    hparams: FixMatchParams

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: FixMatchParams | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        split = dataset.manifest["split"].to_numpy(dtype=object)
        pool = (split == "unlabeled") | (split == "train")
        pool[self.train_rows] = False  # the labeled subset is the other stream
        self.unlabeled_rows = np.flatnonzero(pool)
        if len(self.unlabeled_rows) == 0:
            raise DataContractError(
                f"{dataset.root}: no unlabeled rows (split unlabeled, or train rows outside "
                f"the label_fraction <= {cfg.label_fraction:g} subset) for {self.name}"
            )
        hp = self.hparams
        self.strong = RandAugmentSpec(
            ops=hp.strong_ops, magnitude=hp.strong_magnitude, cutout=hp.cutout
        )
        self._stats = torch.zeros(4)  # unlabeled rows, confident rows, judged, judged correct

    # --- model ------------------------------------------------------------------------------

    def build_model(self, ctx: Context) -> nn.Module:
        net = super().build_model(ctx)
        assert isinstance(net, Classifier)
        self.add_heads(net)
        return WithEma(net, self.hparams.ema) if self.hparams.ema > 0 else net

    def add_heads(self, net: Classifier) -> None:
        """Extra heads on the shared backbone (none for One-Head)."""

    def after_step(self, model: nn.Module, step: int, ctx: Context) -> None:
        if isinstance(model, WithEma):
            model.update()

    def export(self, model: nn.Module) -> tuple[Classifier, dict[str, Any]]:
        net = model.averaged if isinstance(model, WithEma) else student(model)
        _, meta = super().export(net)
        return net, meta

    # --- data -------------------------------------------------------------------------------

    def streams(self) -> dict[str, BatchSampler]:
        cfg, mu, unlabeled = self.cfg, self.hparams.mu, self.unlabeled_rows
        return {
            **super().streams(),  # "labeled": the epoch stream
            "unlabeled": ExamBatchSampler(
                unlabeled,
                self.exam_ids[unlabeled],
                mu * cfg.batch_exams,
                mu * cfg.max_batch_images,
                cfg.seed,
                stream=1,
            ),
        }

    def make_batch(self, rows: Mapping[str, np.ndarray], ctx: Context) -> dict[str, torch.Tensor]:
        """Supervised's labeled images and targets, and both views of the unlabeled images."""
        unl = rows["unlabeled"]
        x_u = to_float(ctx.upload(self.cache.take(unl)), ctx.channels_last)
        return {
            **super().make_batch(rows, ctx),
            "weak": augment(x_u, WEAK, ctx.generator),  # type: ignore[dict-item]
            "strong": rand_augment(x_u, self.strong, ctx.generator),
            # the hidden labels of train rows outside the subset (NaN elsewhere): measurement only
            "hidden": ctx.upload(self.targets[unl]),
        }

    # --- loss -------------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: Context) -> StepOutput:
        net = student(model)
        with torch.no_grad():  # the pseudo-labels: no gradient through the weak view
            weak = self.pseudo_logits(net, batch["weak"])
        # labeled images and strong views in one pass: features [labeled; strong]
        features = net.features(torch.cat([batch["images"], batch["strong"]]))
        sup, unsup, mask, correct = self.terms(net, features, weak, batch)
        loss = sup + self.hparams.lambda_u * unsup
        self.record(mask, correct)
        logs = {"loss_s": sup.detach(), "loss_u": unsup.detach(), "mask_rate": mask.float().mean()}
        return StepOutput(loss, logs)

    def pseudo_logits(self, net: Classifier, weak: torch.Tensor) -> torch.Tensor:
        return net(weak).float()

    def terms(
        self,
        net: Classifier,
        features: torch.Tensor,
        weak: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_s, L_u, confident-row mask, per-row pseudo-label correctness: 1/0, NaN where the
        row's labels are unknown)."""
        n_l = len(batch["images"])
        logits = net.head(features)
        sup = multilabel_bce(logits[:n_l], batch["targets"])
        targets, mask = onehead_pseudo_labels(torch.sigmoid(weak), self.hparams.tau)
        unsup = onehead_unlabeled_loss(logits[n_l:], targets, mask)
        hidden = batch["hidden"]
        exact = (targets == hidden).all(dim=1).float()
        return sup, unsup, mask, torch.where(hidden.isnan().any(dim=1), torch.nan, exact)

    # --- measurement ------------------------------------------------------------------------

    def record(self, mask: torch.Tensor, correct: torch.Tensor) -> None:
        """Accumulate the epoch's mask rate and pseudo-label accuracy (on the device: no sync)."""
        judged = mask & ~correct.isnan()
        step = torch.stack(
            [
                mask.new_full((), len(mask), dtype=torch.float32),
                mask.float().sum(),
                judged.float().sum(),
                torch.where(judged, correct, 0.0).sum(),
            ]
        )
        self._stats = self._stats.to(step.device, non_blocking=True) + step

    def validate(self, model: nn.Module, ctx: Context) -> dict[str, float]:
        """The multi-label head's val metrics, the epoch's share of confident unlabeled rows and
        the exact-match accuracy of their pseudo-labels on rows whose labels are hidden."""
        n, confident, judged, correct = self._stats.tolist()
        self._stats = torch.zeros_like(self._stats)
        metrics = super().validate(model, ctx)
        metrics["mask_rate"] = confident / n if n else float("nan")
        metrics["pseudo_label_accuracy"] = correct / judged if judged else float("nan")
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self._stats.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._stats = state.get("stats", torch.zeros(4)).clone()


class FixMatchTwoHead(FixMatchOneHead):
    """Paper 000 §2.3.2, Two-Head model (see the module doc)."""

    name = "fixmatch-twohead"
    Hyperparameters = TwoHeadParams
    hparams: TwoHeadParams

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: TwoHeadParams | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        self.combos = np.unique(self.targets[self.train_rows].astype(np.int8), axis=0)
        # every row's combination index, once: -1 outside the K (a pseudo-label cannot be
        # right), -2 where the labels are unknown; the labeled rows' are their CE targets
        known = ~np.isnan(self.targets).any(axis=1)
        match = (self.targets[known][:, None, :] == self.combos[None, :, :]).all(axis=2)
        self.combo_of_row = np.full(len(self.targets), -2, dtype=np.int64)
        self.combo_of_row[known] = np.where(match.any(axis=1), match.argmax(axis=1), -1)
        seen = len(self.combos)
        self.k = self.hparams.combinations or seen
        if self.k < seen:
            raise ConfigError(
                f"{self.name}.combinations={self.k} but the labeled train rows show {seen} "
                "label combinations: raise it, or null to count them"
            )

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), f"{self.name}.k": self.k}

    def add_heads(self, net: Classifier) -> None:
        net.extra_heads[COMBINATION_HEAD] = nn.Linear(net.feature_dim, self.k)

    def make_batch(self, rows: Mapping[str, np.ndarray], ctx: Context) -> dict[str, torch.Tensor]:
        batch = super().make_batch(rows, ctx)
        batch["combos"] = ctx.upload(self.combo_of_row[rows["labeled"]])
        batch["hidden_combos"] = ctx.upload(self.combo_of_row[rows["unlabeled"]])
        return batch

    def pseudo_logits(self, net: Classifier, weak: torch.Tensor) -> torch.Tensor:
        return net.extra_heads[COMBINATION_HEAD](net.features(weak)).float()

    def terms(
        self,
        net: Classifier,
        features: torch.Tensor,
        weak: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """§2.3.2: L = Σ_S [H(w, p) + L_BCE(v, p̄)] + λ_u Σ_U L_u(p̃, p̂)."""
        n_l = len(batch["images"])
        combo_logits = net.extra_heads[COMBINATION_HEAD](features).float()
        multi = net.head(features[:n_l])
        sup = F.cross_entropy(combo_logits[:n_l], batch["combos"]) + multilabel_bce(
            multi, batch["targets"]
        )
        index, mask = twohead_pseudo_labels(torch.softmax(weak, dim=1), self.hparams.tau)
        unsup = twohead_unlabeled_loss(combo_logits[n_l:], index, mask)
        truth = batch["hidden_combos"]
        correct = torch.where(truth == -2, torch.nan, (index == truth).float())
        return sup, unsup, mask, correct
