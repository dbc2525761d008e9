"""A synthetic breast-ultrasound archive shaped like paper 004's in-house dataset (§3.1).

Paper 004 classifies breast-ultrasound lesions as benign or malignant on 5,911 images of 2,131
lesions (2,002 benign images, 3,909 malignant), several views per lesion, with 5-fold
cross-validation; its lesion-recognition loss pulls the views of one lesion together and pushes
other lesions away, so it needs images that are views of the same lesion: alike because they show
one object, different because each cuts it in another plane.

Like archive.py and cardiac.py, two steps: `plan_breast` draws patients → one exam each → 1-3
lesions → views, the class of every lesion, the look of every lesion (drawn once and shared by its
views), every patient's breast and every exam's scanner, and the patient-disjoint splits, all
without pixels; `write_breast` renders the PNGs in parallel (archive.write_frames) and writes the
dataset in the contract of docs/data-contract.md. Every image comes from a generator seeded by
(seed, exam, lesion, view), so the output is byte-identical for a given seed and size whatever the
number of worker processes.

A lesion's features (shape, margin, orientation, echogenicity, texture, posterior feature,
calcifications, halo) follow a continuous "suspicion" latent drawn per class with overlap: some
benign lesions look suspicious and some malignant ones do not, and each view can blur the margin,
hide spicules or calcifications and cast a shadow over the lesion, so no view decides the class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.contract import IMAGES_DIR, LABELED_SPLITS, DatasetInfo
from medssl.data.splitting import assign_splits
from medssl.data.synth.archive import write_frames
from medssl.data.synth.ultrasound import (
    _calipers,
    _Canvas,
    _Geometry,
    _Placed,
    _soft,
    _text_block,
    _u,
    _upsampler,
)

__all__ = [
    "CLASSES",
    "MALIGNANT_IMAGE_SHARE",
    "SIZES",
    "BreastPlan",
    "labeled_fractions",
    "plan_breast",
    "render_frame",
    "write_breast",
]

CLASSES: tuple[str, ...] = ("malignant",)  # task "binary": target 1 = malignant, 0 = benign

# Paper 004 §3.1: 5,911 images of 2,131 lesions; 2,002 benign and 3,909 malignant images.
PAPER_IMAGES = 5911
PAPER_LESIONS = 2131
MALIGNANT_IMAGE_SHARE = 3909 / 5911
VIEWS_PER_LESION = PAPER_IMAGES / PAPER_LESIONS  # ≈ 2.77
MAX_VIEWS = 8
# Not in the paper: lesions per patient, 1-3, mean 1.25 (most patients have one lesion).
LESIONS_PER_PATIENT_P = (0.78, 0.19, 0.03)
LESIONS_PER_PATIENT = sum((k + 1) * p for k, p in enumerate(LESIONS_PER_PATIENT_P))
# The suspicion latent: normal with mean ±SUSPICION_MEAN by class and sd 1.
SUSPICION_MEAN = 1.2
CYST_SHARE = 0.1  # of the benign lesions: anechoic cysts
VIEW_TISSUE = 0.45  # how much of a view's tissue pattern is its own (the rest: its scan plane's)
FALLBACK_SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


@dataclass(frozen=True)
class SizePreset:
    lesions: int
    image_size: int
    images: int | None = None  # exact total (paper), else ≈ 2.77 views per lesion


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(lesions=40, image_size=32),  # ≈ 110 images, for tests
    "small": SizePreset(lesions=600, image_size=64),  # ≈ 1,660
    # paper 004 §3.1 (the paper resizes to 256 px; 128 keeps the archive small on disk)
    "paper": SizePreset(lesions=PAPER_LESIONS, image_size=128, images=PAPER_IMAGES),
}


# --- who and what: per exam, per patient, per lesion ------------------------------------------


@dataclass(frozen=True)
class Scanner:
    """One exam's acquisition (scanner, preset, operator), shared by all its images."""

    gain: float  # display offset
    contrast: float  # display scale of log-amplitude
    attenuation: float  # signal loss per image height after time-gain compensation
    speckle: float  # strength of the multiplicative speckle
    smoothing: float  # 0 … 1: speckle smoothing (post-processing)
    tissue: float  # echogenicity of glandular tissue
    zoom: float  # depth setting: larger shows the tissue bigger (a shallower field)
    field: float  # share of the image width the linear probe fills (black on both sides)
    top: float  # black band above the skin (image heights)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Scanner:
        return cls(
            gain=_u(rng, 0.78, 0.95),
            contrast=_u(rng, 0.2, 0.3),
            attenuation=_u(rng, 0.1, 0.8),
            speckle=_u(rng, 0.6, 1.1),
            smoothing=_u(rng, 0.2, 1.0),
            tissue=_u(rng, 0.35, 0.5),
            zoom=_u(rng, 0.9, 1.25),
            field=_u(rng, 0.78, 1.0),
            top=_u(rng, 0.0, 0.06),
        )


