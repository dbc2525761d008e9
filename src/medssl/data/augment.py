"""Batched augmentations that run on the training device.

Images arrive as uint8 [B, H, W] or [B, H, W, C] (from the image cache) and leave as float32
[B, C, H, W] in [0, 1]. Geometry (random resized crop, flips, rotation) is one `affine_grid` +
`grid_sample` for the whole batch; intensity jitter, noise and cutout are elementwise. All
randomness comes from the `generator` the engine owns (checkpointed, so a resumed run draws the same
numbers). A method asks for several views of the same images (PICA, FixMatch weak/strong) with
`views()`, SimCLR's (paper 003 §III.C: crop, flip, blur, noise) with `simclr_views()`; a detection
method passes `return_theta=True` and maps its boxes with `warp_points`. FixMatch's strong view is
`rand_augment` (RandAugment ops + Cutout, batched).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

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
    blur: float = 0.0  # probability of a Gaussian blur with σ ~ U(blur_sigma) pixels
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # SimCLR's range (Chen et al. 2020)

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

# RandAugment's op pool for grey ultrasound (no colour ops); intensity ops run in this order.
_OPS = (
    "identity", "autocontrast", "brightness", "contrast", "gamma", "sharpness", "solarize",
    "posterize", "speckle", "rotate", "shear_x", "shear_y", "translate_x", "translate_y",
)  # fmt: skip
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


@dataclass(frozen=True)
class RandAugmentSpec:
    """RandAugment-style strong view (FixMatch, Sohn et al. 2020 §2.3; paper 000 §2.3.1) adapted to
    grey ultrasound: FixMatch (Sohn et al. 2020) RandAugment + Cutout, without colour ops. Each
    image draws `ops` ops from `_OPS` (or `only`) with replacement, each with its own magnitude
    U(0, magnitude) and a random sign; ranges at magnitude 1: brightness ±0.4, contrast ×(1 ± 0.8),
    gamma exp(±0.7), sharpness ±0.9 (blend with a 3×3 box blur: − blurs, + sharpens), posterize to
    8 − 4 bits, solarize above 1 − 0.9, speckle x·(1 + 0.4·n), rotate ±30°, shear ±0.3, translate
    ±0.3 of the side; identity and autocontrast (per-image min-max stretch) are magnitude-free
    (autocontrast is skipped at magnitude 0, so magnitude 0 is a no-op). An op drawn twice for one
    image runs once with the summed magnitude (clipped to ±1). Only `base`'s geometry (crop, flips,
    rotation) is used; it and the geometric ops make one affine warp. Then Cutout: one zeroed
    square."""

    ops: int = 2  # ops drawn per image (with replacement), RandAugment's N
    magnitude: float = 1.0  # max in [0, 1]; each chosen op draws U(0, magnitude) per image
    cutout: float = 0.5  # side of one zeroed square as a share of the image side (0: none)
    base: AugmentSpec = AugmentSpec(scale=(0.7, 1.0), hflip=0.5)
    only: tuple[str, ...] | None = None  # restrict the op pool to these names of `_OPS` (tests)

    def __post_init__(self) -> None:
        if unknown := set(self.only or ()) - set(_OPS):
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; known: {_OPS}")


RAND_AUGMENT = RandAugmentSpec()


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
    if spec.blur:
        out = gaussian_blur(out, spec.blur, spec.blur_sigma, generator)
    out = out.clamp_(0.0, 1.0)
    return (out, theta) if return_theta else out


def gaussian_blur(
    x: torch.Tensor,
    p: float,
    sigma: tuple[float, float],
    generator: torch.Generator,
    *,
    kernel_size: int | None = None,
) -> torch.Tensor:
    """Blur each image of [B, C, H, W] with probability p, σ ~ U(sigma) pixels, a separable
    Gaussian kernel of radius ⌈3·max σ⌉, or of `kernel_size` taps (odd; paper 003 §III.C: 21),
    reflected borders; the radius is clipped to the image side − 1 on small images (a 21-tap
    kernel on an 8 px image has 15 taps). Same memory format."""
    n, c, h, w = x.shape
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    s = _uniform(generator, n, *sigma).to(x.device, x.dtype)
    apply = (_uniform(generator, n, 0.0, 1.0) < p).to(x.device)
    radius = math.ceil(3 * sigma[1]) if kernel_size is None else kernel_size // 2
    radius = min(radius, h - 1, w - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None] / s[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n·c, 2r + 1]
    y = F.pad(x.contiguous().reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c).reshape(n, c, h, w)
    out = torch.where(apply.view(n, 1, 1, 1), y, x)
    if x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def rand_augment(
    x: torch.Tensor, spec: RandAugmentSpec, generator: torch.Generator
) -> torch.Tensor:
    """float [B, C, H, W] in [0, 1] → same shape, in [0, 1], same memory format."""
    n, dev, pool = x.shape[0], generator.device, spec.only or _OPS
    op = torch.randint(len(pool), (n, spec.ops), generator=generator, device=dev)
    if spec.only is not None:  # positions in `only` → positions in _OPS
        which = torch.tensor([_OPS.index(o) for o in pool]).to(dev, non_blocking=True)
        op = which[op]
    mag = torch.rand(n, spec.ops, generator=generator, device=dev) * spec.magnitude
    sign = torch.randint(2, (n, spec.ops), generator=generator, device=dev) * 2 - 1
    op, mag, sign = op.to(x.device), mag.to(x.device, x.dtype), sign.to(x.device, x.dtype)

    def val(name: str, signed: bool = True) -> torch.Tensor:  # [n] summed magnitude, 0 if unchosen
        return ((mag * sign if signed else mag) * (op == _OPS.index(name))).sum(1).clamp(-1, 1)

    out = x
    if spec.base.geometric or any(g in pool for g in _GEOMETRIC):
        base = random_theta(spec.base, n, generator, x.dtype).to(x.device)
        angle, sx, sy = val("rotate") * (math.pi / 6), 0.3 * val("shear_x"), 0.3 * val("shear_y")
        cos, sin, one = torch.cos(angle), torch.sin(angle), torch.ones_like(angle)
        rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        shear = torch.stack([torch.stack([one + sx * sy, sx], 1), torch.stack([sy, one], 1)], 1)
        shift = 0.6 * torch.stack([val("translate_x"), val("translate_y")], 1).unsqueeze(2)
        lin = base[:, :, :2]  # output → base-input coordinates, then base → input
        theta = torch.cat([lin @ rot @ shear, lin @ shift + base[:, :, 2:]], dim=2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def stretch(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # per-image min-max stretch
        lo, hi = y.amin((1, 2, 3), keepdim=True), y.amax((1, 2, 3), keepdim=True)
        return torch.where((hi > lo) & (v > 0), (y - lo) / (hi - lo).clamp(min=1e-12), y)

    def posterize(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # keep 8 - 4 v bits
        step = 2 ** torch.round(4 * v)
        return torch.where(step > 1, torch.floor(torch.round(y * 255) / step) * step / 255, y)

    def speckle(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(y.shape, generator=generator, device=dev, dtype=y.dtype)
        return y * (1 + 0.4 * v * noise.to(y.device))

    blur = partial(F.avg_pool2d, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    intensity: dict[str, tuple[bool, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
        "autocontrast": (False, stretch),
        "brightness": (True, lambda y, v: y + 0.4 * v),
        "contrast": (True, lambda y, v: torch.lerp(y.mean((1, 2, 3), True), y, 1 + 0.8 * v)),
        "gamma": (True, lambda y, v: y ** torch.exp(0.7 * v)),
        "sharpness": (True, lambda y, v: torch.lerp(blur(y), y, 1 + 0.9 * v)),
        "solarize": (False, lambda y, v: torch.where(y > 1 - 0.9 * v, 1 - y, y)),
        "posterize": (False, posterize),
        "speckle": (False, speckle),
    }
    for name, (signed, fn) in intensity.items():  # fixed order, each on the images that chose it
        if name in pool:
            v = val(name, signed).view(n, 1, 1, 1)
            mask = (op == _OPS.index(name)).any(1).view(n, 1, 1, 1)
            out = torch.where(mask, fn(out, v), out).clamp(0.0, 1.0)
    out = out.clamp(0.0, 1.0)
    if spec.cutout > 0:
        out = out * (1 - _cutout_mask(out, spec.cutout, generator))
    last = x.is_contiguous(memory_format=torch.channels_last)
    return out.contiguous(memory_format=torch.channels_last if last else torch.contiguous_format)


def _cutout_mask(x: torch.Tensor, side: float, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    centre = torch.rand(n, 2, generator=generator, device=generator.device).to(x.device)
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    in_y = (ys.view(1, h) - centre[:, :1]).abs() < side / 2
    in_x = (xs.view(1, w) - centre[:, 1:]).abs() < side / 2
    return (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1).to(x.dtype)


def relative_noise(
    x: torch.Tensor, p: float, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Paper 003 §III.C: add Gaussian noise to each image of [B, C, H, W] with probability p,
    σ ~ U(scale) × the image's mean pixel value (its own brightness: a dark radiograph gets
    little noise), then clamp to [0, 1]. Draws the same numbers whatever p; same memory
    format."""
    n = x.shape[0]
    factor = _uniform(generator, n, *scale).to(x.device, x.dtype)
    apply = (_uniform(generator, n, 0.0, 1.0) < p).to(x.device)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    sigma = factor * x.mean(dim=(1, 2, 3)) * apply
    return (x + sigma.view(n, 1, 1, 1) * noise.to(x.device)).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class SimclrSpec:
    """SimCLR's views as paper 003 §III.C lists them, in this order:

    1. random resized crop of 0.2-1 of the image area, aspect ratio 3/4-4/3 (SimCLR's; the paper
       gives the scale only), resized back to the input side (one batched affine warp, bilinear:
       `random_theta` draws the ratio within what fits, so every crop lies inside the image);
    2. horizontal flip with probability 0.5;
    3. Gaussian blur, σ ~ U(0.1, 2) px, 21 taps (clipped on small images), with probability
       `blur` (default 0.5: "a random Gaussian blur", SimCLR applies its blur to half the
       views);
    4. Gaussian noise, σ ~ U(0.125, 0.25) × the view's mean pixel value, with probability
       `noise` (default 1: "a random amount of Gaussian noise", the amount is what is random),
       clamped to [0, 1].

    The histogram normalisation the paper applies to every image is the model's input transform
    (`input_norm: histogram`, medssl.models.classifier.HistogramEqualize), so it runs after
    these and at inference too."""

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 21
    noise: float = 1.0
    noise_scale: tuple[float, float] = (0.125, 0.25)  # σ as a share of the mean pixel value


