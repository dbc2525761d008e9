"""DeepCluster for image categorisation (paper 001 §3, after Caron et al.).

Every epoch: extract the backbone features of every training image (inference mode, batched, on
the device, augmented like training), ℓ2-normalise them (no PCA), run k-means with K clusters
(over-clustering: K = 8 × classes), take the assignments as pseudo-labels, re-initialise the
classifier g_w (and drop its optimizer state), then train f_θ and g_w with cross-entropy (eq. 1)
on batches drawn uniformly over the pseudo-labels. Images are z-scored one by one. No stopping
criterion: the last model is kept, and the clusters of its features are the result (Table 1).

Per epoch it logs NMI(t, t−1) of the pseudo-labels, NMI and purity (eq. 2-3) of the val rows'
clusters against their labels, the CNN loss (train_loss), empty clusters, the cost of the
feature pass and of k-means; `training_curves.png` shows them over the epochs (Fig. 2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from medssl.config import PretrainConfig
from medssl.data.augment import ROTATE_CROP, augment, to_float
from medssl.data.cache import ImageCache
from medssl.data.contract import Dataset
from medssl.data.samplers import BatchSampler, UniformLabelSampler
from medssl.engine.context import Context
from medssl.engine.method import StepOutput
from medssl.errors import DataContractError
from medssl.kmeans import kmeans
from medssl.method_params import DeepClusterParams
from medssl.methods.clustering import ClusteringMethod
from medssl.metrics.clustering import label_combinations, nmi, purity
from medssl.models import build_classifier
from medssl.plots import plot_curves

CURVES_PLOT = "training_curves.png"
# Fig. 2 of paper 001: the four numbers it watches over the epochs
CURVES = {
    "NMI(t, t−1)": "nmi_prev",
    "NMI vs labels (val)": "val_nmi",
    "cluster purity (val)": "val_purity",
    "CNN loss": "train_loss",
    "empty clusters": "clusters_empty",
}


class DeepCluster(ClusteringMethod):
    """Paper 001 §3: k-means pseudo-labels re-computed every epoch, cross-entropy on them."""

    name = "deepcluster"
    Hyperparameters = DeepClusterParams
    hparams: DeepClusterParams
    # paper 001 §4's loop settings (pretrain.* keys; batch 256; the paper trains 200 epochs)
    paper_loop: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 1e-5,
        "max_batch_images": 256,
    }

    def __init__(
        self,
        cfg: PretrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        self.labels: np.ndarray | None = None  # pseudo-labels of train_rows at this epoch
        self.centroids: np.ndarray | None = None  # [K, D] of this epoch's k-means
        self.epoch_stats: dict[str, float] = {}
        self._sampler: UniformLabelSampler | None = None
        self._features: np.ndarray | None = None  # every row's final features (write_artifacts)

    def _num_clusters(self) -> int:
        """K = overcluster × the label combinations on the labeled rows (paper 001 §4: 8 × 3 =
        24, 8 × 13 = 104); labels choose K only, they never train."""
        labeled = ~np.isnan(self.targets).any(axis=1)
        combos = label_combinations(self.targets[labeled]) if labeled.any() else []
        self.n_classes = len(np.unique(combos))  # for the table: classes among the labels
        if self.hparams.clusters is not None:
            return int(self.hparams.clusters)
        if not labeled.any():
            raise DataContractError(
                f"{self.dataset.root}: no labeled rows to count the classes from; "
                f"set {self.name}.clusters"
            )
        k = self.hparams.overcluster * max(self.n_classes, 2)
        return min(k, len(self.train_rows))

    def build_model(self, ctx: Context) -> nn.Module:
        norm = "image" if self.hparams.zscore else "dataset"
        return build_classifier(self.cfg.backbone, self.k, self.cache.channels, input_norm=norm)

    def streams(self) -> dict[str, BatchSampler]:
        """Batches of pretrain.max_batch_images images (paper: 256), uniform over pseudo-labels."""
        self._sampler = UniformLabelSampler(
            self.train_rows, self.cfg.max_batch_images, self.cfg.seed
        )
        self._sampler.set_labels(self.labels)
        return {"unlabeled": self._sampler}

    # --- the clustering step ---------------------------------------------------------------

    def features(
        self, model: nn.Module, ctx: Context, rows: np.ndarray, *, augmented: bool
    ) -> torch.Tensor:
        """ℓ2-normalised backbone features [len(rows), D] (float32, on the device) in inference
        mode and batches; `augmented`: through the training augmentation (ctx.generator)."""
        out = torch.empty(len(rows), int(model.feature_dim), device=ctx.device)
        step = self.eval_batch_size
        with ctx.inference(model):
            for start in range(0, len(rows), step):
                x = to_float(ctx.upload(self.cache.take(rows[start : start + step])))
                if augmented:
                    x = augment(x, ROTATE_CROP, ctx.generator)  # type: ignore[assignment]
                if ctx.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                f = model.features(x).float()
                out[start : start + len(f)] = F.normalize(f, dim=1)
        return out

    def cluster(self, feats: torch.Tensor, seed: int) -> Any:
        hp = self.hparams
        return kmeans(feats, self.k, iterations=hp.kmeans_iterations, seed=seed, backend=hp.kmeans)

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: Context) -> list[torch.Tensor]:
        """Features → k-means → pseudo-labels, then a fresh classifier (§3)."""
        start = time.perf_counter()
        augmented = self.hparams.augment_clustering
        feats = self.features(model, ctx, self.train_rows, augmented=augmented)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        feature_seconds = time.perf_counter() - start
        result = self.cluster(feats, seed=self.cfg.seed * 100_003 + epoch)
        previous, self.labels, self.centroids = self.labels, result.labels, result.centroids
        assert self._sampler is not None
        self._sampler.set_labels(self.labels)
        self._counts = torch.from_numpy(np.bincount(self.labels, minlength=self.k))
        stats: dict[str, float] = {
            "clusters_empty": float(result.empty),
            "clusters_reseeded": float(result.reseeded),
            "kmeans_objective": result.objective,
            "feature_seconds": feature_seconds,
            "kmeans_seconds": result.seconds,
        }
        if previous is not None:
            stats["nmi_prev"] = nmi(previous, self.labels)
        if len(self.val_rows):
            val = self.assign(model, ctx, self.val_rows)
            combos = label_combinations(self.targets[self.val_rows])
            stats["val_nmi"] = nmi(combos, val)
            stats["val_purity"] = purity(combos, val)
        self.epoch_stats = stats
        return self._reset_head(model, epoch)

    def _reset_head(self, model: nn.Module, epoch: int) -> list[torch.Tensor]:
        """nn.Linear's initialisation drawn from a (seed, epoch) generator: the same head on
        every device and after a resume."""
        head: nn.Linear = model.head  # type: ignore[assignment]
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        bound = 1 / math.sqrt(head.in_features)  # kaiming_uniform(a=√5) and the bias rule
        with torch.no_grad():
            w = torch.empty(head.weight.shape).uniform_(-bound, bound, generator=gen)
            b = torch.empty(head.bias.shape).uniform_(-bound, bound, generator=gen)
            head.weight.copy_(w)
            head.bias.copy_(b)
        return [head.weight, head.bias]

    def assign(self, model: nn.Module, ctx: Context, rows: np.ndarray) -> np.ndarray:
        """The nearest current centroid of `rows`' un-augmented features."""
        return self.cluster_probs(model, ctx, rows).argmax(axis=1)

    def cluster_probs(self, model: nn.Module, ctx: Context, rows: np.ndarray) -> np.ndarray:
        """Softmax over the centroid head's logits 2·f·c − ‖c‖² (its argmax is the nearest
        centroid of the ℓ2-normalised features f)."""
        if self._features is not None:
            feats = torch.from_numpy(self._features[rows])
        else:
            feats = self.features(model, ctx, rows, augmented=False).cpu()
        weight, bias = self._centroid_head()
        return torch.softmax(feats @ weight.T + bias, dim=1).numpy()

    def embedding(self, model: nn.Module, ctx: Context, rows: np.ndarray) -> np.ndarray:
        """The final ℓ2-normalised features already computed for the clustering (no second
        pass over the images)."""
        if self._features is not None:
            return self._features[rows]
        return self.features(model, ctx, rows, augmented=False).cpu().numpy()

    def _centroid_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.from_numpy(np.asarray(self.centroids, dtype=np.float32))
        return 2 * c, -(c * c).sum(dim=1)

    def cluster_head(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], bool]:
        """The exported classifier assigns the nearest final centroid (not the last epoch's
        re-initialised, one-epoch-trained head)."""
        weight, bias = self._centroid_head()
        return {"head.weight": weight, "head.bias": bias}, True

    # --- training ----------------------------------------------------------------------------

    def make_batch(
        self, rows: Mapping[str, np.ndarray], ctx: Context
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = rows["unlabeled"]
        assert self.labels is not None
        x = to_float(ctx.upload(self.cache.take(batch)))
        x = augment(x, ROTATE_CROP, ctx.generator)  # type: ignore[assignment]
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        position = np.searchsorted(self.train_rows, batch)  # train_rows is sorted
        y = torch.from_numpy(self.labels[position]).to(ctx.device)
        return x, y

    def loss(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], ctx: Context
    ) -> StepOutput:
        """Eq. 1: the multinomial logistic loss of g_w(f_θ(x)) against the pseudo-labels."""
        x, y = batch
        return StepOutput(F.cross_entropy(model(x).float(), y))

    def validate(self, model: nn.Module, ctx: Context) -> dict[str, float]:
        """This epoch's clustering: its sizes, NMI(t, t−1), val NMI/purity, empty clusters."""
        return {**self.size_metrics(), **self.epoch_stats}

    def state_dict(self) -> dict[str, Any]:
        def tensor(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(np.array(a))

        return {
            **super().state_dict(),
            "labels": tensor(self.labels),
            "centroids": tensor(self.centroids),
            "epoch_stats": dict(self.epoch_stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        labels, centroids = state.get("labels"), state.get("centroids")
        self.labels = None if labels is None else labels.numpy().copy()
        self.centroids = None if centroids is None else centroids.numpy().copy()
        self.epoch_stats = dict(state.get("epoch_stats") or {})
        if self._sampler is not None:
            self._sampler.set_labels(self.labels)

    # --- the result ----------------------------------------------------------------------------

    def write_artifacts(
        self, model: nn.Module, ctx: Context, out_dir: Path, history: list[dict[str, float]]
    ) -> dict[str, Any]:
        """Paper 001 Table 1: k-means on the last model's (un-augmented) features of the training
        images; every row gets its nearest centroid; then the clustering files of every method
        and the Fig. 2 curves."""
        every = np.arange(len(self.dataset.manifest))
        feats = self.features(model, ctx, every, augmented=False)
        train = torch.from_numpy(self.train_rows).to(feats.device)
        result = self.cluster(feats[train], seed=self.cfg.seed * 100_003 + 999_983)
        last = self.labels
        self.labels, self.centroids = result.labels, result.centroids
        self._features = feats.cpu().numpy()
        try:
            metrics = super().write_artifacts(model, ctx, out_dir, history)
        finally:
            self._features = None
        if last is not None:
            metrics["nmi_prev"] = nmi(last, result.labels)
        metrics["clusters_empty"] = result.empty
        plot_curves(
            history,
            CURVES,
            out_dir / CURVES_PLOT,
            f"{self.name}: training metrics per epoch (K={self.k})",
        )
        return metrics

    def table(self, metrics: dict[str, Any]) -> str:
        """The result in the layout of paper 001's Table 1."""
        header = ("Dataset", "# images", "# classes", "# clusters", "NMI t/t-1", "NMI labels", "CP")
        split = "test" if "test_nmi" in metrics else "val"
        row = (
            self.dataset.info.name,
            f"{len(self.train_rows):,}",
            str(self.n_classes),
            str(self.k),
            _fmt(metrics.get("nmi_prev")),
            _fmt(metrics.get(f"{split}_nmi")),
            _fmt(metrics.get(f"{split}_purity")),
        )
        widths = [max(len(a), len(b)) for a, b in zip(header, row, strict=True)]
        lines = [
            f"paper 001 Table 1 layout (NMI vs labels and purity CP on the {split} rows)",
            "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)),
        ]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