@dataclass(frozen=True)
class Breast:
    """One patient's breast (depths below the skin in image widths at zoom 1)."""

    skin: float  # skin thickness
    fat: float  # depth of the subcutaneous-fat / glandular-tissue boundary
    muscle: float  # depth of the pectoral fascia
    fat_level: float  # fat echogenicity relative to glandular tissue
    density: float  # heterogeneity of the glandular tissue
    ligaments: int  # Cooper's ligaments crossing the fat

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Breast:
        fat = _u(rng, 0.1, 0.3)
        return cls(
            skin=_u(rng, 0.015, 0.03),
            fat=fat,
            muscle=fat + _u(rng, 0.35, 0.6),
            fat_level=_u(rng, 0.4, 0.6),
            density=_u(rng, 0.15, 0.35),
            ligaments=int(rng.integers(1, 5)),
        )


@dataclass(frozen=True)
class Lesion:
    """One lesion's own look, drawn once and shared by all its views. Lengths in image widths at
    zoom 1. The lesion is an ellipsoid-like mass that each view cuts in a vertical plane at angle
    φ to its own axes; plane A (φ = 0) and plane B (φ = π/2) each have a half-width and margin
    harmonics, blended for the planes in between. Views alternate between two perpendicular
    planes (radial / antiradial) starting at `plane`."""

    malignant: bool
    suspicion: float  # the latent the features follow (not visible as such)
    cyst: bool  # benign: an anechoic cyst
    width_a: float  # horizontal half-axis in plane A
    width_b: float  # in plane B
    height: float  # vertical half-axis
    tilt: float  # in-plane tilt of the long axis (radians)
    depth: float  # centre depth below the skin
    fat: float  # the breast's layers where the lesion is: fat / gland boundary depth
    muscle: float  # pectoral fascia depth
    plane: float  # plane angle of the first view
    lobes_a: tuple[tuple[int, float, float], ...]  # (k, cos, sin) margin harmonics, plane A
    lobes_b: tuple[tuple[int, float, float], ...]  # plane B
    spicules: tuple[tuple[float, float], ...]  # (angle, length / radius)
    margin: float  # edge width in pixels at 128 px (indistinct margins: wider)
    echo: float  # interior echogenicity relative to glandular tissue
    heterogeneity: float  # strength of the internal texture
    texture: tuple[tuple[float, float, float, float], ...]  # (kx, ky, phase, amplitude)
    posterior: float  # behind the lesion: > 1 enhancement, < 1 shadowing
    calcifications: tuple[tuple[float, float], ...]  # (u, v) in the lesion's unit disk
    halo: float  # echogenic rim: 0 … 1

    @classmethod
    def sample(cls, rng: np.random.Generator, malignant: bool, breast: Breast) -> Lesion:
        s = float(rng.normal(SUSPICION_MEAN if malignant else -SUSPICION_MEAN, 1.0))
        m = 1.0 / (1.0 + math.exp(-1.6 * s))  # 0 … 1: how suspicious it looks
        cyst = (not malignant) and rng.random() < CYST_SHARE
        if cyst:
            m = min(m, 0.2)
        size = math.exp(rng.normal(math.log(0.13), 0.3))
        fat = breast.fat * math.exp(rng.normal(0.0, 0.2))
        muscle = fat + (breast.muscle - breast.fat) * math.exp(rng.normal(0.0, 0.12))
        log_aspect = 0.5 * (1.0 - 2.0 * m) + rng.normal(0.0, 0.18)  # width / height
        width = size * math.exp(log_aspect / 2)
        lobe_amp = 0.025 + 0.07 * m
        n_spicules = round(m * m * 14 * _u(rng, 0.4, 1.2)) if m > 0.4 else 0
        n_calc = int(rng.poisson(6.0 * max(0.0, m - 0.5) + 0.15))
        texture = []
        for _ in range(6):
            k, a = _u(rng, 2.0, 7.0), _u(rng, 0.0, 2 * math.pi)
            texture.append(
                (k * math.cos(a), k * math.sin(a), _u(rng, 0, 2 * math.pi), _u(rng, 0.5, 1))
            )
        calcs = []
        for _ in range(n_calc):
            r, a = math.sqrt(rng.random()) * 0.75, _u(rng, 0.0, 2 * math.pi)
            calcs.append((r * math.cos(a), r * math.sin(a)))
        return cls(
            malignant=malignant,
            suspicion=s,
            cyst=cyst,
            width_a=width,
            width_b=width * math.exp(rng.normal(0.0, 0.15)),
            height=size * math.exp(-log_aspect / 2),
            tilt=float(rng.normal(0.0, 0.15 + 0.2 * m)),
            depth=fat + (muscle - fat) * _u(rng, 0.3, 0.6),
            fat=fat,
            muscle=muscle,
            plane=_u(rng, 0.0, math.pi),
            lobes_a=_lobes(rng, lobe_amp),
            lobes_b=_lobes(rng, lobe_amp),
            spicules=tuple(
                (_u(rng, 0, 2 * math.pi), _u(rng, 0.15, 0.55) * m) for _ in range(n_spicules)
            ),
            margin=1.0 + 3.0 * m * _u(rng, 0.6, 1.2),
            echo=0.04 if cyst else math.exp(rng.normal(math.log(0.36 - 0.2 * m), 0.2)),
            heterogeneity=0.05 if cyst else (0.06 + 0.3 * m) * _u(rng, 0.6, 1.2),
            texture=tuple(texture),
            posterior=_u(rng, 1.6, 2.2) if cyst else math.exp(0.45 - 1.2 * m + rng.normal(0, 0.25)),
            calcifications=tuple(calcs),
            halo=float(np.clip((m - 0.55) * 2.5, 0.0, 1.0) * _u(rng, 0.4, 1.0)),
        )


