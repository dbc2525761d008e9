"""torchvision backbones as feature extractors: resnet18 (paper 000 §3.2), resnet50, vgg16_bn.

A backbone maps normalised pixels [B, C, H, W] to features [B, D]. Grey images get a 1-channel
first convolution; ImageNet weights are loaded from a local file only (never downloaded) and their
RGB filters are summed into the single grey filter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import vgg

from medssl.errors import ConfigError

BACKBONES: tuple[str, ...] = ("resnet18", "resnet50", "vgg16_bn")
# Per-channel statistics the ImageNet weights expect; grey images use their mean.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """VGG convolutional trunk + global adaptive average pooling (no 4096-wide classifier)."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _resnet(factory: Callable[[], tvm.ResNet]) -> tuple[nn.Module, int]:
    net = factory()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def _vgg16_bn() -> tuple[nn.Module, int]:
    # the convolutional trunk only: torchvision's VGG would also allocate (and initialise) a
    # 120M-parameter classifier that a feature extractor throws away
    features = vgg.make_layers(vgg.cfgs["D"], batch_norm=True)
    for m in features.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            _init_conv(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return VGGFeatures(features), 512


def _init_conv(conv: nn.Conv2d) -> None:
    """torchvision's initialisation of ResNet and VGG convolutions."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)


_FACTORIES: dict[str, Callable[[], tuple[nn.Module, int]]] = {
    "resnet18": lambda: _resnet(tvm.resnet18),
    "resnet50": lambda: _resnet(tvm.resnet50),
    "vgg16_bn": _vgg16_bn,
}
# first convolution (the one that sees the pixels), as a state-dict key prefix per backbone
FIRST_CONV = {"resnet18": "conv1", "resnet50": "conv1", "vgg16_bn": "features.0"}
# torchvision's classifier keys, dropped when loading ImageNet weights into a feature extractor
_CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def build_backbone(name: str, in_channels: int = 1) -> tuple[nn.Module, int]:
    """A randomly initialised feature extractor and its feature dimension."""
    if name not in _FACTORIES:
        raise ConfigError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    net, dim = _FACTORIES[name]()
    if in_channels != 3:
        _replace_first_conv(net, FIRST_CONV[name], in_channels)
    return net, dim


def _replace_first_conv(net: nn.Module, path: str, in_channels: int) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    old = getattr(parent, attr)
    assert isinstance(old, nn.Conv2d)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        bias=old.bias is not None,
    )
    _init_conv(new)
    setattr(parent, attr, new)


def normalization(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per input channel: ImageNet's, averaged over RGB for grey images."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    return (mean,) * in_channels, (std,) * in_channels


# --- ImageNet weights ---------------------------------------------------------------------------


def imagenet_filenames(name: str) -> list[str]:
    """torchvision's file names for `name`'s ImageNet weights, its default first."""
    enum = tvm.get_model_weights(name)
    ordered = [enum.DEFAULT, *[w for w in enum if w is not enum.DEFAULT]]
    return [w.url.rsplit("/", 1)[-1] for w in ordered]


def find_imagenet_weights(name: str, weights: str | Path | None) -> Path:
    """The state-dict file to load: `weights` itself when it is a file, else the standard
    torchvision file name looked up in `weights` (a torch hub cache dir; default
    torch.hub.get_dir()) and its `checkpoints/` folder. Never downloads."""
    if weights is not None and Path(weights).expanduser().is_file():
        return Path(weights).expanduser()
    hub = Path(weights).expanduser() if weights is not None else Path(torch.hub.get_dir())
    names = imagenet_filenames(name)
    for filename in names:
        for candidate in (hub / "checkpoints" / filename, hub / filename):
            if candidate.is_file():
                return candidate
    expected = hub / "checkpoints" / names[0]
    raise ConfigError(
        f"ImageNet weights for {name} not found: {expected} does not exist (no download at run "
        f"time); set train.weights to a .pth state-dict file or to a torch hub cache dir holding "
        f"checkpoints/{names[0]}"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth file (plain, or wrapped under 'state_dict' / 'model')."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable PyTorch state-dict file ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: expected a state dict of tensors")
    return dict(obj)


def adapt_state_dict(
    state: Mapping[str, torch.Tensor], name: str, in_channels: int
) -> dict[str, torch.Tensor]:
    """A torchvision ImageNet state dict for our feature extractor: classifier keys dropped, and
    for grey input the first convolution's RGB filters summed into one (the response to a grey
    image replicated on R, G and B is unchanged)."""
    out = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    key = f"{FIRST_CONV[name]}.weight"
    if key in out and out[key].shape[1] != in_channels:
        weight = out[key]
        if in_channels == 1:
            out[key] = weight.sum(dim=1, keepdim=True)
        else:
            raise ConfigError(
                f"cannot adapt {weight.shape[1]}-channel {name} weights to {in_channels} channels"
            )
    return out


def load_backbone_state(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Strictly load `state` into `backbone`; a mismatch is a one-line ConfigError."""
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"{source}: weights do not fit the backbone ({first})") from None
    problems = [*result.missing_keys, *result.unexpected_keys]
    if problems:
        raise ConfigError(
            f"{source}: weights do not fit the backbone ({len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected keys, e.g. {problems[0]!r})"
        )
