"""PICA deep clustering and LSD, PICA with a symmetric-Dirichlet prior on the cluster sizes
(paper 000 §2.2.1-2.2.2).

Two augmentation schemes (~ and ^) of every image go through the feature extractor f and the
cluster head g (K softmax outputs). The partition uncertainty index compares the two views'
cluster columns; a cluster-size term keeps the partition from collapsing: PICA's negative entropy
(eq. 4) forces uniform sizes at every batch, LSD's Dirichlet likelihood (eq. 6) only keeps every
cluster alive, so unbalanced organs can form unbalanced clusters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl.data.augment import STRONG, WEAK, views
from medssl.engine.context import Context
from medssl.engine.method import StepOutput
from medssl.errors import ConfigError
from medssl.method_params import LsdParams, PicaParams
from medssl.methods.clustering import ClusteringMethod

TINY = 1e-12  # floor of a cluster share before its log


def pui_loss(p_hat: torch.Tensor, p_tilde: torch.Tensor) -> torch.Tensor:
    """Paper 000 eq. 1-3: M_PUI(j1, j2) = cos(q̂_j1, q̃_j2) over the K cluster columns of the two
    views' [B, K] probabilities, a softmax over each row, L_CE = 1/K Σ_j -log m_jj. float32."""
    m = F.normalize(p_hat.float(), dim=0).T @ F.normalize(p_tilde.float(), dim=0)
    return F.cross_entropy(m, torch.arange(m.shape[0], device=m.device))


def cluster_shares(p: torch.Tensor) -> torch.Tensor:
    """Z: z_i = Σ_b p_bi / Σ_b,k p_bk, the batch's cluster-size distribution (eq. 4)."""
    z = p.float().sum(dim=0)
    return z / z.sum()


def negative_entropy_loss(p_tilde: torch.Tensor) -> torch.Tensor:
    """Paper 000 eq. 4: L_NE = log K - H(Z); 0 for uniform cluster sizes."""
    z = cluster_shares(p_tilde)
    return math.log(z.numel()) + (z * z.clamp_min(TINY).log()).sum()


def dirichlet_size_loss(p_tilde: torch.Tensor, alpha: float) -> torch.Tensor:
    """Paper 000 eq. 6: L_SD = -1/log K Σ_k (α - 1) log z_k, the negative log-likelihood of Z under
    a symmetric Dirichlet(α) up to a constant; 0 at α = 1, lowest for balanced Z when α > 1."""
    z = cluster_shares(p_tilde)
    return -(alpha - 1.0) / math.log(z.numel()) * z.clamp_min(TINY).log().sum()


class Pica(ClusteringMethod):
    """L = L_CE + λ·L_NE (paper 000 §2.2.1)."""

    name = "pica"
    Hyperparameters = PicaParams

    def check(self) -> None:
        """The PUI compares the K cluster columns of a batch (eq. 1-3): K must not exceed it."""
        sizes = [len(b) for b in self.streams()["unlabeled"].batches(0)]  # type: ignore[attr-defined]
        typical = int(np.median(sizes))
        if self.k > typical:
            raise ConfigError(
                f"{self.name}: K={self.k} clusters but a batch holds {typical} images (median): "
                f"the cluster columns cannot be told apart; raise pretrain.batch_exams or "
                f"pretrain.max_batch_images, or lower {self.name}.clusters"
            )

    def size_loss(self, p_tilde: torch.Tensor) -> torch.Tensor:
        return negative_entropy_loss(p_tilde)

    def make_batch(self, rows: Mapping[str, np.ndarray], ctx: Context) -> torch.Tensor:
        """Both views of the batch stacked: [~ view; ^ view] (one forward pass for both)."""
        x = ctx.upload(self.cache.take(rows["unlabeled"]))
        tilde, hat = views(x, [WEAK, STRONG], ctx.generator, channels_last=ctx.channels_last)
        return torch.cat([tilde, hat])

    def loss(self, model: nn.Module, batch: torch.Tensor, ctx: Context) -> StepOutput:
        p = torch.softmax(model(batch).float(), dim=1)
        p_tilde, p_hat = p.chunk(2)
        self.count(p_tilde)
        ce = pui_loss(p_hat, p_tilde)
        size = self.size_loss(p_tilde)
        lam = self.hparams.lambda_  # type: ignore[union-attr]
        return StepOutput(ce + lam * size, {"pui_ce": ce.detach(), "size_loss": size.detach()})


class Lsd(Pica):
    """L = L_CE + λ·L_SD(α) (paper 000 §2.2.2, eq. 7)."""

    name = "lsd"
    Hyperparameters = LsdParams

    def size_loss(self, p_tilde: torch.Tensor) -> torch.Tensor:
        return dirichlet_size_loss(p_tilde, self.hparams.alpha)  # type: ignore[union-attr]
