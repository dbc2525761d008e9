"""Synthetic abdominal B-mode ultrasound frames: the look of paper 000's PACS archive.

Paper 000 §3.1: grey-scale (B-mode) freeze frames of abdominal exams from several vendors, each
image tagged with the organs it shows (liver, gallbladder, kidney, pancreas, spleen, bladder) or
`other` when none is visible; Fig. 7 shows examples. Everything is drawn in normalised coordinates
on a pixel grid with vectorised numpy, so one renderer serves 32, 64 and 128 px; all randomness
comes from the caller's generator, so the same generator state gives byte-identical images.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["ORGANS", "ScannerStyle", "fan_mask", "render_image"]

# Paper 000 §3.1: the six organs of interest; an image showing none of them is labelled `other`.
ORGANS: tuple[str, ...] = ("liver", "gallbladder", "kidney", "pancreas", "spleen", "bladder")

_F = np.float32


@dataclass(frozen=True)
class ScannerStyle:
    """Acquisition settings shared by all images of one exam (scanner, preset, operator).

    Paper 000 §3.1: the archive is multi-vendor, so brightness, contrast, field of view and
    speckle differ between exams.
    """

    gain: float  # display offset: larger is brighter (≈ 0.6 … 0.85)
    contrast: float  # display scale of log-amplitude: larger is more contrast (≈ 0.2 … 0.34)
    attenuation: float  # signal loss over the fan depth after time-gain compensation (≈ 0.2 … 1.2)
    sector_angle: float  # full opening angle of the fan in radians
    speckle: float  # strength of the multiplicative speckle (≈ 0.6 … 1.1)
    apex_height: float  # probe apex above the image top: small = sector, large = convex probe
    depth: float  # radial extent of the fan, in image widths
    tissue: float  # echogenicity of unremarkable background tissue (≈ 0.3 … 0.45)
    smoothing: float  # 0 … 1: how much the speckle is smoothed (scanner post-processing)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> ScannerStyle:
        """Draw one exam's settings."""
        apex = float(rng.uniform(0.04, 0.3))
        depth = float(rng.uniform(0.82, 0.93))
        # keep the fan inside the image: the wider the probe, the narrower the angle
        max_half = math.asin(min(0.99, 0.54 / (apex + 0.03 + depth)))
        half = float(rng.uniform(0.85, 1.0)) * min(max_half, math.radians(40))
        return cls(
            gain=float(rng.uniform(0.6, 0.85)),
            contrast=float(rng.uniform(0.2, 0.34)),
            attenuation=float(rng.uniform(0.2, 1.2)),
            sector_angle=2.0 * half,
            speckle=float(rng.uniform(0.6, 1.1)),
            apex_height=apex,
            depth=depth,
            tissue=float(rng.uniform(0.3, 0.45)),
            smoothing=float(rng.uniform(0.2, 1.0)),
        )


@dataclass(frozen=True)
class _Geometry:
    """Pixel grid and fan geometry for one (style, size); cached, read-only."""

    size: int
    x: np.ndarray  # (n, n) pixel centres, image widths, 0 … 1 left to right
    y: np.ndarray  # (n, n) 0 … 1 top to bottom
    r: np.ndarray  # distance to the apex
    theta: np.ndarray  # angle from the beam axis (radians, positive to the right)
    mask: np.ndarray  # (n, n) bool, inside the fan
    gain_map: np.ndarray  # depth attenuation (after TGC), 1 at the top of the fan
    apex_y: float
    r0: float
    r1: float
    half: float


@lru_cache(maxsize=16)
def _geometry(style: ScannerStyle, size: int) -> _Geometry:
    coords = ((np.arange(size, dtype=_F) + _F(0.5)) / _F(size)).astype(_F)
    x, y = np.meshgrid(coords, coords)
    apex_y = -style.apex_height
    r0 = style.apex_height + 0.03
    r1 = r0 + style.depth
    half = style.sector_angle / 2.0
    dx, dy = x - _F(0.5), y - _F(apex_y)
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dx, dy)
    mask = (r >= r0) & (r <= r1) & (np.abs(theta) <= half)
    depth = np.clip((r - r0) / (r1 - r0), 0.0, 1.0)
    gain_map = np.exp(-style.attenuation * depth).astype(_F)
    for arr in (x, y, r, theta, mask, gain_map):
        arr.flags.writeable = False
    return _Geometry(size, x, y, r, theta, mask, gain_map, apex_y, r0, r1, half)


@lru_cache(maxsize=16)
def _upsampler(size: int, knots: int) -> np.ndarray:
    """(size, knots) row-normalised Gaussian interpolation weights for smooth random fields."""
    pos = (np.arange(size) + 0.5) / size
    centres = np.linspace(-0.1, 1.1, knots)
    w = np.exp(-(((pos[:, None] - centres[None, :]) * (knots - 1) / 1.2) ** 2))
    w = (w / w.sum(axis=1, keepdims=True)).astype(_F)
    w.flags.writeable = False
    return w


