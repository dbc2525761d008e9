"""The classifier every method exports: Normalize → backbone → linear head (paper 000 §2.2.4:
feature extractor f_θ and multi-label head g_Φ), and the model.pt file format.

The module takes float32 pixels [B, C, H, W] in [0, 1] and returns logits [B, num_classes].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medssl import __version__
from medssl.errors import ConfigError
from medssl.fileio import atomic_torch_save, load_tagged_torch
from medssl.models.backbones import (
    adapt_state_dict,
    build_backbone,
    find_imagenet_weights,
    load_backbone_state,
    normalization,
    read_state_dict,
)

MODEL_FORMAT = "medssl-model"
MODEL_VERSION = 1
Init = Literal["random", "imagenet", "checkpoint"]
InputNorm = Literal["dataset", "image", "histogram"]
INPUT_NORMS: tuple[str, ...] = ("dataset", "image", "histogram")


class Normalize(nn.Module):
    """(x - mean) / std per channel; the statistics are buffers saved with the model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageZScore(nn.Module):
    """Paper 001 §3: every image z-scored with its own mean and standard deviation (instead of
    the dataset's statistics), so scanner gain and windowing do not matter."""

    EPS = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + self.EPS)


class HistogramEqualize(nn.Module):
    """Paper 003 §III.C: "each training and validation image has histogram normalization
    applied". Every image's histogram is equalised, per channel, on the image quantised to 256
    grey levels: a level goes to the midpoint of its step of the image's cumulative histogram,
    (pixels below it + half the pixels at it) / pixels, so every image comes out with mean
    exactly 1/2 and, without dominant levels, uniform (std 1/√12); then a fixed map to zero mean
    and unit std, (y − 1/2)·√12. A constant image gives zeros; a large black background (one
    level holding a share p of the pixels) shrinks the std to √(1 − p³) at most. Any increasing
    map of the grey levels (gain, gamma, windowing) gives the same output.

    Not torchvision's `equalize` (PIL's lookup table): its integer step, (pixels − pixels at the
    top level) // 255, distorts images of fewer than ~10⁵ pixels (a 32 × 32 image can come out
    with mean 0.59), and it sends the lowest level to 0. Batched, on any device; no gradient
    flows through it (it only ever sees input pixels)."""

    LEVELS = 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        with torch.no_grad():
            levels = x.detach().float().clamp(0, 1).mul(self.LEVELS - 1).round_().long()
            flat = levels.reshape(n, c, h * w)
            hist = torch.zeros(n, c, self.LEVELS, dtype=torch.int32, device=x.device)
            hist.scatter_add_(2, flat, torch.ones_like(flat, dtype=torch.int32))
            below = (hist.cumsum(2) - hist).float()
            lut = (below + hist.float() / 2) / (h * w)  # each level's CDF midpoint, in (0, 1)
            y = (lut.gather(2, flat).view(n, c, h, w) - 0.5) * math.sqrt(12)
        if x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return y


def input_normalizer(input_norm: InputNorm, in_channels: int = 1) -> nn.Module:
    """The model's first module, what its `input_norm` names (model.pt meta): "dataset" →
    `Normalize` with ImageNet's statistics, "image" → `ImageZScore` (each image z-scored),
    "histogram" → `HistogramEqualize` (each image's histogram equalised)."""
    if input_norm == "image":
        return ImageZScore()
    if input_norm == "histogram":
        return HistogramEqualize()
    if input_norm == "dataset":
        return Normalize(*normalization(in_channels))
    raise ConfigError(f"unknown input_norm {input_norm!r} (known: {', '.join(INPUT_NORMS)})")


