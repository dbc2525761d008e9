"""Batched augmentations that run on the training device.

Images arrive as uint8 [B, H, W] or [B, H, W, C] (from the image cache) and leave as float32
[B, C, H, W] in [0, 1]. Geometry (random resized crop, flips, rotation) is one `affine_grid` +
`grid_sample` for the whole batch; intensity jitter, noise and cutout are elementwise. All
randomness comes from the `generator` the engine owns (checkpointed, so a resumed run draws the same
numbers). A method asks for several views of the same images (PICA, FixMatch weak/strong, SimCLR)
with `views()`; a detection method passes `return_theta=True` and maps its boxes with
`warp_points`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    """One augmentation recipe. The defaults do nothing."""

    scale: tuple[float, float] = (1.0, 1.0)  # random resized crop: share of the image area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio range
    hflip: float = 0.0  # probability of a horizontal flip
    vflip: float = 0.0
    rotate: float = 0.0  # max rotation, degrees
    brightness: float = 0.0  # additive offset in U(-b, b)
    contrast: float = 0.0  # factor in U(1 - c, 1 + c) around the image mean
    noise: float = 0.0  # std of additive Gaussian noise
    cutout: float = 0.0  # side of one zeroed square, as a share of the image side

    @property
    def geometric(self) -> bool:
        return self.scale != (1.0, 1.0) or self.hflip or self.vflip or self.rotate > 0


NONE = AugmentSpec()
# Ultrasound-friendly defaults (paper 000 does not list its augmentations, §3.2).
WEAK = AugmentSpec(scale=(0.7, 1.0), hflip=0.5, brightness=0.1, contrast=0.1)
STRONG = AugmentSpec(
    scale=(0.35, 1.0),
    hflip=0.5,
    rotate=15.0,
    brightness=0.3,
    contrast=0.3,
    noise=0.03,
    cutout=0.3,
)
# Paper 001 §3: random rotation and resized crops with random scale and aspect ratio, for
# training and for the clustering features (the paper gives no ranges: these are ours).
ROTATE_CROP = AugmentSpec(scale=(0.5, 1.0), rotate=20.0)


def to_float(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, H, W] / [B, H, W, C] → float32 [B, C, H, W] in [0, 1]."""
    x = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    x = x.float().div_(255.0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device) * (high - low) + low


def random_theta(
    spec: AugmentSpec, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """[n, 2, 3] affine maps from output to input coordinates (affine_grid's convention)."""
    area = _uniform(generator, n, *spec.scale)
    # aspect ratio within spec.ratio and within what fits: w = sqrt(a r) <= 1, h = sqrt(a / r) <= 1
    low = torch.clamp(torch.log(area), min=math.log(spec.ratio[0]))
    high = torch.clamp(-torch.log(area), max=math.log(spec.ratio[1]))
    ratio = torch.exp(low + (high - low).clamp(min=0) * _uniform(generator, n, 0.0, 1.0))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = _uniform(generator, n, -1.0, 1.0) * (1 - w)
    cy = _uniform(generator, n, -1.0, 1.0) * (1 - h)
    angle = _uniform(generator, n, -spec.rotate, spec.rotate) * (math.pi / 180)
    flip_x = torch.where(_uniform(generator, n, 0.0, 1.0) < spec.hflip, -1.0, 1.0)
    flip_y = torch.where(_uniform(generator, n, 0.0, 1.0) < spec.vflip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([flip_x * w * cos, -flip_y * h * sin, cx], dim=1),
            torch.stack([flip_x * w * sin, flip_y * h * cos, cy], dim=1),
        ],
        dim=1,
    )
    return theta.to(dtype)


def warp_points(points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Map points [B, K, 2] in the input's normalised coordinates ([-1, 1], x then y) to the
    augmented image's coordinates (for boxes and keypoints of detection targets)."""
    a, t = theta[:, :, :2], theta[:, :, 2:]
    return torch.linalg.solve(a, (points.transpose(1, 2) - t)).transpose(1, 2)


def augment(
    x: torch.Tensor,
    spec: AugmentSpec,
    generator: torch.Generator,
    *,
    size: int | None = None,
    return_theta: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Augment float images [B, C, H, W] in [0, 1]; output [B, C, size, size] in [0, 1]."""
    n = x.shape[0]
    size = size or x.shape[-1]
    theta = None
    if spec.geometric or size != x.shape[-1]:
        theta = random_theta(spec, n, generator, x.dtype)
        grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
    else:
        out = x.clone()
    if spec.contrast or spec.brightness:
        c = _uniform(generator, n, 1 - spec.contrast, 1 + spec.contrast).view(n, 1, 1, 1)
        b = _uniform(generator, n, -spec.brightness, spec.brightness).view(n, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * c + mean + b
    if spec.noise:
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        out = out + spec.noise * noise
    if spec.cutout:
        out = out * (1 - _cutout_mask(out, spec.cutout, generator))
    out = out.clamp_(0.0, 1.0)
    return (out, theta) if return_theta else out


def _cutout_mask(x: torch.Tensor, side: float, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    centre = torch.rand(n, 2, generator=generator, device=generator.device).to(x.device)
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    in_y = (ys.view(1, h) - centre[:, :1]).abs() < side / 2
    in_x = (xs.view(1, w) - centre[:, 1:]).abs() < side / 2
    return (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1).to(x.dtype)


def views(
    images: torch.Tensor,
    specs: list[AugmentSpec],
    generator: torch.Generator,
    *,
    channels_last: bool = False,
    size: int | None = None,
) -> list[torch.Tensor]:
    """Several augmented views of the same uint8 images (converted to float once)."""
    x = to_float(images, channels_last)
    return [augment(x, spec, generator, size=size) for spec in specs]  # type: ignore[misc]