def fan_mask(style: ScannerStyle, size: int) -> np.ndarray:
    """Boolean (size, size) mask of the sector that `render_image` draws into for `style`."""
    return _geometry(style, size).mask.copy()


class _Canvas:
    """Echogenicity, speckle strength and beam (shadow / enhancement) maps being drawn."""

    def __init__(self, geo: _Geometry, tissue: float) -> None:
        n = geo.size
        self.g = geo
        self.n = n
        self.echo = np.full((n, n), tissue, dtype=_F)
        self.tex = np.ones((n, n), dtype=_F)
        self.beam = np.ones((n, n), dtype=_F)

    def window(
        self, cx: float, cy: float, rx: float, ry: float | None = None
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Sub-grid around (cx, cy) with half-extents rx, ry (image widths); None if off-image."""
        ry = rx if ry is None else ry
        n = self.n
        c0, c1 = max(0, int((cx - rx) * n)), min(n, int((cx + rx) * n) + 2)
        r0, r1 = max(0, int((cy - ry) * n)), min(n, int((cy + ry) * n) + 2)
        if c0 >= c1 or r0 >= r1:
            return None
        sl = (slice(r0, r1), slice(c0, c1))
        return sl, self.g.x[sl], self.g.y[sl]

    def frame(
        self, cx: float, cy: float, ang: float, rx: float, ry: float | None = None
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """`window`'s slice and its grid in the frame of a shape centred at (cx, cy) and rotated
        by `ang` (`_local`'s u, v); None if off-image."""
        win = self.window(cx, cy, rx, ry)
        if win is None:
            return None
        sl, x, y = win
        return sl, *_local(x, y, cx, cy, ang)

    def paint(
        self,
        sl: tuple[slice, slice],
        alpha: np.ndarray,
        value: float | np.ndarray,
        tex: float | None = None,
    ) -> None:
        """Blend `value` into the echo map with opacity `alpha` (and the speckle strength)."""
        e = self.echo[sl]
        e += alpha * (value - e)
        if tex is not None:
            t = self.tex[sl]
            t += alpha * (_F(tex) - t)

    def shadow(self, cx: float, cy: float, half_width: float, factor: float) -> None:
        """Scale the signal behind (cx, cy) along the beam: <1 shadow, >1 enhancement."""
        g = self.g
        dx, dy = cx - 0.5, cy - g.apex_y
        rc = math.hypot(dx, dy)
        tc = math.atan2(dx, dy)
        dt = max(half_width / rc, 1.0 / self.n / rc)
        row0 = max(0, int(cy * self.n))
        if row0 >= self.n:
            return
        # columns the diverging beam can reach between (cx, cy) and the bottom of the image
        below = 1.0 - g.apex_y
        lo = min(cx - half_width, 0.5 + below * math.tan(max(tc - dt, -1.5)))
        hi = max(cx + half_width, 0.5 + below * math.tan(min(tc + dt, 1.5)))
        c0, c1 = max(0, int(lo * self.n) - 1), min(self.n, int(hi * self.n) + 2)
        if c0 >= c1:
            return
        sl = (slice(row0, self.n), slice(c0, c1))
        lateral = np.clip(_F(1.5) - np.abs(g.theta[sl] - _F(tc)) * _F(1.5 / dt), 0.0, 1.0)
        radial = np.clip((g.r[sl] - _F(rc)) * _F(self.n / 3.0), 0.0, 1.0)
        b = self.beam[sl]
        b *= 1.0 + _F(factor - 1.0) * lateral * radial


def _soft(f: np.ndarray, k: float) -> np.ndarray:
    """Opacity of an implicit shape f < 1, with an edge about 1/k wide in f units."""
    return np.clip((1.0 - f) * _F(k), 0.0, 1.0)


def _local(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, ang: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame centred at (cx, cy) rotated by `ang` (u: long axis)."""
    c, s = _F(math.cos(ang)), _F(math.sin(ang))
    dx, dy = x - _F(cx), y - _F(cy)
    return dx * c + dy * s, dy * c - dx * s


def _edge(size: int, extent: float, power: float = 2.0) -> float:
    """Sharpness for `_soft`: a ~1.5 px edge on a shape of half-axis `extent` whose implicit
    function grows like (r / extent) ** power; at least 2 so small shapes stay opaque inside."""
    return max(2.0, size * extent / (1.5 * power))


def _fan_point(g: _Geometry, depth: float, lateral: float) -> tuple[float, float]:
    """Image coordinates of a point given as depth 0…1 and lateral -1…1 inside the fan."""
    r = g.r0 + depth * (g.r1 - g.r0)
    th = lateral * g.half
    return 0.5 + r * math.sin(th), g.apex_y + r * math.cos(th)


def _fan_coords(g: _Geometry, cx: float, cy: float) -> tuple[float, float]:
    """Inverse of `_fan_point`."""
    dx, dy = cx - 0.5, cy - g.apex_y
    r = math.hypot(dx, dy)
    return (r - g.r0) / (g.r1 - g.r0), math.atan2(dx, dy) / g.half


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


@dataclass(frozen=True)
class _Placed:
    """Where an organ was drawn: centre, half-axes and rotation (image widths, radians)."""

    cx: float
    cy: float
    a: float
    b: float
    ang: float


# --- tissue and artefacts -------------------------------------------------------------------


def _background(cv: _Canvas, rng: np.random.Generator, busy: bool) -> None:
    """Heterogeneous soft tissue plus the bright near-field layers (skin, fat, fascia)."""
    n, g = cv.n, cv.g
    knots = 7 if busy else 5
    w = _upsampler(n, knots)
    field = w @ rng.standard_normal((knots, knots)).astype(_F) @ w.T
    amp = _u(rng, 0.35, 0.6) if busy else _u(rng, 0.2, 0.4)
    cv.echo *= np.exp(field * _F(amp))
    # subcutaneous layers: a few bright arcs in the first ~12 % of depth
    rows = slice(0, max(2, int(0.3 * n)))
    rr = g.r[rows]
    layer = np.zeros_like(rr)
    for _ in range(int(rng.integers(2, 5))):
        rk = g.r0 + _u(rng, 0.005, 0.13)
        wk = _u(rng, 0.004, 0.012) + 0.5 / n
        layer += _F(_u(rng, 0.2, 0.8)) * np.exp(-(((rr - _F(rk)) * _F(1.0 / wk)) ** 2))
    cv.echo[rows] += layer


def _bowel_loop(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> None:
    """A bowel loop: bright wall; gas (bright centre, dirty shadow), fluid or collapsed."""
    rad = _u(rng, 0.03, 0.08)
    ecc = _u(rng, 0.6, 1.0)
    ang = _u(rng, 0.0, math.pi)
    win = cv.frame(cx, cy, ang, rad * 1.4)
    if win is None:
        return
    sl, u, v = win
    f = (u * _F(1.0 / rad)) ** 2 + (v * _F(1.0 / (rad * ecc))) ** 2
    k = _edge(cv.n, rad * ecc)
    cv.paint(sl, _soft(f * _F(1 / 1.3**2), k), _u(rng, 0.7, 1.0), tex=1.2)
    kind = rng.random()
    if kind < 0.45:  # gas: bright echogenic content, posterior dirty shadow
        cv.paint(sl, _soft(f * _F(1.6), k), _u(rng, 0.9, 1.3), tex=1.4)
        cv.shadow(cx, cy, rad * 0.8, _u(rng, 0.15, 0.45))
    elif kind < 0.75:  # fluid-filled: dark lumen
        cv.paint(sl, _soft(f, k), _u(rng, 0.05, 0.2))
        cv.shadow(cx, cy, rad * 0.7, _u(rng, 1.1, 1.35))
    else:  # collapsed "target": dark muscular ring, bright mucosa
        cv.paint(sl, _soft(f, k), _u(rng, 0.15, 0.3))
        cv.paint(sl, _soft(f * _F(4.0), k), _u(rng, 0.7, 1.0))


def _tube(
    cv: _Canvas,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    ang: float,
    length: float,
    width: float,
    level: float,
    wall: float = 0.0,
    within: _Placed | None = None,
) -> None:
    """A dark vessel segment centred at (cx, cy), optionally clipped to an ellipse `within`."""
    curv = _u(rng, -2.0, 2.0)
    win = cv.frame(cx, cy, ang, length / 2 + width * 2 + abs(curv) * length**2 / 4)
    if win is None:
        return
    sl, u, v = win
    s = np.abs(v - _F(curv) * u * u)
    along = np.clip((_F(length / 2) - np.abs(u)) * _F(cv.n / 2.0), 0.0, 1.0)
    k = cv.n / 1.5
    lumen = np.clip((_F(width) - s) * _F(k), 0.0, 1.0) * along
    if within is not None:
        wu, wv = _local(cv.g.x[sl], cv.g.y[sl], within.cx, within.cy, within.ang)
        inside = _soft((wu * _F(1 / within.a)) ** 2 + (wv * _F(1 / within.b)) ** 2, 6.0)
        lumen *= inside
    if wall > 0:
        ring = np.clip((_F(width * 1.9) - s) * _F(k), 0.0, 1.0) * along
        if within is not None:
            ring *= inside
        cv.paint(sl, ring, wall)
    cv.paint(sl, lumen, level, tex=0.6)


def _rib(cv: _Canvas, rng: np.random.Generator) -> None:
    """A rib: short bright arc near the top with a clean acoustic shadow below."""
    g = cv.g
    cx, cy = _fan_point(g, _u(rng, 0.06, 0.2), _u(rng, -0.9, 0.9))
    half_w = _u(rng, 0.03, 0.06)
    win = cv.window(cx, cy, half_w * 1.2, 0.03)
    if win is not None:
        sl, x, y = win
        u, v = _local(x, y, cx, cy, _u(rng, -0.3, 0.3))
        f = (u * _F(1 / half_w)) ** 2 + (v * _F(1 / 0.012)) ** 2
        cv.paint(sl, _soft(f, 3.0), _u(rng, 0.9, 1.3))
    cv.shadow(cx, cy, half_w, _u(rng, 0.08, 0.3))


def _other_view(cv: _Canvas, rng: np.random.Generator) -> None:
    """A view without organs of interest: bowel loops, muscle, large vessels (paper 000 §3.1)."""
    g = cv.g
    if rng.random() < 0.45:  # a homogeneous muscle / mesentery region (a liver-like distractor)
        cx, cy = _fan_point(g, _u(rng, 0.2, 0.8), _u(rng, -0.7, 0.7))
        a, b = _u(rng, 0.12, 0.35), _u(rng, 0.06, 0.18)
        ang = _u(rng, -0.8, 0.8)
        win = cv.frame(cx, cy, ang, max(a, b) * 1.05)
        if win is not None:
            sl, u, v = win
            f = (u * _F(1 / a)) ** 2 + (v * _F(1 / b)) ** 2
            cv.paint(sl, _soft(f, _edge(cv.n, b)), _u(rng, 0.25, 0.65), tex=_u(rng, 0.9, 1.2))
    if rng.random() < 0.45:  # aorta / IVC, long axis or cross-section
        cx, cy = _fan_point(g, _u(rng, 0.45, 0.85), _u(rng, -0.5, 0.5))
        if rng.random() < 0.6:
            _tube(
                cv,
                rng,
                cx,
                cy,
                _u(rng, -0.3, 0.3),
                _u(rng, 0.25, 0.6),
                _u(rng, 0.015, 0.035),
                _u(rng, 0.03, 0.12),
                wall=_u(rng, 0.5, 0.9),
            )
        else:
            rad = _u(rng, 0.02, 0.045)
            win = cv.window(cx, cy, rad * 1.3)
            if win is not None:
                sl, x, y = win
                f = ((x - _F(cx)) ** 2 + (y - _F(cy)) ** 2) * _F(1 / rad**2)
                k = _edge(cv.n, rad)
                cv.paint(sl, _soft(f * _F(1 / 1.25**2), k), _u(rng, 0.6, 0.9))
                cv.paint(sl, _soft(f, k), _u(rng, 0.03, 0.1))
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = _fan_point(g, _u(rng, 0.1, 0.85), _u(rng, -0.85, 0.85))
        _bowel_loop(cv, rng, cx, cy)


# --- organs (paper 000 §3.1, Fig. 7) --------------------------------------------------------


def _liver(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> _Placed:
    """Large homogeneous mid-grey region, diaphragm line on its deep side, dark vessels."""
    a, b = _u(rng, 0.28, 0.48), _u(rng, 0.18, 0.32)
    ang = _u(rng, -0.5, 0.45)
    p = _Placed(cx, cy, a, b, ang)
    win = cv.frame(cx, cy, ang, max(a, b) * 1.25)
    if win is None:
        return p
    sl, u, v = win
    f = (u * _F(1 / a)) ** 2 + (v * _F(1 / b)) ** 2
    f *= 1.0 + _F(_u(rng, 0.0, 0.12)) * np.sin(u * _F(_u(rng, 5, 12)) + _F(_u(rng, 0, 6.3)))
    k = _edge(cv.n, b)
    level = _u(rng, 0.4, 0.75)
    alpha = _soft(f, k)
    # mild fatty / coarse heterogeneity inside the liver
    cv.paint(sl, alpha, level * (1.0 + _F(_u(rng, -0.15, 0.15)) * v * _F(1 / b)), tex=0.95)
    if rng.random() < 0.6:  # diaphragm: bright curved line along the deep boundary
        rim = np.clip(1.0 - np.abs(f - _F(1.03)) * _F(max(0.7 * k, 5.0)), 0.0, 1.0) * (v > 0)
        cv.echo[sl] += rim * _F(_u(rng, 0.5, 1.0))
    for _ in range(int(rng.integers(0, 5))):  # hepatic / portal veins
        t = _u(rng, 0, 2 * math.pi)
        rr = _u(rng, 0.0, 0.55)
        c, s = math.cos(ang), math.sin(ang)
        lu, lv = rr * a * math.cos(t), rr * b * math.sin(t)
        vx, vy = cx + lu * c - lv * s, cy + lu * s + lv * c
        portal = rng.random() < 0.4
        _tube(
            cv,
            rng,
            vx,
            vy,
            _u(rng, 0, math.pi),
            _u(rng, 0.04, 0.18),
            _u(rng, 0.004, 0.014) + 0.3 / cv.n,
            _u(rng, 0.05, 0.3),
            wall=_u(rng, 0.7, 1.0) if portal else 0.0,
            within=p,
        )
    return p


def _gallbladder(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> _Placed:
    """Small anechoic pear with a bright wall and posterior enhancement; sometimes a stone."""
    a = _u(rng, 0.05, 0.11)
    b = a * _u(rng, 0.4, 0.7)
    ang = _u(rng, -1.2, 1.2)
    taper = _u(rng, 0.0, 0.45)
    p = _Placed(cx, cy, a, b, ang)
    wall = min(1.5, 1.0 + 1.6 / (cv.n * b))  # a wall ~1.6 px thick
    win = cv.frame(cx, cy, ang, a * wall * 1.1 + 1.0 / cv.n)
    if win is None:
        return p
    sl, u, v = win
    bb = _F(b) * (1.0 + _F(taper / a) * u)
    f = (u * _F(1 / a)) ** 2 + (v / bb) ** 2
    k = _edge(cv.n, b)
    cv.paint(sl, _soft(f * _F(1 / wall**2), k), _u(rng, 0.6, 1.0), tex=1.2)
    cv.paint(sl, _soft(f, k), _u(rng, 0.01, 0.06), tex=0.5)
    cv.shadow(cx, cy, b * 0.8, _u(rng, 1.3, 1.9))
    if rng.random() < 0.15:  # gallstone: bright focus in the dependent part, clean shadow
        sr = _u(rng, 0.01, 0.02) + 0.5 / cv.n
        sy = cy + b * 0.55
        sw = cv.window(cx, sy, sr * 1.3)
        if sw is not None:
            ssl, sx, syy = sw
            fs = ((sx - _F(cx)) ** 2 + (syy - _F(sy)) ** 2) * _F(1 / sr**2)
            cv.paint(ssl, _soft(fs, 2.0), _u(rng, 1.0, 1.4))
        cv.shadow(cx, sy, sr, _u(rng, 0.1, 0.35))
    return p


def _kidney(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float, abnormal: bool) -> _Placed:
    """Bean with a hypoechoic cortex, bright central sinus; abnormal: cyst or dilated pelvis."""
    a = _u(rng, 0.12, 0.22)
    b = a * _u(rng, 0.42, 0.62)
    ang = _u(rng, -0.7, 0.7)
    p = _Placed(cx, cy, a, b, ang)
    win = cv.frame(cx, cy, ang, a * 1.45)
    if win is None:
        return p
    sl, u, v = win
    vb = v + _F(_u(rng, -0.25, 0.25) / a) * u * u  # bean curvature
    f = (u * _F(1 / a)) ** 2 + (vb * _F(1 / b)) ** 2
    k = _edge(cv.n, b)
    cv.paint(sl, _soft(f * _F(1 / 1.35**2), k * 0.5), _u(rng, 0.45, 0.8), tex=1.1)  # perirenal fat
    cv.paint(sl, _soft(f, k), _u(rng, 0.14, 0.32), tex=0.9)  # cortex + medulla
    sa, sb = a * _u(rng, 0.45, 0.7), b * _u(rng, 0.3, 0.5)
    fs = (u * _F(1 / sa)) ** 2 + (vb * _F(1 / sb)) ** 2
    fs *= 1.0 + _F(_u(rng, 0.1, 0.35)) * np.sin(u * _F(_u(rng, 30, 70)) + _F(_u(rng, 0, 6.3)))
    cv.paint(sl, _soft(fs, _edge(cv.n, sb)), _u(rng, 0.7, 1.05), tex=1.3)  # renal sinus fat
    # the lesion draws from its own generator, so a normal and an abnormal kidney rendered from the
    # same generator state differ only in the lesion (and its acoustic enhancement)
    lesion_rng = np.random.default_rng(int(rng.integers(2**63)))
    if abnormal:
        rng = lesion_rng
        c, s = math.cos(ang), math.sin(ang)
        if rng.random() < 0.5:  # simple cortical cyst: round, anechoic, enhancement behind
            rad = b * _u(rng, 0.45, 0.8)
            lu, lv = a * _u(rng, -0.6, 0.6), b * _u(rng, -0.5, 0.5)
            qx, qy = cx + lu * c - lv * s, cy + lu * s + lv * c
            fc = ((cv.g.x[sl] - _F(qx)) ** 2 + (cv.g.y[sl] - _F(qy)) ** 2) * _F(1 / rad**2)
            cv.paint(sl, _soft(fc, _edge(cv.n, rad)), _u(rng, 0.01, 0.05), tex=0.4)
            cv.shadow(qx, qy, rad * 0.8, _u(rng, 1.3, 1.8))
        else:  # hydronephrosis: dark dilated pelvis with calyces inside the sinus
            pa, pb = sa * _u(rng, 0.55, 0.8), sb * _u(rng, 0.6, 0.95)
            fp = (u * _F(1 / pa)) ** 2 + (vb * _F(1 / pb)) ** 2
            for _ in range(int(rng.integers(2, 4))):
                cu = sa * _u(rng, -1.0, 1.0)
                cvv = sb * _u(rng, -0.8, 0.8)
                cr = pb * _u(rng, 0.5, 0.8)
                fp = np.minimum(fp, ((u - _F(cu)) ** 2 + (vb - _F(cvv)) ** 2) * _F(1 / cr**2))
            cv.paint(sl, _soft(fp, _edge(cv.n, pb)), _u(rng, 0.01, 0.06), tex=0.4)
            cv.shadow(cx, cy, pb, _u(rng, 1.15, 1.5))
    return p


def _pancreas(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> _Placed:
    """Elongated, mildly curved band of granular tissue with the splenic vein behind it."""
    half_len = _u(rng, 0.14, 0.28)
    w0 = _u(rng, 0.03, 0.06)
    ang = _u(rng, -0.35, 0.35)
    curv = _u(rng, -1.5, 1.5)
    p = _Placed(cx, cy, half_len, w0, ang)
    win = cv.frame(cx, cy, ang, half_len * 1.1 + 0.08, half_len * 0.5 + 0.12)
    if win is None:
        return p
    sl, u, v = win
    vc = v - _F(curv) * u * u
    wu = _F(w0) * (1.2 - 0.4 * u * _F(1 / half_len))  # head (left of screen) thicker than tail
    f = (u * _F(1 / half_len)) ** 4 + (vc / wu) ** 2
    n = cv.n
    level = _u(rng, 0.55, 0.95)
    # granular texture: coarse noise inside the gland
    m = max(2, u.shape[0] // 2 + 1), max(2, u.shape[1] // 2 + 1)
    grain = rng.standard_normal(m).astype(_F).repeat(2, 0).repeat(2, 1)[: u.shape[0], : u.shape[1]]
    value = _F(level) * (1.0 + _F(_u(rng, 0.15, 0.35)) * grain)
    cv.paint(sl, _soft(f, _edge(n, w0)), value, tex=1.25)
    if rng.random() < 0.85:  # splenic vein along the posterior border
        wv = _u(rng, 0.007, 0.014) + 0.4 / n
        sv = np.abs(vc - wu - _F(wv * 1.3))
        along = np.clip((_F(half_len * 0.85) - np.abs(u)) * _F(n / 2.0), 0.0, 1.0)
        cv.paint(sl, np.clip((_F(wv) - sv) * _F(n / 1.5), 0.0, 1.0) * along, _u(rng, 0.03, 0.12))
    if rng.random() < 0.6:  # aorta / SMA cross-section deeper
        rad = _u(rng, 0.012, 0.03) + 0.5 / n
        du, dv = _u(rng, -0.3, 0.3) * half_len, w0 * 1.6 + _u(rng, 0.03, 0.08)
        fa = ((u - _F(du)) ** 2 + (v - _F(dv)) ** 2) * _F(1 / rad**2)
        ka = _edge(n, rad)
        cv.paint(sl, _soft(fa * _F(1 / 1.3**2), ka), _u(rng, 0.5, 0.9))
        cv.paint(sl, _soft(fa, ka), _u(rng, 0.02, 0.1))
    return p


def _spleen(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> _Placed:
    """Crescent of fine homogeneous tissue (slightly brighter than liver), hilum vessel."""
    a = _u(rng, 0.17, 0.3)
    b = a * _u(rng, 0.35, 0.55)
    ang = _u(rng, -0.9, 0.6)
    side = 1.0 if rng.random() < 0.5 else -1.0
    p = _Placed(cx, cy, a, b, ang)
    win = cv.frame(cx, cy, ang, a * 1.15)
    if win is None:
        return p
    sl, u, v = win
    f_out = (u * _F(1 / a)) ** 2 + (v * _F(1 / b)) ** 2
    off, bi = b * _u(rng, 0.55, 0.95), b * _u(rng, 0.7, 1.0)
    f_in = (u * _F(1 / (a * 0.9))) ** 2 + ((v - _F(side * off)) * _F(1 / bi)) ** 2
    k = _edge(cv.n, b)
    alpha = _soft(f_out, k) * (1.0 - _soft(f_in, k))
    cv.paint(sl, alpha, _u(rng, 0.5, 0.85), tex=0.85)
    if rng.random() < 0.5:  # splenic hilum vessel on the concave side
        c, s = math.cos(ang), math.sin(ang)
        lv = side * (off - bi + b * 0.05)
        hx, hy = cx - lv * s, cy + lv * c
        _tube(
            cv,
            rng,
            hx,
            hy,
            ang + _u(rng, 0.6, 2.5),
            _u(rng, 0.05, 0.12),
            _u(rng, 0.006, 0.012) + 0.3 / cv.n,
            _u(rng, 0.03, 0.12),
        )
    return p


def _bladder(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> _Placed:
    """Large anechoic rounded square with a bright wall and strong posterior enhancement."""
    a = _u(rng, 0.08, 0.26)  # a partly filled bladder can be small
    b = a * _u(rng, 0.55, 1.0)
    ang = _u(rng, -0.3, 0.3)
    power = _u(rng, 2.5, 4.0)
    cy = max(cy, cv.g.r0 + cv.g.apex_y + b + _u(rng, 0.08, 0.16))  # below the abdominal wall
    p = _Placed(cx, cy, a, b, ang)
    wall = min(1.5, 1.0 + 2.0 / (cv.n * b))  # a wall ~2 px thick
    win = cv.frame(cx, cy, ang, max(a, b) * wall * 1.1 + 1.0 / cv.n)
    if win is None:
        return p
    sl, u, v = win
    f = np.abs(u * _F(1 / a)) ** _F(power) + np.abs(v * _F(1 / b)) ** _F(power)
    k = _edge(cv.n, b, power)
    cv.paint(sl, _soft(f * _F(1 / wall**power), k), _u(rng, 0.55, 0.9), tex=1.1)
    cv.paint(sl, _soft(f, k), _u(rng, 0.005, 0.04), tex=0.4)
    cv.shadow(cx, cy, a * 0.85, _u(rng, 1.4, 2.1))
    if rng.random() < 0.35:  # prostate / uterus behind the bladder
        qy = cy + b * _u(rng, 1.05, 1.3)
        qa, qb = a * _u(rng, 0.4, 0.8), b * _u(rng, 0.3, 0.5)
        qw = cv.window(cx, qy, qa * 1.1, qb * 1.1)
        if qw is not None:
            qsl, qx, qyy = qw
            fq = ((qx - _F(cx)) * _F(1 / qa)) ** 2 + ((qyy - _F(qy)) * _F(1 / qb)) ** 2
            cv.paint(qsl, _soft(fq, _edge(cv.n, qb)), _u(rng, 0.3, 0.6))
    return p


# --- layout ---------------------------------------------------------------------------------


def _clip(lo: float, hi: float, value: float) -> float:
    return min(max(value, lo), hi)


def _layout_and_draw(
    cv: _Canvas, rng: np.random.Generator, organs: frozenset[str], kidney_abnormal: bool
) -> list[_Placed]:
    """Place co-occurring organs sensibly (liver above kidney / gallbladder / pancreas, …)."""
    g = cv.g
    placed: list[_Placed] = []
    liver = spleen = None
    liver_d = liver_l = spleen_d = spleen_l = 0.0
    if "liver" in organs:
        liver_d = _u(rng, 0.1, 0.3) if "pancreas" in organs else _u(rng, 0.18, 0.45)
        liver_l = _u(rng, -0.8, 0.1)
        liver = _liver(cv, rng, *_fan_point(g, liver_d, liver_l))
        placed.append(liver)
    if "spleen" in organs:
        lo = 0.35 if liver is not None else -0.6
        spleen_d, spleen_l = _u(rng, 0.15, 0.45), _u(rng, lo, 0.85)
        spleen = _spleen(cv, rng, *_fan_point(g, spleen_d, spleen_l))
        placed.append(spleen)
    if "pancreas" in organs:
        d = liver_d + _u(rng, 0.25, 0.4) if liver is not None else _u(rng, 0.3, 0.65)
        placed.append(
            _pancreas(cv, rng, *_fan_point(g, _clip(0.12, 0.85, d), _u(rng, -0.35, 0.35)))
        )
    if "kidney" in organs:
        if liver is not None and (spleen is None or rng.random() < 0.5):
            d, lat = liver_d + _u(rng, 0.2, 0.45), liver_l + _u(rng, 0.0, 0.7)
        elif spleen is not None:
            d, lat = spleen_d + _u(rng, 0.2, 0.4), spleen_l + _u(rng, -0.6, 0.1)
        else:
            d, lat = _u(rng, 0.25, 0.7), _u(rng, -0.6, 0.6)
        xy = _fan_point(g, _clip(0.12, 0.85, d), _clip(-0.8, 0.8, lat))
        placed.append(_kidney(cv, rng, *xy, kidney_abnormal))
    if "gallbladder" in organs:
        if liver is not None:  # at the inferior (deep / right) border of the liver
            t = _u(rng, 0.0, 1.6)
            rr = _u(rng, 0.6, 0.95)
            c, s = math.cos(liver.ang), math.sin(liver.ang)
            lu, lv = rr * liver.a * math.cos(t), rr * liver.b * math.sin(t)
            gx, gy = liver.cx + lu * c - lv * s, liver.cy + lu * s + lv * c
            d, lat = _fan_coords(g, gx, gy)
            gx, gy = _fan_point(g, _clip(0.12, 0.85, d), _clip(-0.8, 0.8, lat))
        else:
            gx, gy = _fan_point(g, _u(rng, 0.2, 0.6), _u(rng, -0.6, 0.6))
        placed.append(_gallbladder(cv, rng, gx, gy))
    if "bladder" in organs:
        xy = _fan_point(g, _u(rng, 0.25, 0.65), _u(rng, -0.6, 0.6))
        placed.append(_bladder(cv, rng, *xy))
    return placed


# --- overlays -------------------------------------------------------------------------------


def _text_block(img: np.ndarray, rng: np.random.Generator) -> None:
    """Rows of character-like bright blocks in a top corner (outside the fan)."""
    n = img.shape[0]
    ch = max(1, n // 40)  # character height = width
    rows = int(rng.integers(1, 4))
    nchar = int(rng.integers(3, 9))
    left = rng.random() < 0.5
    x0 = 1 if left else n - 1 - nchar * (ch + 1)
    y0 = 1
    level = int(rng.integers(170, 256))
    for r in range(rows):
        yy = y0 + r * (ch + 2)
        on = rng.random(nchar) < 0.8
        for c in range(nchar):
            if on[c]:
                xx = x0 + c * (ch + 1)
                img[yy : yy + ch, max(0, xx) : xx + ch] = level
    if rng.random() < 0.5:  # depth ruler: dots along the other side
        xs = n - 2 if left else 1
        step = max(3, n // 10)
        img[n // 8 :: step, xs] = level


def _calipers(img: np.ndarray, rng: np.random.Generator, organ: _Placed, mask: np.ndarray) -> None:
    """A pair of '+' caliper marks near the ends of an organ's long axis, inside the fan."""
    n = img.shape[0]
    arm = max(1, n // 40)
    level = int(rng.integers(200, 256))
    reach = organ.a * _u(rng, 0.7, 0.95)
    c, s = math.cos(organ.ang), math.sin(organ.ang)
    for sign in (-1.0, 1.0):
        px = int((organ.cx + sign * reach * c) * n)
        py = int((organ.cy + sign * reach * s) * n)
        if arm <= px < n - arm and arm <= py < n - arm and mask[py, px]:
            img[py, px - arm : px + arm + 1] = level
            img[py - arm : py + arm + 1, px] = level


# --- public entry point ---------------------------------------------------------------------


def render_image(
    rng: np.random.Generator,
    organs: Collection[str],
    style: ScannerStyle,
    size: int,
    kidney_abnormal: bool = False,
) -> np.ndarray:
    """uint8 array (size, size), grey B-mode image showing exactly the given organs.

    An empty `organs` gives an 'other' view (paper 000 §3.1: no organ of interest visible).
    """
    wanted = frozenset(organs)
    unknown = wanted - set(ORGANS)
    if unknown:
        raise ValueError(f"unknown organs {sorted(unknown)}; expected a subset of {ORGANS}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    geo = _geometry(style, size)
    n = size
    cv = _Canvas(geo, style.tissue * _u(rng, 0.85, 1.15))
    _background(cv, rng, busy=not wanted)
    if rng.random() < 0.15:  # intercostal view: rib shadow
        _rib(cv, rng)
    if not wanted:
        _other_view(cv, rng)
    elif rng.random() < 0.3:  # bowel gas next to the organs
        for _ in range(int(rng.integers(1, 3))):
            _bowel_loop(cv, rng, *_fan_point(geo, _u(rng, 0.1, 0.9), _u(rng, -0.9, 0.9)))
    placed = _layout_and_draw(cv, rng, wanted, kidney_abnormal)

    # multiplicative speckle (Rayleigh amplitude), smoothed to a grain of ~1-2 px
    raw = np.sqrt(rng.standard_exponential((n + 1, n + 2), dtype=_F))
    sm = _F(style.smoothing)
    lat = raw[:, 1:-1] + sm * (raw[:, :-2] + raw[:, 2:])
    spk = (lat[:-1] + sm * lat[1:]) * _F(1.0 / (0.8862 * (1 + 2 * sm) * (1 + sm)))
    # the variance of smoothed speckle drops; scale it back and fade it at small sizes,
    # where a pixel averages many speckle grains
    strength = style.speckle * (1.0 + 0.9 * style.smoothing) * min(1.0, (n / 128) ** 0.5)
    spk = 1.0 + (spk - 1.0) * (cv.tex * _F(strength))
    amp = cv.echo * np.maximum(spk, _F(0.02)) * cv.beam * geo.gain_map
    # log compression to the display range (per-exam gain and contrast)
    disp = _F(style.gain) + np.log(np.maximum(amp, _F(1e-4))) * _F(style.contrast)
    img = (np.clip(disp, 0.0, 1.0) * _F(255.0) + _F(0.5)).astype(np.uint8)
    img[~geo.mask] = 0

    # on-screen annotations: text blocks and caliper marks in ~25 % of images
    if rng.random() < 0.18:
        _text_block(img, rng)
    if placed and rng.random() < 0.12:
        _calipers(img, rng, placed[int(rng.integers(len(placed)))], geo.mask)
    return img