def _lobes(rng: np.random.Generator, amp: float) -> tuple[tuple[int, float, float], ...]:
    """Margin harmonics k = 2 … 9, weaker at high k: lobulation, then angularity."""
    return tuple(
        (k, float(rng.normal(0, amp / k**0.5)), float(rng.normal(0, amp / k**0.5)))
        for k in range(2, 10)
    )


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class BreastPlan:
    """Everything about a breast-ultrasound archive but its pixels."""

    info: DatasetInfo
    manifest: pd.DataFrame  # contract columns + target (every row labeled)
    exam_index: np.ndarray  # per manifest row
    lesion_index: np.ndarray  # per manifest row: index into `lesions` (global)
    view_index: np.ndarray  # per manifest row, within its lesion
    lesions: list[Lesion]
    lesion_exam: np.ndarray  # per lesion: exam index (= patient index: one exam per patient)
    breasts: list[Breast]  # per exam
    scanners: list[Scanner]  # per exam
    seed: int
    reports: pd.DataFrame | None = None  # no reports in this archive

    def truth(self) -> np.ndarray:
        """1 = malignant, per manifest row: int8 (N,)."""
        return self.manifest["target"].to_numpy(dtype=np.int8)

    def suspicion(self) -> np.ndarray:
        """The latent each row's lesion was drawn from (per manifest row)."""
        return np.array([self.lesions[i].suspicion for i in self.lesion_index])

    def frame_spec(self, row: int) -> tuple:
        """What `render_frame` needs for row `row` (plain, picklable data)."""
        exam = int(self.exam_index[row])
        lesion = int(self.lesion_index[row])
        return (
            self.seed,
            exam,
            lesion,
            int(self.view_index[row]),
            self.lesions[lesion],
            self.breasts[exam],
            self.scanners[exam],
            self.info.image_size,
        )

    def render(self, row: int) -> np.ndarray:
        """The pixels of manifest row `row`, exactly as `write_breast` writes them."""
        return render_frame(self.frame_spec(row))