class Classifier(nn.Module):
    """Normalize → backbone → `head`. Methods that need more heads on the same backbone (a
    clustering head, a projection head) put them in `extra_heads` and call `features()`.
    `input_norm`: "dataset" (ImageNet statistics, `Normalize`), "image" (`ImageZScore`) or
    "histogram" (`HistogramEqualize`); see `input_normalizer`."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        in_channels: int = 1,
        input_norm: InputNorm = "dataset",
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.in_channels = in_channels
        self.input_norm = input_norm
        self.normalize = input_normalizer(input_norm, in_channels)
        self.backbone, self.feature_dim = build_backbone(backbone, in_channels)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.extra_heads = nn.ModuleDict()

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ClusterClassifier(Classifier):
    """Paper 000 Algorithm 1 as a module, the unsupervised classifier of deep clustering:
    Normalize → backbone → cluster head g (K outputs) → the soft multi-label target v̂_k of the
    arg-max cluster k (buffer `soft_labels` [K, C]). It returns logits like every classifier, the
    log-odds of v̂_k (clipped to [1e-6, 1 - 1e-6]), so sigmoid gives the cluster's soft label.
    `l2_features`: the head sees ℓ2-normalised features (a nearest-centroid head: k-means
    clusters of DeepCluster, paper 001 §3)."""

    EPS = 1e-6

    def __init__(
        self,
        backbone: str,
        num_clusters: int,
        num_classes: int,
        in_channels: int = 1,
        input_norm: InputNorm = "dataset",
        l2_features: bool = False,
    ) -> None:
        super().__init__(backbone, num_clusters, in_channels, input_norm)
        self.l2_features = l2_features
        self.register_buffer("soft_labels", torch.zeros(num_clusters, num_classes))

    @property
    def num_classes(self) -> int:
        return self.soft_labels.shape[1]

    @property
    def num_clusters(self) -> int:
        return self.head.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        cluster = self.head(F.normalize(f, dim=1) if self.l2_features else f).argmax(dim=1)
        p = self.soft_labels[cluster].float().clamp(self.EPS, 1 - self.EPS)
        return torch.logit(p)


def build_classifier(
    backbone: str,
    num_classes: int,
    in_channels: int = 1,
    *,
    init: Init = "random",
    weights: str | Path | None = None,
    input_norm: InputNorm = "dataset",
) -> Classifier:
    """A classifier whose backbone is random, ImageNet (a local file: see
    `find_imagenet_weights`) or the backbone of a medssl model.pt (`init="checkpoint"`, paper 000
    §2.2.4: keep f_θ, replace the head; the checkpoint's input normalisation comes with it).
    Seed torch before calling for a reproducible init."""
    backbone_state: dict[str, torch.Tensor] | None = None
    if init == "checkpoint":
        if weights is None:
            raise ConfigError("train.init=checkpoint needs train.weights = a medssl model.pt")
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(
                f"train.weights {path}: not found (run `medssl pretrain DATASET --out "
                f"{path.parent}` first, or start from scratch: -S train.init=random)"
            )
        state, meta = _read_model_file(path)
        if meta.get("backbone") != backbone:
            raise ConfigError(
                f"{path}: a {meta.get('backbone')} model, but train.backbone is {backbone}"
            )
        prefix = "backbone."
        backbone_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        input_norm = meta.get("input_norm", "dataset")  # the inputs f_θ learned from
    elif init not in ("random", "imagenet"):
        raise ConfigError(f"unknown init {init!r} (known: random, imagenet, checkpoint)")
    model = Classifier(backbone, num_classes, in_channels, input_norm)
    if init == "imagenet":
        path = find_imagenet_weights(backbone, weights)
        state = adapt_state_dict(read_state_dict(path), backbone, in_channels)
        load_backbone_state(model.backbone, state, str(path))
    elif backbone_state is not None:
        load_backbone_state(model.backbone, backbone_state, str(weights))
    return model


def save_model(path: Path | str, model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Write model.pt atomically: the state dict (CPU, contiguous) + meta (plain data).

    meta must hold at least: method, backbone, classes, in_channels, image_size, task (a
    detector's: task "detection", rebuilt by medssl.models.detector.build_detector)."""
    if not hasattr(model, "input_norm") or not hasattr(model, "num_classes"):
        raise TypeError(
            f"save_model expects a medssl Classifier or Detector, got {type(model).__name__}"
        )
    missing = {"method", "backbone", "classes", "in_channels", "image_size", "task"} - set(meta)
    if missing:
        raise ValueError(f"model meta is missing {', '.join(sorted(missing))}")
    meta = {**meta, "num_classes": model.num_classes, "medssl_version": __version__}
    if model.input_norm != "dataset":
        meta["input_norm"] = model.input_norm
    if isinstance(model, ClusterClassifier):
        meta["clusters"] = model.num_clusters
        if model.l2_features:
            meta["l2_features"] = True
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.startswith("extra_heads.")}
    atomic_torch_save(
        {"format": MODEL_FORMAT, "version": MODEL_VERSION, "meta": meta, "state_dict": state},
        Path(path),
    )


def load_model(path: Path | str) -> tuple[Classifier, dict[str, Any]]:
    """(model in eval mode on CPU, meta) from a model.pt written by `save_model` (a Detector
    when its meta's task is "detection")."""
    state, meta = _read_model_file(Path(path))
    if meta.get("task") == "detection":
        from medssl.models.detector import build_detector

        return build_detector(meta, state), meta  # type: ignore[return-value]
    backbone, channels = meta["backbone"], int(meta["in_channels"])
    classes, norm = int(meta["num_classes"]), meta.get("input_norm", "dataset")
    if meta.get("clusters"):
        model: Classifier = ClusterClassifier(
            backbone,
            int(meta["clusters"]),
            classes,
            channels,
            norm,
            l2_features=bool(meta.get("l2_features")),
        )
    else:
        model = Classifier(backbone, classes, channels, norm)
    model.load_state_dict(state)
    return model.eval(), meta


def _read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    obj = load_tagged_torch(path, MODEL_FORMAT, "medssl model file")
    return obj["state_dict"], obj["meta"]