SIMCLR = SimclrSpec()


def simclr_view(x: torch.Tensor, spec: SimclrSpec, generator: torch.Generator) -> torch.Tensor:
    """One augmented view of float images [B, C, H, W] in [0, 1] (see `SimclrSpec`); same
    shape, in [0, 1], same memory format."""
    geometry = AugmentSpec(scale=spec.scale, ratio=spec.ratio, hflip=spec.hflip)
    out: torch.Tensor = augment(x, geometry, generator)  # type: ignore[assignment]
    if spec.blur > 0:
        out = gaussian_blur(
            out, spec.blur, spec.blur_sigma, generator, kernel_size=spec.blur_kernel
        )
    if spec.noise > 0:
        out = relative_noise(out, spec.noise, spec.noise_scale, generator)
    return out


def simclr_views(
    images: torch.Tensor,
    generator: torch.Generator,
    spec: SimclrSpec = SIMCLR,
    *,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's two views (paper 003 §III.C, `SimclrSpec`) of a batch, drawn independently from
    `generator` (reproducible from its seed): uint8 [B, H, W] / [B, H, W, C] from the image cache
    (converted, `channels_last` as asked) or float [B, C, H, W] in [0, 1] (used as it is) → two
    float32 [B, C, H, W] in [0, 1]."""
    x = to_float(images, channels_last) if images.dtype == torch.uint8 else images
    return simclr_view(x, spec, generator), simclr_view(x, spec, generator)


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