def labeled_fractions(split_fractions: Mapping[str, float]) -> dict[str, float]:
    """Every image is labeled (paper 004): train/val/test shares of `split_fractions`
    renormalised to 1 (`unlabeled` ignored); 0.7/0.1/0.2 when none of the three is positive."""
    shares = {s: float(split_fractions.get(s, 0.0)) for s in LABELED_SPLITS}
    total = sum(v for v in shares.values() if v > 0)
    if total <= 0:
        return dict(FALLBACK_SPLITS)
    return {s: v / total for s, v in shares.items() if v > 0}


def plan_breast(size: str, seed: int, split_fractions: Mapping[str, float]) -> BreastPlan:
    """Draw the archive's patients, lesions, views, classes, looks and patient-disjoint splits."""
    if size not in SIZES:
        raise ValueError(f"unknown breast-us size {size!r} (sizes: {', '.join(SIZES)})")
    preset = SIZES[size]
    rng = np.random.default_rng([seed, 30])
    n_lesions = preset.lesions
    n_patients = max(1, round(n_lesions / LESIONS_PER_PATIENT))
    per_patient = _nudged(
        rng.choice(3, size=n_patients, p=LESIONS_PER_PATIENT_P) + 1, n_lesions, 1, 3, rng
    )
    views = _nudged(
        np.clip(1 + rng.poisson(VIEWS_PER_LESION - 1, n_lesions), 1, MAX_VIEWS),
        preset.images,
        1,
        MAX_VIEWS,
        rng,
    )
    malignant = _lesion_classes(rng, views, round(MALIGNANT_IMAGE_SHARE * int(views.sum())))
    lesion_exam = np.repeat(np.arange(n_patients), per_patient)  # one exam per patient
    scanners = [Scanner.sample(rng) for _ in range(n_patients)]
    breasts = [Breast.sample(rng) for _ in range(n_patients)]
    lesions = [
        Lesion.sample(rng, bool(malignant[i]), breasts[int(lesion_exam[i])])
        for i in range(n_lesions)
    ]

    lesion_index = np.repeat(np.arange(n_lesions), views)
    view_index = np.concatenate([np.arange(k) for k in views])
    exam_index = lesion_exam[lesion_index]
    exam_ids = np.array([f"E{e:06d}" for e in range(n_patients)], dtype=object)
    patient_ids = np.array([f"P{p:06d}" for p in range(n_patients)], dtype=object)
    lesion_ids = np.array([f"L{i:06d}" for i in range(n_lesions)], dtype=object)
    manifest = pd.DataFrame(
        {
            "image": [
                f"{IMAGES_DIR}/{exam_ids[e]}/{lesion_ids[i]}_{v:02d}.png"
                for e, i, v in zip(exam_index, lesion_index, view_index, strict=True)
            ],
            "patient_id": patient_ids[exam_index],
            "exam_id": exam_ids[exam_index],
            "lesion_id": pd.array(lesion_ids[lesion_index], dtype="string"),
        }
    )
    manifest["split"] = assign_splits(manifest, labeled_fractions(split_fractions), seed)
    manifest["target"] = pd.array(malignant[lesion_index].astype("int8"), dtype="Int8")

    info = DatasetInfo(
        name=f"breast-us-{size}",
        task="binary",
        classes=list(CLASSES),
        modality="US",
        image_size=preset.image_size,
        channels=1,
        version=f"synth-{size}-seed{seed}",
        description=(
            "Synthetic breast B-mode ultrasound archive shaped like paper 004 (§3.1): patients → "
            "one exam → 1-3 lesions → ~2.8 views each; benign/malignant per lesion (target 1 = "
            "malignant, ~66 % of images); every image labeled; lesion_id on every row."
        ),
    )
    return BreastPlan(
        info=info,
        manifest=manifest,
        exam_index=exam_index,
        lesion_index=lesion_index,
        view_index=view_index,
        lesions=lesions,
        lesion_exam=lesion_exam,
        breasts=breasts,
        scanners=scanners,
        seed=seed,
    )


