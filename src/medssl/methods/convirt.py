"""ConVIRT image-text pre-training (paper 002 §4; Zhang et al. 2020) on an `image-text` dataset
(`medssl data pairs`): an image encoder (train.backbone's CNN + a linear projection) and a text
encoder (a BERT over the retrained WordPiece tokens + a linear projection) learn to tell which
description goes with which image, with a bidirectional InfoNCE loss on cosine similarities
(eq. of §4.2, weight λ, temperature τ). The images of an exam share their description, so a batch
takes one image per exam: no image meets its own report as a negative. Product: the image encoder
(encoder.pt in the classifier's layout; the projection is its head, the text side is dropped), to
fine-tune with `medssl train -S train.init=checkpoint -S train.weights=…/encoder.pt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from medssl.config import PretrainConfig
from medssl.data.augment import AugmentSpec, augment, to_float
from medssl.data.cache import ImageCache
from medssl.data.contract import TEXT_COLUMN, Dataset
from medssl.data.samplers import BatchSampler, ExamBatchSampler
from medssl.engine.context import Context
from medssl.engine.method import StepOutput
from medssl.errors import ConfigError, DataContractError
from medssl.fileio import sha256_file
from medssl.method_params import ConvirtParams
from medssl.methods.base import EncoderMethod
from medssl.models import Classifier


def convirt_loss(
    image: torch.Tensor, text: torch.Tensor, lam: float, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paper 002 §4.2: L = 1/N Σ_i (λ·L_i^{I→T} + (1 − λ)·L_i^{T→I}), L_i^{I→T} = −log
    exp(⟨I_i, T_i⟩/τ) / Σ_j exp(⟨I_i, T_j⟩/τ) and L_i^{T→I} the same over the images j, ⟨·,·⟩ the
    cosine similarity. Returns (L, mean L^{I→T}, mean L^{T→I}), float32."""
    i = F.normalize(image.float(), dim=1)
    t = F.normalize(text.float(), dim=1)
    logits = i @ t.T / temperature
    target = torch.arange(len(i), device=logits.device)
    image_to_text = F.cross_entropy(logits, target)
    text_to_image = F.cross_entropy(logits.T, target)
    return lam * image_to_text + (1 - lam) * text_to_image, image_to_text, text_to_image


class TextTower(nn.Module):
    """The text encoder and its linear projection (Fig. 3)."""

    def __init__(self, encoder: nn.Module, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = nn.Linear(int(encoder.output_dim), dim)  # type: ignore[arg-type]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(ids, mask))


class Convirt(EncoderMethod):
    name = "convirt"
    tasks = ("image-text",)
    Hyperparameters = ConvirtParams
    hparams: ConvirtParams
    output_name = "dim"  # encoder.pt's head is the image projection

    def __init__(
        self,
        cfg: PretrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        from medssl.text.tokens import TOKENIZER_DIR, cached_encode, load_tokenizer

        hp = self.hparams
        texts = dataset.manifest[TEXT_COLUMN].astype("string")
        described = texts.iloc[self.train_rows].fillna("").str.strip().str.len() > 0
        self.train_rows = self.train_rows[described.to_numpy(dtype=bool)]
        if len(self.train_rows) == 0:
            raise DataContractError(f"{dataset.root}: no {TEXT_COLUMN} on the rows to pre-train on")
        self.tokenizer_dir = Path(hp.tokenizer) if hp.tokenizer else dataset.root / TOKENIZER_DIR
        self.vocab_size = int(load_tokenizer(self.tokenizer_dir).get_vocab_size())
        # one token sequence per distinct description, computed once and cached (rows share them)
        codes, uniques = pd.factorize(texts.fillna(""), sort=False)
        self.text_of_row = codes.astype(np.int64)
        self.ids, self.mask = cached_encode(
            self.tokenizer_dir, list(uniques), hp.max_length, Path(cfg.cache_dir)
        )
        # ConVIRT's augmentations (Zhang et al. 2020 §3: crop 0.6-1, flip, affine ±20°, colour
        # jitter, Gaussian blur σ 0.1-3 px at 224 px, scaled here to the image side)
        sigma = max(0.2, 3.0 * dataset.info.image_size / 224)
        self.augmentation = AugmentSpec(
            scale=(0.6, 1.0),
            hflip=0.5,
            rotate=20.0,
            brightness=0.2,
            contrast=0.4,
            blur=0.5,
            blur_sigma=(0.1, sigma),
        )

    def fingerprint(self) -> dict[str, Any]:
        """The hyperparameters and the tokenizer's bytes: a resumed run must read the same
        token ids (re-running `medssl data pairs` can retrain it with the manifest unchanged)."""
        from medssl.text.tokens import tokenizer_file

        digest = sha256_file(tokenizer_file(self.tokenizer_dir))
        return {**super().fingerprint(), "convirt.tokenizer_sha256": digest}

    def streams(self) -> dict[str, BatchSampler]:
        """`batch_exams` exams per batch, one image of each (§4.2: an exam's images share one
        description)."""
        cfg, rows = self.cfg, self.train_rows
        sampler = ExamBatchSampler(
            rows, self.exam_ids[rows], cfg.batch_exams, cfg.max_batch_images, cfg.seed,
            per_group=1,
        )  # fmt: skip
        return {"pairs": sampler}

    def build_model(self, ctx: Context) -> nn.Module:
        from medssl.text.encoder import build_text_encoder

        hp = self.hparams
        model = Classifier(self.cfg.backbone, hp.projection_dim, self.cache.channels)
        try:
            text = build_text_encoder(
                self.vocab_size,
                hidden=hp.text_hidden,
                layers=hp.text_layers,
                heads=hp.text_heads,
                intermediate=4 * hp.text_hidden,
                max_length=hp.max_length,
                weights=hp.text_weights,
            )
        except ValueError as exc:  # e.g. hidden size not a multiple of the heads
            raise ConfigError(f"convirt: cannot build the text encoder ({exc})") from None
        model.extra_heads["text"] = TextTower(text, hp.projection_dim)
        return model

    def make_batch(self, rows: Mapping[str, np.ndarray], ctx: Context) -> dict[str, torch.Tensor]:
        r = rows["pairs"]
        x = to_float(ctx.upload(self.cache.take(r)), ctx.channels_last)
        t = self.text_of_row[r]
        return {
            "images": augment(x, self.augmentation, ctx.generator),
            "ids": ctx.upload(self.ids[t].astype(np.int64)),
            "mask": ctx.upload(self.mask[t].astype(np.int64)),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: Context) -> StepOutput:
        hp = self.hparams
        image = model(batch["images"])
        text = model.extra_heads["text"](batch["ids"], batch["mask"])  # type: ignore[index,operator]
        loss, i2t, t2i = convirt_loss(image, text, hp.lambda_, hp.temperature)
        return StepOutput(loss, {"loss_i2t": i2t.detach(), "loss_t2i": t2i.detach()})
