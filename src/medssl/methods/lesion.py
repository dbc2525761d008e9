"""Lesion recognition (paper 004): benign/malignant classification with an auxiliary contrastive
task on the backbone features. Several ultrasound views show the same lesion; the lesion-recognition
(LR) loss pulls the views of a lesion together and pushes other lesions away (eq. 2-3), trained
jointly with the classification loss: L = L_cls + α·L_con (eq. 4).

Variants (params.yaml `lesion-recognition.variant`, Tables 1-2): `baseline` (L_cls only), `lr`,
`ir` (instance recognition: the positives of an image are its other augmented view, eq. 5),
`lr-sc` / `lr-dc` / `lr-none` (LR without the negatives of the same class / the other class /
all negatives). Batches are P groups (patients, or lesions) × K images (§3.1: 8 × 8), drawn by the
engine's group sampler. The last epoch's weights are kept (§3.1: a fixed 200 epochs), so the
method trains without a val split (k-fold cross-validation: `train.cv_folds`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from medssl.config import TrainConfig
from medssl.data.augment import AugmentSpec, augment, to_float
from medssl.data.cache import ImageCache
from medssl.data.contract import Dataset, lesion_keys
from medssl.data.samplers import BatchSampler, ExamBatchSampler
from medssl.engine.context import Context
from medssl.engine.method import StepOutput
from medssl.errors import DataContractError
from medssl.method_params import LesionRecognitionParams
from medssl.methods.base import MultilabelMethod
from medssl.methods.supervised import multilabel_bce
from medssl.metrics.binary import roc_auc

# Paper 004 §3.1: "random cropping, flipping and color jittering" (ranges not given: ours).
LESION_AUGMENT = AugmentSpec(scale=(0.6, 1.0), hflip=0.5, brightness=0.2, contrast=0.2)


def contrastive_masks(
    ids: torch.Tensor, classes: torch.Tensor, variant: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper 004 eq. 3 (and eq. 5, Table 2): bool [N, N] masks of the positives P(i) (same id,
    j ≠ i) and the negatives N(i) of every anchor i. `ids`: lesion ids (LR) or image ids (IR);
    `classes`: 0/1 labels. -SC drops negatives of the anchor's class, -DC those of the other
    class, `lr-none` all of them."""
    same = ids[:, None] == ids[None, :]
    eye = torch.eye(len(ids), dtype=torch.bool, device=ids.device)
    positives = same & ~eye
    negatives = ~same
    same_class = classes[:, None] == classes[None, :]
    if variant == "lr-sc":
        negatives = negatives & ~same_class
    elif variant == "lr-dc":
        negatives = negatives & same_class
    elif variant == "lr-none":
        negatives = torch.zeros_like(negatives)
    return positives, negatives


def contrastive_loss(
    features: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Paper 004 eq. 2: -1/N_b Σ_i Σ_{j∈P(i)} log exp(S_ij) / Σ_{k∈N(i)∪P(i)} exp(S_ik), S the
    cosine similarity of the features (÷ temperature; eq. 2: 1). An anchor without positives adds
    zero. float32."""
    z = F.normalize(features.float(), dim=1)
    sim = z @ z.T / temperature
    allowed = positives | negatives
    log_denominator = torch.logsumexp(sim.masked_fill(~allowed, float("-inf")), dim=1)
    log_prob = sim - log_denominator[:, None]
    per_anchor = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -per_anchor.sum() / max(len(features), 1)


class LesionRecognition(MultilabelMethod):
    """Paper 004: backbone f_θ, classification head g_φ (one logit, BCE: eq. 1's two-class
    cross-entropy), and α·L_con on f_θ's features (eq. 4)."""

    name = "lesion-recognition"
    tasks = ("binary",)
    monitor = None
    needs_val = False
    Hyperparameters = LesionRecognitionParams
    hparams: LesionRecognitionParams

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        m = dataset.manifest
        lesions = m["lesion_id"].iloc[self.train_rows]
        if self.hparams.variant != "baseline" and lesions.isna().any():
            raise DataContractError(
                f"{dataset.root}: lesion-recognition needs a lesion_id on every train row "
                f"({int(lesions.isna().sum())} missing); variant=baseline trains without"
            )
        # one integer per lesion (NA rows: their own), the positives of eq. 3; lesion ids are
        # only unique within a patient
        codes, _ = pd.factorize(lesion_keys(m), use_na_sentinel=True)
        self.lesion_codes = np.where(codes < 0, len(m) + np.arange(len(m)), codes)
        self.groups = m[f"{self.hparams.group_by}_id"].astype("string").to_numpy(dtype=object)

    def streams(self) -> dict[str, BatchSampler]:
        """Paper 004 §3.1: P patients (or lesions) × K images per batch."""
        hp, rows = self.hparams, self.train_rows
        groups = self.groups[rows]
        if pd.isna(groups).any():
            raise DataContractError(
                f"{self.dataset.root}: {hp.group_by}_id missing on train rows (group_by)"
            )
        sampler = ExamBatchSampler(
            rows,
            groups,
            hp.groups_per_batch,
            self.cfg.max_batch_images,
            self.cfg.seed,
            per_group=hp.images_per_group,
        )
        return {"labeled": sampler}

    def make_batch(self, rows: Mapping[str, np.ndarray], ctx: Context) -> dict[str, torch.Tensor]:
        r = rows["labeled"]
        if self.hparams.variant == "ir":
            # eq. 5: two augmented views of each image, as many images as the other variants
            r = np.repeat(r[::2], 2)
            ids = r
        else:
            ids = self.lesion_codes[r]
        x = to_float(ctx.upload(self.cache.take(r)), ctx.channels_last)
        return {
            "images": augment(x, LESION_AUGMENT, ctx.generator),
            "targets": ctx.upload(self.targets[r]),
            "ids": ctx.upload(np.asarray(ids, dtype=np.int64)),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: Context) -> StepOutput:
        """Eq. 4: L = L_cls + α·L_con."""
        hp = self.hparams
        features = model.features(batch["images"])  # type: ignore[operator]
        classification = multilabel_bce(model.head(features), batch["targets"])  # type: ignore[operator]
        if hp.variant == "baseline" or hp.alpha == 0:
            return StepOutput(classification, {"loss_cls": classification.detach()})
        targets = batch["targets"][:, 0]
        positives, negatives = contrastive_masks(batch["ids"], targets, hp.variant)
        con = contrastive_loss(features, positives, negatives, hp.temperature)
        logs = {"loss_cls": classification.detach(), "loss_con": con.detach()}
        return StepOutput(classification + hp.alpha * con, logs)

    def validate(self, model: nn.Module, ctx: Context) -> dict[str, float]:
        """Val loss, weighted F1 and AUC when the dataset has val rows (cross-validation has
        none: nothing to report, the last epoch is kept anyway)."""
        return super().validate(model, ctx) if len(self.val_rows) else {}

    def val_metrics(self, logits: np.ndarray) -> dict[str, float]:
        auc = roc_auc(self.targets[self.val_rows][:, 0], logits[:, 0])
        return {**super().val_metrics(logits), "val_auc": auc}