def _nudged(
    counts: np.ndarray, total: int | None, lo: int, hi: int, rng: np.random.Generator
) -> np.ndarray:
    """Nudge random entries by one, within [lo, hi], until `counts` sums to `total` (if given)."""
    counts = counts.astype(np.int64)
    if total is None:
        return counts
    if not len(counts) * lo <= total <= len(counts) * hi:
        raise ValueError(f"cannot make {len(counts)} counts in [{lo}, {hi}] sum to {total}")
    while (diff := total - int(counts.sum())) != 0:
        step = 1 if diff > 0 else -1
        idx = rng.choice(len(counts), size=min(abs(diff), len(counts)), replace=False)
        ok = idx[(counts[idx] + step >= lo) & (counts[idx] + step <= hi)]
        counts[ok] += step
    return counts


def _lesion_classes(rng: np.random.Generator, views: np.ndarray, target: int) -> np.ndarray:
    """Malignant per lesion, drawn at the image share, then flipped lesion by lesion until the
    malignant lesions hold exactly `target` images (paper size: 3,909 of 5,911)."""
    malignant = rng.random(len(views)) < MALIGNANT_IMAGE_SHARE
    for _ in range(20 * len(views)):
        diff = target - int(views[malignant].sum())
        if diff == 0:
            break
        # flip a lesion of the class in excess, one that fits in the gap when there is one
        pool = np.flatnonzero(malignant != (diff > 0))
        fits = pool[views[pool] <= abs(diff)]
        pool = fits if len(fits) else pool
        malignant[pool[int(rng.integers(len(pool)))]] ^= True
    return malignant


def write_breast(plan: BreastPlan, out: Path, workers: int = 0, progress: bool = True) -> Path:
    """Render every image and write the dataset folder (staged: complete at `out` or absent)."""
    specs = [plan.frame_spec(row) for row in range(len(plan.manifest))]
    return write_frames(
        out, plan.info, plan.manifest, plan.reports, plan.exam_index, specs, render_frame,
        workers=workers, progress=progress,
    )  # fmt: skip


# --- pixels -------------------------------------------------------------------------------------

_F = np.float32
_APEX = -20.0  # a linear probe: beams (shadows) run straight down


@lru_cache(maxsize=8)
def _linear_geometry(size: int) -> _Geometry:
    """ultrasound.py's geometry for a linear probe: an apex far above the image, so the beam
    (and `_Canvas.shadow`) runs vertically; no fan mask, no depth gain (drawn per exam here)."""
    coords = ((np.arange(size, dtype=_F) + _F(0.5)) / _F(size)).astype(_F)
    x, y = np.meshgrid(coords, coords)
    dx, dy = x - _F(0.5), y - _F(_APEX)
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dx, dy)
    mask = np.ones((size, size), dtype=bool)
    gain = np.ones((size, size), dtype=_F)
    for arr in (x, y, r, theta, mask, gain):
        arr.flags.writeable = False
    return _Geometry(size, x, y, r, theta, mask, gain, _APEX, -_APEX, 1.0 - _APEX, 0.1)


