"""What the deep-clustering methods share (PICA and LSD of paper 000 §2.2, DeepCluster of paper
001): K clusters as the head of the classifier module, the cluster-size distribution of every
epoch, and the unsupervised classifier of Algorithm 1 (§2.2.3) with its files:

    assignments.parquet  every row: image, exam_id, split, cluster, cluster_prob
    clusters.json        K, each cluster's size and its soft label (Algorithm 1 on val)
    predictions.parquet  labeled val/test rows scored with their cluster's soft label (the
                         pretrain stage and `medssl evaluate` score it: Table 1 layout)
    model.pt             that unsupervised classifier (models.ClusterClassifier): evaluate,
                         register (e.g. as abdominal-organs-clusters) and predict take it
    cluster_sizes.png    the size distribution per epoch (the quantity LSD shapes)
    tsne.png             t-SNE of the features, coloured by cluster and by label combination
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from medssl.config import PretrainConfig
from medssl.data.cache import ImageCache
from medssl.data.contract import PREDICTIONS_FILE, Dataset, write_table
from medssl.engine.context import Context
from medssl.errors import DataContractError
from medssl.methods.base import EncoderMethod
from medssl.metrics.clustering import label_combinations, match_clusters, nmi, purity
from medssl.models import build_classifier, save_model
from medssl.models.classifier import ClusterClassifier
from medssl.models.inference import predictions_table
from medssl.plots import plot_cluster_sizes, plot_embedding

ASSIGNMENTS_FILE = "assignments.parquet"
CLUSTERS_FILE = "clusters.json"
SIZES_PLOT = "cluster_sizes.png"
MODEL_FILE = "model.pt"  # the unsupervised classifier (the train stage's file name)
TSNE_PLOT = "tsne.png"
SIZE_PREFIX = "cluster_size/"  # a "/" key: logged and in history.csv, not printed


def size_column(k: int) -> str:
    return f"{SIZE_PREFIX}{k:02d}"


class ClusteringMethod(EncoderMethod):
    """A deep-clustering encoder method. Subclasses set `Hyperparameters` (with a `clusters`
    field: K, None = the number of label combinations on the val set, §2.2.3) and the loss;
    they call `self.count(probs)` with each step's cluster probabilities."""

    def __init__(
        self,
        cfg: PretrainConfig,
        dataset: Dataset,
        cache: ImageCache,
        hparams: BaseModel | None = None,
    ) -> None:
        super().__init__(cfg, dataset, cache, hparams)
        self.k = self._num_clusters()
        self._counts: torch.Tensor | None = None  # argmax counts of this epoch's images
        self.check()

    def check(self) -> None:
        """Refuse a configuration the method cannot train with (one-line ConfigError)."""

    def _num_clusters(self) -> int:
        k = getattr(self.hparams, "clusters", None)
        if k is not None:
            return int(k)
        if len(self.val_rows) == 0:
            raise DataContractError(
                f"{self.dataset.root}: no labeled val rows to count label combinations from; "
                f"set {self.name}.clusters"
            )
        k = len(np.unique(label_combinations(self.targets[self.val_rows])))
        return max(k, 2)

    def build_model(self, ctx: Context) -> nn.Module:
        # feature extractor f and cluster head g with K outputs (§2.2.1)
        return build_classifier(self.cfg.backbone, self.k, self.cache.channels)

    # --- cluster sizes per epoch ------------------------------------------------------------

    def count(self, probs: torch.Tensor) -> None:
        """Add a batch's hard assignments to the epoch's cluster sizes (on the device, no sync)."""
        counts = torch.bincount(probs.detach().argmax(dim=1), minlength=self.k)
        if self._counts is None:
            self._counts = torch.zeros(self.k, dtype=torch.int64, device=counts.device)
        self._counts = self._counts.to(counts.device) + counts

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: Context) -> None:
        self._counts = None

    def state_dict(self) -> dict[str, Any]:
        return {"counts": None if self._counts is None else self._counts.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts = state.get("counts")
        self._counts = None if counts is None else counts.clone()

    def epoch_sizes(self) -> np.ndarray:
        """Share of this epoch's training images assigned to each cluster."""
        counts = np.zeros(self.k) if self._counts is None else self._counts.cpu().numpy()
        return counts / max(counts.sum(), 1)

    # --- measuring ---------------------------------------------------------------------------

    def cluster_probs(self, model: nn.Module, ctx: Context, rows: np.ndarray) -> np.ndarray:
        logits = self.outputs(model, ctx, rows, self.k)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def size_metrics(self) -> dict[str, float]:
        """The epoch's cluster sizes (shares of its training images) and their entropy
        normalised by log K (1: uniform)."""
        sizes = self.epoch_sizes()
        out = {size_column(k): float(s) for k, s in enumerate(sizes)}
        nz = sizes[sizes > 0]
        out["size_entropy"] = float(-(nz * np.log(nz)).sum() / np.log(self.k))
        return out

    def validate(self, model: nn.Module, ctx: Context) -> dict[str, float]:
        """The epoch's cluster sizes (training images), their normalised entropy, and NMI and
        purity of the val assignments against the label combinations."""
        out = self.size_metrics()
        if len(self.val_rows):
            clusters = self.cluster_probs(model, ctx, self.val_rows).argmax(axis=1)
            combos = label_combinations(self.targets[self.val_rows])
            out["val_nmi"] = nmi(combos, clusters)
            out["val_purity"] = purity(combos, clusters)
        return out

    def write_artifacts(
        self, model: nn.Module, ctx: Context, out_dir: Path, history: list[dict[str, float]]
    ) -> dict[str, Any]:
        m = self.dataset.manifest
        rows = np.arange(len(m))
        probs = self.cluster_probs(model, ctx, rows)
        cluster = probs.argmax(axis=1)
        assignments = m[["image", "exam_id", "split"]].reset_index(drop=True)
        assignments["cluster"] = cluster.astype(np.int32)
        assignments["cluster_prob"] = probs.max(axis=1).astype(np.float32)
        write_table(assignments, out_dir / ASSIGNMENTS_FILE)

        sizes = np.bincount(cluster, minlength=self.k) / len(cluster)
        nz = sizes[sizes > 0]
        metrics: dict[str, Any] = {
            "clusters": self.k,
            "clusters_used": int((sizes > 0).sum()),
            "size_entropy": float(-(nz * np.log(nz)).sum() / np.log(self.k)),
            "largest_cluster_share": float(sizes.max()),
        }
        for split, split_rows in (("val", self.val_rows), ("test", self.test_rows)):
            if len(split_rows):
                combos = label_combinations(self.targets[split_rows])
                metrics[f"{split}_nmi"] = nmi(combos, cluster[split_rows])
                metrics[f"{split}_purity"] = purity(combos, cluster[split_rows])

        clusters: dict[str, Any] = {"k": self.k, "classes": self.classes, "clusters": []}
        if len(self.val_rows) and len(self.test_rows):
            # Algorithm 1: the development set D is the val split
            soft, dev = match_clusters(cluster[self.val_rows], self.targets[self.val_rows], self.k)
            scored = np.concatenate([self.val_rows, self.test_rows])
            table = predictions_table(self.dataset, scored, self.classes, soft[cluster[scored]])
            write_table(table, out_dir / PREDICTIONS_FILE)
            clusters["development_set"] = "val"
            save_model(out_dir / MODEL_FILE, *self.unsupervised_classifier(model, soft))
        else:
            soft, dev = None, np.zeros(self.k, dtype=np.int64)
        for k in range(self.k):
            entry: dict[str, Any] = {
                "cluster": k,
                "images": int((cluster == k).sum()),
                "share": float(sizes[k]),
                "dev_images": int(dev[k]),
            }
            if soft is not None:
                entry["soft_label"] = {
                    c: float(v) for c, v in zip(self.classes, soft[k], strict=True)
                }
            clusters["clusters"].append(entry)
        (out_dir / CLUSTERS_FILE).write_text(json.dumps(clusters, indent=2) + "\n")

        size_cols = [size_column(k) for k in range(self.k)]
        epochs = [r for r in history if all(c in r for c in size_cols)]
        if epochs:
            plot_cluster_sizes(
                np.array([[r[c] for c in size_cols] for r in epochs]),
                [int(r["epoch"]) for r in epochs],
                out_dir / SIZES_PLOT,
                f"{self.name}: cluster sizes of the training images per epoch (K={self.k})",
            )
        if self.cfg.tsne_points:
            self._plot_tsne(model, ctx, cluster, out_dir / TSNE_PLOT)
        return metrics

    def unsupervised_classifier(
        self, model: nn.Module, soft: np.ndarray
    ) -> tuple[ClusterClassifier, dict[str, Any]]:
        """The trained module with Algorithm 1's soft labels as a ClusterClassifier (CPU) and
        its model.pt meta: `medssl evaluate/register/predict` use it like any classifier."""
        head, l2 = self.cluster_head(model)
        clf = ClusterClassifier(
            self.cfg.backbone,
            self.k,
            len(self.classes),
            self.cache.channels,
            getattr(model, "input_norm", "dataset"),
            l2_features=l2,
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        state.update(head)
        state["soft_labels"] = torch.from_numpy(soft.astype(np.float32))
        clf.load_state_dict({k: v for k, v in state.items() if not k.startswith("extra_heads.")})
        meta = self.model_meta(
            "random",
            label_fraction=0.0,  # no label trained it; Algorithm 1 reads the val labels
            development_set="val",
        )
        return clf.eval(), meta

    def cluster_head(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], bool]:
        """The exported classifier's cluster head: state-dict entries replacing the trained
        module's (none: its own head) and whether it reads ℓ2-normalised features."""
        return {}, False

    def embedding(self, model: nn.Module, ctx: Context, rows: np.ndarray) -> np.ndarray:
        """The backbone features of `rows` that the t-SNE shows (float32 [len(rows), D])."""
        return self.outputs(model, ctx, rows, int(getattr(model, "feature_dim", 0)), fn="features")

    def _plot_tsne(self, model: nn.Module, ctx: Context, cluster: np.ndarray, path: Path) -> None:
        """t-SNE (scikit-learn, after PCA to 50 dims) of up to pretrain.tsne_points images:
        the labeled val/test rows first, then random others."""
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        n = self.cfg.tsne_points
        labeled = np.concatenate([self.val_rows, self.test_rows])[:n]
        others = np.setdiff1d(np.arange(len(cluster)), labeled)
        rng = np.random.default_rng(self.cfg.seed)
        extra = rng.choice(others, min(len(others), n - len(labeled)), replace=False)
        rows = np.concatenate([labeled, np.sort(extra)]).astype(np.int64)
        if len(rows) < 5:
            return
        feats = self.embedding(model, ctx, rows).astype(np.float64)
        feats = PCA(min(50, *feats.shape), random_state=self.cfg.seed).fit_transform(feats)
        perplexity = float(min(30.0, (len(rows) - 1) / 3))
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=self.cfg.seed).fit_transform(
            feats
        )
        combos_all = np.full(len(rows), -1, dtype=np.int64)
        y = self.targets[rows]
        known = ~np.isnan(y).any(axis=1)
        names: list[str] = []
        if known.any():
            combos_all[known] = label_combinations(y[known])
            uniq = np.unique(y[known].astype(np.int8), axis=0)
            names = [
                "+".join(c for c, v in zip(self.classes, u, strict=True) if v) or "none"
                for u in uniq
            ]
        plot_embedding(
            xy,
            {
                f"clusters (K={self.k})": (cluster[rows], [f"c{k}" for k in range(self.k)]),
                "label combinations (val/test)": (combos_all, names),
            },
            path,
            f"{self.name}: t-SNE of {len(rows)} images' features",
        )