def _field(rng: np.random.Generator, n: int, knots: int) -> np.ndarray:
    """A smooth random field (n, n), about unit scale."""
    w = _upsampler(n, knots)
    return w @ rng.standard_normal((knots, knots)).astype(_F) @ w.T * _F(2.0)


def _profile(rng: np.random.Generator, n: int, knots: int) -> np.ndarray:
    """A smooth random curve over the columns (1, n), about unit scale."""
    return (_upsampler(n, knots) @ rng.standard_normal(knots).astype(_F))[None, :] * _F(1.6)


def _breast_tissue(
    cv: _Canvas,
    scene: np.random.Generator,
    rng: np.random.Generator,
    br: Breast,
    les: Lesion,
    tissue: float,
    top: float,
    zoom: float,
) -> np.ndarray:
    """Skin, subcutaneous fat with Cooper's ligaments, glandular tissue, pectoral muscle behind
    its fascia, with the layer depths of the lesion's neighbourhood. The tissue of one scan plane
    comes from `scene` (shared by the views in that plane), perturbed by the view's `rng`.
    Returns the depth below the skin of every pixel (image widths at zoom 1)."""
    n = cv.n
    x, y = cv.g.x, cv.g.y
    d = (y - _F(top)) * _F(1.0 / zoom)  # depth below the skin
    xs = (x - _F(0.5)) * _F(1.0 / zoom)
    k = _F(n * zoom / 1.5)  # ~1.5 px boundaries
    own = _F(VIEW_TISSUE)
    shared = _F(math.sqrt(1.0 - VIEW_TISSUE**2))

    def profile(knots: int) -> np.ndarray:
        return shared * _profile(scene, n, knots) + own * _profile(rng, n, knots)

    def field(knots: int) -> np.ndarray:
        return shared * _field(scene, n, knots) + own * _field(rng, n, knots)

    fat_end = _F(les.fat) + _F(0.03) * profile(6)
    muscle = _F(les.muscle) + _F(0.035) * profile(5)
    fat = _F(tissue * br.fat_level) * np.exp(_F(0.25) * field(8))
    gland = _F(tissue) * np.exp(_F(br.density) * field(9))
    striation = _F(1.0) + _F(0.3) * np.cos(
        (d * _F(math.cos(0.3)) + xs * _F(_u(scene, -0.4, 0.4))) * _F(_u(scene, 60, 90))
    )
    pect = _F(tissue * _u(scene, 0.45, 0.65)) * striation
    in_gland = np.clip((d - fat_end) * k, 0.0, 1.0)
    in_muscle = np.clip((d - muscle) * k, 0.0, 1.0)
    echo = fat + in_gland * (gland - fat)
    echo += in_muscle * (pect - echo)
    lines = np.zeros_like(echo)
    for _ in range(br.ligaments):  # Cooper's ligaments: arcs rising from the gland to the skin
        x0, slope, bend = _u(scene, -0.6, 0.6), _u(scene, -1.5, 1.5), _u(scene, -6.0, 6.0)
        wl = _u(scene, 0.003, 0.006) + 0.4 / (n * zoom)
        dist = np.abs(xs - _F(x0) - _F(slope) * d - _F(bend) * d * d)
        dist *= _F(1.0 / math.hypot(1.0, slope))
        fade = np.clip((d - _F(br.skin)) * _F(1.0 / max(br.fat, 0.05)), 0.0, 1.0)
        lines += np.exp(-((dist * _F(1.0 / wl)) ** 2)) * fade * (d < fat_end)
    echo += lines * _F(tissue * _u(scene, 0.4, 0.8))
    # skin: two bright lines (epidermis, dermis border); the fascia in front of the muscle
    for depth, width, level in ((0.004, 0.004, 1.8), (br.skin, 0.005, 1.2)):
        wl = _F(width + 0.5 / (n * zoom))
        echo += np.exp(-(((d - _F(depth)) * (1 / wl)) ** 2)) * _F(tissue * level)
    wf = _F(0.006 + 0.5 / (n * zoom))
    echo += np.exp(-(((d - muscle) * (1 / wf)) ** 2)) * _F(tissue * _u(scene, 0.9, 1.4))
    cv.echo[:] = np.maximum(echo, _F(1e-3))
    return d


def _draw_lesion(
    cv: _Canvas, rng: np.random.Generator, les: Lesion, view: int, tissue: float, zoom: float,
    top: float, mirror: bool,
) -> _Placed:  # fmt: skip
    """One view of the lesion: its cut in this view's plane, placed and scaled by the view."""
    n = cv.n
    phi = les.plane + (view % 2) * math.pi / 2 + rng.normal(0.0, 0.2)  # radial / antiradial
    wa, wb = math.cos(phi) ** 2, math.sin(phi) ** 2
    half_w = 1.0 / math.sqrt(wa / les.width_a**2 + wb / les.width_b**2)
    a = half_w * zoom * math.exp(rng.normal(0.0, 0.05))
    b = les.height * zoom * math.exp(rng.normal(0.0, 0.05))
    cx = 0.5 + _u(rng, -0.14, 0.14)
    cy = top + (les.depth + rng.normal(0.0, 0.02)) * zoom
    ang = les.tilt + rng.normal(0.0, 0.08)
    reach = max(a, b) * (1.7 + max((s[1] for s in les.spicules), default=0.0))
    placed = _Placed(cx, cy, a, b, ang)
    win = cv.frame(cx, cy, ang, reach + 2.0 / n)
    if win is None:
        return placed
    sl, u, v = win
    if mirror:
        u = -u
    uu, vv = u * _F(1 / a), v * _F(1 / b)
    rho = np.sqrt(uu * uu + vv * vv)
    alpha_ang = np.arctan2(vv, uu)
    radius = np.ones_like(rho)
    for (k, ca, sa), (_, cb, sb) in zip(les.lobes_a, les.lobes_b, strict=True):
        radius += _F(wa * ca + wb * cb) * np.cos(alpha_ang * _F(k))
        radius += _F(wa * sa + wb * sb) * np.sin(alpha_ang * _F(k))
    show = _u(rng, 0.3, 1.0)  # how much of the spiculation this plane cuts
    for beta, length in les.spicules:
        bump = np.maximum(np.cos(alpha_ang - _F(beta)), 0.0) ** _F(40.0)
        radius += _F(length * show) * bump
    f = rho / np.maximum(radius, _F(0.3))
    blur = les.margin * _u(rng, 1.0, 2.2)  # some views hide the margin
    k = max(1.5, n * min(a, b) / (blur * n / 128 + 0.6))
    if les.halo > 0:  # echogenic halo around an infiltrating margin
        thick = 1.0 + 0.35 * les.halo
        cv.paint(sl, _soft(f * _F(1 / thick), k * 0.5) * _F(les.halo), _F(tissue * 1.5))
    texture = np.zeros_like(rho)
    for kx, ky, ph, amp in les.texture:
        texture += _F(amp) * np.cos(uu * _F(kx) + vv * _F(ky) + _F(ph))
    texture *= _F(1.0 / math.sqrt(sum(t[3] ** 2 for t in les.texture) / 2))  # unit sd
    value = _F(tissue * les.echo) * np.exp(_F(les.heterogeneity) * texture)
    alpha = np.clip((1.0 - f) * _F(k) + _F(0.5), 0.0, 1.0)  # the edge centred on the margin
    cv.paint(sl, alpha, value, tex=0.35 if les.cyst else 1.0)
    if les.cyst:  # a thin bright wall
        cv.paint(sl, np.clip(1.0 - np.abs(f - _F(1.0)) * _F(k * 0.7), 0, 1), _F(tissue * 1.1))
    c, s = math.cos(ang), math.sin(ang)
    for cu, cvv in les.calcifications:
        if rng.random() < 0.3:  # out of this view's plane
            continue
        lu, lv = cu * a * (-1 if mirror else 1), cvv * b
        px, py = cx + lu * c - lv * s, cy + lu * s + lv * c
        rad = max(0.006, 0.55 / n)
        dot = cv.window(px, py, rad * 2)
        if dot is not None:
            dsl, dx, dy = dot
            fd = ((dx - _F(px)) ** 2 + (dy - _F(py)) ** 2) * _F(1 / rad**2)
            cv.paint(dsl, _soft(fd, 1.5), _F(tissue * 3.5), tex=0.5)
    # posterior feature, stronger or weaker by view; benign edges sometimes cast thin shadows
    cv.shadow(cx, cy + b * 0.5, a * 0.75, les.posterior ** _u(rng, 0.6, 1.2))
    if rng.random() < 0.2 * (1.0 - les.halo):
        for side in (-1.0, 1.0):
            cv.shadow(cx + side * a * 0.95, cy, max(a * 0.06, 0.6 / n), _u(rng, 0.7, 0.9))
    return placed


def _speckle(rng: np.random.Generator, n: int, smoothing: float) -> np.ndarray:
    """Rayleigh speckle smoothed to a ~1-2 px grain, mean ≈ 1 (the model of
    ultrasound.render_image)."""
    raw = np.sqrt(rng.standard_exponential((n + 1, n + 2), dtype=_F))
    sm = _F(smoothing)
    lat = raw[:, 1:-1] + sm * (raw[:, :-2] + raw[:, 2:])
    return (lat[:-1] + sm * lat[1:]) * _F(1.0 / (0.8862 * (1 + 2 * sm) * (1 + sm)))


def render_frame(spec: tuple) -> np.ndarray:
    """One view of one lesion as uint8 (size, size), from its `BreastPlan.frame_spec`."""
    seed, exam, lesion, view, les, br, scan, size = spec
    rng = np.random.default_rng([seed, 31, exam, lesion, view])  # this view
    scene = np.random.default_rng([seed, 32, exam, lesion, view % 2])  # its scan plane
    n = size
    geo = _linear_geometry(n)
    zoom = scan.zoom * math.exp(_u(rng, -0.15, 0.15))  # the view's depth setting
    top = scan.top
    cv = _Canvas(geo, scan.tissue)
    mirror = rng.random() < 0.5  # probe orientation: the image flipped left-right
    d = _breast_tissue(cv, scene, rng, br, les, scan.tissue, top, zoom)
    if mirror:
        cv.echo[:] = cv.echo[:, ::-1].copy()
    placed = _draw_lesion(cv, rng, les, view, scan.tissue, zoom, top, mirror)
    if rng.random() < 0.2:  # a ligament shadow or poor probe contact: may cover the lesion
        x0 = placed.cx + _u(rng, -1.5, 1.5) * placed.a
        cv.shadow(x0, top + _u(rng, 0.02, 0.15), _u(rng, 0.02, 0.07), _u(rng, 0.25, 0.6))

    spk = _speckle(rng, n, scan.smoothing)
    strength = scan.speckle * (1.0 + 0.9 * scan.smoothing) * min(1.0, (n / 128) ** 0.5)
    spk = 1.0 + (spk - 1.0) * (cv.tex * _F(strength))
    depth_gain = np.exp(-_F(scan.attenuation) * np.clip(d * _F(zoom), 0.0, 1.0))
    amp = cv.echo * np.maximum(spk, _F(0.02)) * cv.beam * depth_gain
    gain = scan.gain + _u(rng, -0.04, 0.04)
    disp = _F(gain) + np.log(np.maximum(amp, _F(1e-4))) * _F(scan.contrast)
    img = (np.clip(disp, 0.0, 1.0) * _F(255.0) + _F(0.5)).astype(np.uint8)
    # the linear probe's field: black above the skin and on both sides
    inside = (geo.y >= top) & (np.abs(geo.x - _F(0.5)) <= _F(scan.field / 2))
    img[~inside] = 0
    if rng.random() < 0.3:  # calipers across the lesion (in any class)
        _calipers(img, rng, placed, inside)
    if rng.random() < 0.2:
        _text_block(img, rng)
    return img
