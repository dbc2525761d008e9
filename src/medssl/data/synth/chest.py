"""A synthetic chest X-ray detection archive shaped like VinDr-CXR as paper 003 uses it.

Paper 003 (§II.A) trains a Faster R-CNN on the 4,394 VinDr-CXR radiographs with at least one
finding (resized to 512 px; train / val / test 70 / 10 / 20 %), 13 local lesion classes after
dropping "no finding" (Fig. 3: strongly imbalanced, cardiomegaly and aortic enlargement in about
half the images, atelectasis and consolidation in a few percent), every image read by three of 17
radiologists (R09 with R10 or R11 on about 85 % of the test images; Table II: their inter-reader
IoU is 0.58 ± 0.28 and 0.67 ± 0.15), whose boxes it fuses (`medssl.data.boxes.fuse_readers`).

Like the other kinds, two steps: `plan_chest` draws every patient's anatomy, every exam's
exposure, the findings with their true boxes, the readers of every image and each reader's boxes,
and the patient-disjoint splits, all without pixels; `write_chest` renders the PNGs in parallel
(archive.write_frames) and writes the dataset, with `boxes.parquet`, in the contract of
docs/data-contract.md. Every image comes from a generator seeded by (seed, exam), so the output is
byte-identical for a given seed and size whatever the number of worker processes.

The images are PA radiographs drawn as a sum of attenuations (soft tissue, air in the lungs, heart
and mediastinum, aortic knob, spine, ribs, clavicles, hilar vessels), windowed per exam. Every
finding changes the pixels inside its true box (cardiomegaly: a wider heart, whose box it is;
aortic enlargement: a wider knob; a nodule: a small round opacity; …) with a visibility that
varies, so some findings are subtle; each reader's box of a finding is the true box jittered in
the reader's own way, readers miss findings and add false boxes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.boxes import COORDS, box_iou
from medssl.data.contract import BOX_COLUMNS, IMAGES_DIR, DatasetInfo
from medssl.data.splitting import assign_splits
from medssl.data.synth.archive import write_frames
from medssl.data.synth.breast import labeled_fractions

__all__ = [
    "CLASSES",
    "CLASS_IMAGE_SHARE",
    "READERS",
    "SIZES",
    "ChestPlan",
    "class_image_shares",
    "inter_reader_iou",
    "plan_chest",
    "render_frame",
    "write_chest",
]

# VinDr-CXR's local lesion labels as paper 003 uses them (13 after dropping "no finding"), less
# pneumothorax (VinDr-CXR's rarest) and with pulmonary fibrosis: see docs/synthetic-data.md.
CLASSES: tuple[str, ...] = (
    "aortic_enlargement",
    "atelectasis",
    "calcification",
    "cardiomegaly",
    "consolidation",
    "ild",
    "infiltration",
    "lung_opacity",
    "nodule_mass",
    "other_lesion",
    "pleural_effusion",
    "pleural_thickening",
    "pulmonary_fibrosis",
)
# Among the images with findings, the share that contains each class (paper 003 Fig. 3, rounded).
CLASS_IMAGE_SHARE: dict[str, float] = {
    "aortic_enlargement": 0.50,
    "cardiomegaly": 0.40,
    "pleural_thickening": 0.30,
    "pulmonary_fibrosis": 0.25,
    "other_lesion": 0.15,
    "nodule_mass": 0.14,
    "lung_opacity": 0.13,
    "pleural_effusion": 0.13,
    "ild": 0.06,
    "infiltration": 0.06,
    "calcification": 0.05,
    "consolidation": 0.03,
    "atelectasis": 0.02,
}
# Instances of a class in an image that has it: P(1), P(2), P(3).
INSTANCES: dict[str, tuple[float, ...]] = {
    "aortic_enlargement": (1.0,),
    "cardiomegaly": (1.0,),
    "nodule_mass": (0.6, 0.25, 0.15),
    "pleural_effusion": (0.75, 0.25),
    "pleural_thickening": (0.65, 0.35),
    "pulmonary_fibrosis": (0.65, 0.35),
    "ild": (0.4, 0.6),
    "infiltration": (0.75, 0.25),
    "lung_opacity": (0.75, 0.25),
    "calcification": (0.75, 0.25),
    "other_lesion": (0.85, 0.15),
    "consolidation": (0.9, 0.1),
    "atelectasis": (0.9, 0.1),
}
# How fuzzy a class's extent is: scales every reader's box jitter (a heart border is sharp,
# an interstitial pattern has no edge).
AMBIGUITY: dict[str, float] = {
    "aortic_enlargement": 0.8,
    "cardiomegaly": 0.6,
    "nodule_mass": 0.8,
    "calcification": 0.9,
    "pleural_effusion": 1.0,
    "pleural_thickening": 1.2,
    "pulmonary_fibrosis": 1.3,
    "ild": 1.3,
    "infiltration": 1.3,
    "lung_opacity": 1.2,
    "consolidation": 1.1,
    "atelectasis": 1.1,
    "other_lesion": 1.0,
}
# Labels readers confuse for one another (a reader's label of a true finding may be a neighbour).
CONFUSIONS: dict[str, tuple[str, ...]] = {
    "lung_opacity": ("infiltration", "consolidation"),
    "infiltration": ("lung_opacity", "consolidation"),
    "consolidation": ("lung_opacity", "infiltration"),
    "ild": ("pulmonary_fibrosis",),
    "pulmonary_fibrosis": ("ild", "pleural_thickening"),
    "nodule_mass": ("other_lesion", "calcification"),
    "other_lesion": ("nodule_mass",),
    "calcification": ("nodule_mass",),
    "atelectasis": ("lung_opacity",),
    "pleural_thickening": ("pulmonary_fibrosis",),
}

# Findings that are the anatomy itself (one heart, one aortic knob): drawn by the chest, not added.
ANATOMY = frozenset({"cardiomegaly", "aortic_enlargement"})
# Parenchymal findings: their boxes are kept inside the lung they lie in.
IN_LUNG = frozenset(
    {"nodule_mass", "other_lesion", "lung_opacity", "infiltration", "consolidation", "ild",
     "pulmonary_fibrosis", "atelectasis"}
)  # fmt: skip

PAPER_FINDING_IMAGES = 4394  # paper 003 §II.A, after discarding "no finding"
NO_FINDING_PER_FINDING = 2  # VinDr-CXR: about 2/3 of the images have no finding

# --- readers: 17 radiologists, 3 per image ---------------------------------------------------

READERS: tuple[str, ...] = tuple(f"R{i:02d}" for i in range(1, 18))
READERS_PER_IMAGE = 3
# Who reads an image with findings (paper 003 §IV: R09 with R10 on 85 % of its test images, R09
# with R11 on 85.4 %): a pattern of main readers, the rest drawn from the other 14.
READER_PATTERNS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("R09", "R10", "R11"), 0.76),
    (("R09", "R10"), 0.09),
    (("R09", "R11"), 0.09),
    (("R09",), 0.02),
    (("R10", "R11"), 0.02),
    ((), 0.02),
)
# Relative workload of the other readers (some read more than others).
OTHER_READER_WEIGHT: dict[str, float] = {
    "R01": 0.5, "R02": 0.5, "R03": 0.7, "R04": 0.6, "R05": 1.0, "R06": 1.2, "R07": 0.8,
    "R08": 2.5, "R12": 0.6, "R13": 0.5, "R14": 0.9, "R15": 0.7, "R16": 0.6, "R17": 1.0,
}  # fmt: skip


@dataclass(frozen=True)
class Reader:
    """How one radiologist draws boxes. Jitter is relative to the box's width / height."""

    jitter: float  # sd of each edge's offset (× box size × class ambiguity)
    scale: float  # mean log-scale of the box about its centre (> 0: draws larger boxes)
    scale_sd: float  # sd of that log-scale per box
    miss: float  # probability of missing a clearly visible finding (more for subtle ones)
    sloppy: float  # share of boxes drawn loosely (LOOSE_SCALE larger, LOOSE_JITTER)
    false_boxes: float  # Poisson mean of false boxes per image read
    confuse: float  # probability of calling a finding by a neighbouring label


LOOSE_SCALE = (0.3, 0.8)  # a loose box: log-scale about the finding's centre, uniform
LOOSE_JITTER = 0.1
MISS_SUBTLE = 0.35  # extra miss probability of a finding at visibility 0
# Tuned so that the inter-reader IoU comes out near paper 003's Table II (R09 vs R10: 0.580 ±
# 0.284, R09 vs R11: 0.674 ± 0.149): R09 draws tight boxes, R10 tight ones or, about half the
# time, loose ones well around the finding; R11 moderately jittered ones.
_OTHER_READER = Reader(0.08, 0.0, 0.08, 0.12, 0.2, 0.08, 0.08)
READER_TRAITS: dict[str, Reader] = {
    **{r: _OTHER_READER for r in READERS},
    "R09": Reader(0.03, 0.0, 0.03, 0.06, 0.0, 0.04, 0.05),
    "R10": Reader(0.03, 0.0, 0.03, 0.12, 0.55, 0.1, 0.08),
    "R11": Reader(0.1, -0.03, 0.06, 0.1, 0.1, 0.06, 0.06),
}


@dataclass(frozen=True)
class SizePreset:
    findings: int  # images with at least one finding
    image_size: int
    no_finding: int | None = None  # default: NO_FINDING_PER_FINDING × findings


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(findings=40, image_size=64),  # + 80 without findings, for tests
    "small": SizePreset(findings=1200, image_size=128),  # + 2,400
    "paper": SizePreset(findings=PAPER_FINDING_IMAGES, image_size=512),  # + 8,788 (§II.A)
}


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _fit(a: float, b: float, lo: float, hi: float) -> tuple[float, float]:
    """The interval [a, b] shifted into [lo, hi], or cut to it when longer."""
    if b - a >= hi - lo:
        return max(a, lo), min(b, hi)
    shift = max(0.0, lo - a) - max(0.0, b - hi)
    return a + shift, b + shift


# --- who and what: per patient, per exam, per finding ----------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest in the frame (image widths; x to the image's right = the patient's
    left, y down). Lungs: side -1 is the image's left (the patient's right lung)."""

    cx: float  # midline
    top: float  # lung apices
    base: tuple[float, float]  # hemidiaphragm domes, image left / right
    dome: float  # how far the costophrenic angles lie below the domes
    lung_offset: float  # lung centres from the midline
    lung_lateral: float  # lateral lung border from the lung centre (at full width)
    apex: float  # apex-to-full-width height
    mediastinum: float  # half-width of the upper mediastinum
    heart: tuple[float, float, float, float]  # centre x, centre y, half-width, half-height
    knob: tuple[float, float, float]  # aortic knob centre x, y and radius
    spine: float  # half-width of the spine shadow
    rib_spacing: float
    rib_bend: float  # lateral droop of the posterior ribs
    clavicle: float  # height of the clavicles at the midline
    body: float  # half-width of the body at the chest
    shoulders: float  # height of the shoulders
    breast: float  # soft-tissue shadow over the lung bases (0 = none)
    gastric: float  # gastric bubble under the image-right hemidiaphragm (0 = none)
    arms: float  # half-width of the arms beside the chest (0 = out of the field)

    def lung_point(self, rng: np.random.Generator, side: int, lo: float, hi: float) -> tuple:
        """A point in lung `side` between heights lo … hi (0 apex, 1 dome), away from its
        borders: (x, y)."""
        f = _u(rng, lo, hi)
        y = self.top + f * (self.base[(side + 1) // 2] - self.top)
        t = min(1.0, max(0.05, (y - self.top) / self.apex)) ** 0.33
        centre = self.cx + side * self.lung_offset
        medial = self.lung_offset - self.mediastinum
        if side == 1 and y > self.heart[1] - self.heart[3]:  # beside the heart
            medial = min(medial, self.lung_offset - (self.heart[0] + self.heart[2] - self.cx))
        u = _u(rng, -0.7 * medial * t, 0.75 * self.lung_lateral * t)
        return centre + side * u, y

    def inside_lung(self, box: tuple[float, ...], side: int) -> tuple[float, ...]:
        """`box` moved (or, if too large, cut) into the extent of lung `side` at its mid-height:
        between the mediastinum or heart and the lateral border, apex and diaphragm."""
        x1, y1, x2, y2 = box
        ym = (y1 + y2) / 2
        medial = self.cx + side * self.mediastinum
        hx, hy, hw, hh = self.heart
        if ym > hy - 0.7 * hh:  # beside the heart
            medial = max(medial, hx + hw) if side == 1 else min(medial, hx - hw)
        lo, hi = sorted((medial, self.lateral_border(side, ym)))
        top, bottom = self.top + 0.01, self.base[(side + 1) // 2] + 0.3 * self.dome
        (x1, x2), (y1, y2) = _fit(x1, x2, lo, hi), _fit(y1, y2, top, bottom)
        return (x1, y1, x2, y2)

    def lateral_border(self, side: int, y: float) -> float:
        t = min(1.0, max(0.0, (y - self.top) / self.apex)) ** 0.33
        return self.cx + side * (self.lung_offset + self.lung_lateral * t)


@dataclass(frozen=True)
class Exposure:
    """One exam's acquisition and display."""

    lo: float  # window: density shown black …
    hi: float  # … and white
    gamma: float
    noise: float  # quantum noise sd (density units)
    heel: float  # exposure gradient top to bottom
    bone: float  # bone contrast (kVp)
    soft: float  # soft-tissue thickness (habitus)
    blur: float  # 0 … 1: unsharpness
    marker: int  # 0 none, -1 / +1: a side marker in the top-left / top-right corner


@dataclass(frozen=True)
class Finding:
    """One true finding: its class, its box (image widths) and how it looks."""

    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in [0, 1]
    visibility: float  # 0.25 … 1: how strongly it shows
    side: int  # -1 / +1 lung, 0 midline
    kind: int  # class-specific variant (thickening: 0 apical, 1 lateral; other: 0 blob, 1 ring)
    angle: float  # class-specific orientation (atelectasis band, fibrosis streaks)


def _sample_anatomy(rng: np.random.Generator, cardiomegaly: bool, aortic: bool) -> Anatomy:
    cx = 0.5 + rng.normal(0.0, 0.012)
    top = _u(rng, 0.09, 0.16)
    base_left = top + _u(rng, 0.55, 0.66)  # the right hemidiaphragm (image left) is higher
    base = (base_left, base_left + _u(rng, 0.0, 0.04))
    lung_offset = _u(rng, 0.17, 0.2)
    lung_lateral = _u(rng, 0.17, 0.21)
    half_thorax = lung_offset + lung_lateral
    ctr = _u(rng, 0.53, 0.66) if cardiomegaly else _u(rng, 0.36, 0.49)  # cardiothoracic ratio
    heart_w = ctr * 2 * half_thorax
    heart_hh = heart_w * _u(rng, 0.27, 0.33) * (1.1 if cardiomegaly else 1.0)
    heart_x = cx + heart_w * _u(rng, 0.1, 0.2)  # two thirds of the heart left of the midline
    heart_y = base[1] - heart_hh * _u(rng, 0.55, 0.7)
    mediastinum = _u(rng, 0.045, 0.065)
    knob_r = _u(rng, 0.036, 0.055) if aortic else _u(rng, 0.02, 0.03)
    knob = (cx + mediastinum + 0.3 * knob_r, top + _u(rng, 0.1, 0.15), knob_r)
    return Anatomy(
        cx=cx,
        top=top,
        base=base,
        dome=_u(rng, 0.045, 0.08),
        lung_offset=lung_offset,
        lung_lateral=lung_lateral,
        apex=_u(rng, 0.18, 0.26),
        mediastinum=mediastinum,
        heart=(heart_x, heart_y, heart_w / 2, heart_hh),
        knob=knob,
        spine=_u(rng, 0.03, 0.042),
        rib_spacing=(base[1] - top) / _u(rng, 8.5, 10.0),
        rib_bend=_u(rng, 0.1, 0.2),
        clavicle=top + _u(rng, 0.0, 0.05),
        body=half_thorax + _u(rng, 0.05, 0.1),
        shoulders=top - _u(rng, 0.0, 0.06),
        breast=_u(rng, 0.03, 0.1) if rng.random() < 0.5 else 0.0,
        gastric=_u(rng, 0.5, 1.0) if rng.random() < 0.6 else 0.0,
        arms=_u(rng, 0.04, 0.07) if rng.random() < 0.5 else 0.0,
    )


def _sample_exposure(rng: np.random.Generator) -> Exposure:
    return Exposure(
        lo=_u(rng, -0.05, 0.08),
        hi=_u(rng, 0.95, 1.2),
        gamma=math.exp(rng.normal(0.0, 0.15)),
        noise=_u(rng, 0.008, 0.03),
        heel=_u(rng, -0.12, 0.12),
        bone=_u(rng, 0.7, 1.3),
        soft=_u(rng, 0.85, 1.2),
        blur=_u(rng, 0.0, 1.0),
        marker=int(rng.choice([0, -1, 1], p=[0.5, 0.25, 0.25])),
    )


def _visibility(rng: np.random.Generator) -> float:
    return 0.25 + 0.75 * float(rng.beta(2.0, 1.4))


def _lognormal(rng: np.random.Generator, median: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(math.exp(rng.normal(math.log(median), sd)), lo, hi))


def _centred(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    return (x - w / 2, y - h / 2, x + w / 2, y + h / 2)


def _place(rng: np.random.Generator, an: Anatomy, label: str, side: int) -> Finding:
    """One instance of `label` in a plausible place of the patient's chest."""
    vis = _visibility(rng)
    kind, angle = 0, _u(rng, -0.5, 0.5)
    if label == "cardiomegaly":
        hx, hy, hw, hh = an.heart
        ctr = hw * 2 / (2 * (an.lung_offset + an.lung_lateral))
        vis = float(np.clip((ctr - 0.5) / 0.14, 0.25, 1.0))
        box = (hx - hw, hy - hh, hx + hw, an.base[1])
        return Finding(label, box, vis, 0, 0, 0.0)
    if label == "aortic_enlargement":
        kx, ky, kr = an.knob
        vis = float(np.clip((kr - 0.03) / 0.022, 0.25, 1.0))
        box = (kx - 1.25 * kr, ky - 1.2 * kr, kx + 1.15 * kr, ky + 1.5 * kr)
        return Finding(label, box, vis, 1, 0, 0.0)
    b = (side + 1) // 2
    if label == "nodule_mass":
        d = _lognormal(rng, 0.032, 0.45, 0.012, 0.16)
        x, y = an.lung_point(rng, side, 0.15, 0.85)
        box = _centred(x, y, d * _u(rng, 0.85, 1.15), d * _u(rng, 0.85, 1.15))
    elif label == "calcification":
        d = _lognormal(rng, 0.028, 0.4, 0.01, 0.08)
        if rng.random() < 0.3:  # calcified aortic knob
            kx, ky, kr = an.knob
            x, y, side = kx + _u(rng, -0.5, 0.8) * kr, ky - _u(rng, 0.2, 0.8) * kr, 1
        else:
            x, y = an.lung_point(rng, side, 0.1, 0.8)
        box = _centred(x, y, d * _u(rng, 0.8, 1.4), d * _u(rng, 0.8, 1.2))
    elif label == "other_lesion":
        kind = int(rng.random() < 0.4)  # 1: a cavity (ring)
        x, y = an.lung_point(rng, side, 0.1, 0.85)
        w = _lognormal(rng, 0.07, 0.4, 0.025, 0.2)
        box = _centred(x, y, w, w * _u(rng, 0.75, 1.3))
    elif label in ("lung_opacity", "infiltration", "consolidation"):
        zone = (0.15, 0.9) if label != "consolidation" else (0.4, 0.92)
        x, y = an.lung_point(rng, side, *zone)
        w = _lognormal(rng, 0.13, 0.35, 0.05, 0.3)
        box = _centred(x, y, w, w * _u(rng, 0.7, 1.4))
    elif label == "ild":
        x, y = an.lung_point(rng, side, 0.5, 0.8)
        w = _lognormal(rng, 0.16, 0.25, 0.08, 0.28)
        box = _centred(x, y, w, w * _u(rng, 1.1, 1.7))
    elif label == "pulmonary_fibrosis":
        x, y = an.lung_point(rng, side, 0.1, 0.55)  # mostly upper zones
        w = _lognormal(rng, 0.12, 0.3, 0.05, 0.25)
        box = _centred(x, y, w, w * _u(rng, 0.8, 1.4))
        angle = _u(rng, 0.0, math.pi)
    elif label == "atelectasis":
        x, y = an.lung_point(rng, side, 0.55, 0.9)
        w = _lognormal(rng, 0.14, 0.3, 0.06, 0.26)
        box = _centred(x, y, w, w * _u(rng, 0.25, 0.5))
        angle = _u(rng, -0.3, 0.3)
    elif label == "pleural_effusion":
        corner = an.base[b] + an.dome  # the costophrenic angle
        lat = an.lateral_border(side, corner)
        w, h = _u(rng, 0.09, 0.2), _u(rng, 0.05, 0.18)
        x1, x2 = sorted((lat + side * 0.008, lat - side * w))
        box = (x1, corner - h, x2, corner + 0.012)
    elif label == "pleural_thickening":
        kind = int(rng.random() < 0.5)  # 0: apical cap, 1: lateral chest wall
        if kind == 0:
            c = an.cx + side * (an.lung_offset + 0.2 * an.lung_lateral)
            w, h = _u(rng, 0.09, 0.16), _u(rng, 0.03, 0.07)
            box = _centred(c, an.top + h / 2 - 0.008, w, h)
        else:
            y = an.top + _u(rng, 0.3, 0.75) * (an.base[b] - an.top)
            lat = an.lateral_border(side, y)
            w, h = _u(rng, 0.02, 0.05), _u(rng, 0.08, 0.22)
            x1, x2 = sorted((lat + side * 0.006, lat - side * w))
            box = (x1, y - h / 2, x2, y + h / 2)
    else:  # pragma: no cover - CLASSES and this function agree (tested)
        raise ValueError(label)
    if label in IN_LUNG:
        box = an.inside_lung(box, side)
    x1, y1, x2, y2 = (float(np.clip(v, 0.0, 1.0)) for v in box)
    return Finding(label, (x1, y1, x2, y2), vis, side, kind, angle)


def _image_classes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Which classes each of n images with findings has: bool (n, C), every row at least one,
    each class at about its CLASS_IMAGE_SHARE (independent draws conditioned on ≥ 1 finding)."""
    share = np.array([CLASS_IMAGE_SHARE[c] for c in CLASSES])
    q = share.copy()
    for _ in range(50):  # P(c | ≥ 1) = q_c / (1 - Π(1 - q)) = share_c
        q = share * (1.0 - np.prod(1.0 - q))
    has = rng.random((n, len(CLASSES))) < q
    while (empty := ~has.any(axis=1)).any():
        has[empty] = rng.random((int(empty.sum()), len(CLASSES))) < q
    return has


def _findings(rng: np.random.Generator, an: Anatomy, classes: list[str]) -> tuple[Finding, ...]:
    out = []
    for label in classes:
        p = INSTANCES[label]
        count = int(rng.choice(len(p), p=p)) + 1
        sides = [int(rng.choice([-1, 1]))]
        for _ in range(count - 1):  # a second instance: usually the other lung
            sides.append(-sides[-1] if rng.random() < 0.7 else sides[-1])
        out += [_place(rng, an, label, s) for s in sides]
    return tuple(out)


# --- readers ----------------------------------------------------------------------------------


def _readers_of(rng: np.random.Generator) -> tuple[str, ...]:
    pats, probs = zip(*READER_PATTERNS, strict=True)
    fixed = pats[int(rng.choice(len(pats), p=np.asarray(probs) / sum(probs)))]
    names = list(OTHER_READER_WEIGHT)
    w = np.array([OTHER_READER_WEIGHT[r] for r in names])
    others = rng.choice(names, size=READERS_PER_IMAGE - len(fixed), replace=False, p=w / w.sum())
    return tuple(sorted([*fixed, *others.tolist()]))


def _jitter(
    rng: np.random.Generator, box: tuple[float, ...], reader: Reader, label: str
) -> tuple[float, ...]:
    """A reader's box of a true box (image widths): the edges jittered in proportion to the box
    size, the class's ambiguity and the reader's care; a loose box is drawn well around it."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    loose = rng.random() < reader.sloppy
    sd = (LOOSE_JITTER if loose else reader.jitter) * AMBIGUITY[label]
    log_s = reader.scale + rng.normal(0.0, reader.scale_sd)
    if loose:
        log_s += _u(rng, *LOOSE_SCALE)
    s = math.exp(log_s)
    cx, cy = (x1 + x2) / 2 + rng.normal(0.0, sd) * w, (y1 + y2) / 2 + rng.normal(0.0, sd) * h
    hw = w * s / 2 * math.exp(rng.normal(0.0, sd))
    hh = h * s / 2 * math.exp(rng.normal(0.0, sd))
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def _pixel_box(box: tuple[float, ...], n: int) -> tuple[float, float, float, float]:
    """A box in image widths → pixels inside the image, at least one pixel wide and high."""
    x1, y1, x2, y2 = (float(np.clip(v * n, 0.0, n)) for v in box)
    if x2 - x1 < 1.0:
        c = min(max((x1 + x2) / 2, 0.5), n - 0.5)
        x1, x2 = c - 0.5, c + 0.5
    if y2 - y1 < 1.0:
        c = min(max((y1 + y2) / 2, 0.5), n - 0.5)
        y1, y2 = c - 0.5, c + 0.5
    return x1, y1, x2, y2


def _read(
    rng: np.random.Generator,
    an: Anatomy,
    findings: tuple[Finding, ...],
    readers: tuple[str, ...],
    share: np.ndarray,
) -> list[tuple[str, str, tuple[float, ...]]]:
    """Every reader's boxes of one image: (reader, label, box in image widths). Each true finding
    is marked by at least one reader (a finding all three miss would not be in the dataset)."""
    traits = [READER_TRAITS[r] for r in readers]
    out: list[tuple[str, str, tuple[float, ...]]] = []
    for f in findings:
        p_miss = np.array([t.miss + MISS_SUBTLE * (1.0 - f.visibility) for t in traits])
        draw = rng.random(len(readers))
        marked = draw >= p_miss
        if not marked.any():
            marked[int(np.argmax(draw - p_miss))] = True
        for r, t, m in zip(readers, traits, marked, strict=True):
            if not m:
                continue
            label = f.label
            if label in CONFUSIONS and rng.random() < t.confuse:
                label = CONFUSIONS[label][int(rng.integers(len(CONFUSIONS[label])))]
            out.append((r, label, _jitter(rng, f.box, t, f.label)))
    drawn = {(r, label) for r, label, _ in out}
    for r, t in zip(readers, traits, strict=True):  # false boxes: a class where it could be
        for _ in range(int(rng.poisson(t.false_boxes))):
            label = CLASSES[int(rng.choice(len(CLASSES), p=share))]
            fake = _place(rng, an, label, int(rng.choice([-1, 1])))
            if label in ANATOMY and (r, label) in drawn:
                continue  # one heart, one aortic knob: already boxed
            drawn.add((r, label))
            out.append((r, label, _jitter(rng, fake.box, t, label)))
    order = {r: k for k, r in enumerate(readers)}
    return sorted(out, key=lambda b: order[b[0]])  # stable: a reader's boxes in drawn order


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class ChestPlan:
    """Everything about a chest X-ray archive but its pixels."""

    info: DatasetInfo
    manifest: pd.DataFrame  # contract columns only (a detection dataset's labels are its boxes)
    exam_index: np.ndarray  # per manifest row (= patient: one exam, one image each)
    anatomies: list[Anatomy]  # per exam
    exposures: list[Exposure]  # per exam
    findings: list[tuple[Finding, ...]]  # per exam; () for an image without findings
    boxes: pd.DataFrame  # the readers' boxes, as boxes.parquet (pixels)
    readings: pd.DataFrame  # image, reader_id: the three readers of every image with findings
    true_boxes: pd.DataFrame  # image, label, x1 … y2: the noise-free boxes (pixels; not written)
    seed: int
    reports: pd.DataFrame | None = None  # no reports in this archive

    def frame_spec(self, row: int) -> tuple:
        """What `render_frame` needs for row `row` (plain, picklable data)."""
        exam = int(self.exam_index[row])
        return (
            self.seed,
            exam,
            self.anatomies[exam],
            self.exposures[exam],
            self.findings[exam],
            self.info.image_size,
        )

    def render(self, row: int, findings: bool = True) -> np.ndarray:
        """The pixels of manifest row `row`, exactly as `write_chest` writes them; with
        `findings=False` the same image without its drawn findings (cardiomegaly and aortic
        enlargement are the anatomy and stay)."""
        spec = self.frame_spec(row)
        return render_frame(spec if findings else (*spec[:4], (), spec[5]))


def plan_chest(size: str, seed: int, split_fractions: Mapping[str, float]) -> ChestPlan:
    """Draw the archive's patients, anatomy, exposures, findings, readers' boxes and splits."""
    if size not in SIZES:
        raise ValueError(f"unknown chest-xray size {size!r} (sizes: {', '.join(SIZES)})")
    preset = SIZES[size]
    n_find = preset.findings
    n_none = NO_FINDING_PER_FINDING * n_find if preset.no_finding is None else preset.no_finding
    n = n_find + n_none
    rng = np.random.default_rng([seed, 40])
    has_findings = np.zeros(n, dtype=bool)
    has_findings[rng.choice(n, size=n_find, replace=False)] = True
    classes = np.zeros((n, len(CLASSES)), dtype=bool)
    classes[has_findings] = _image_classes(rng, n_find)
    car, aor = CLASSES.index("cardiomegaly"), CLASSES.index("aortic_enlargement")
    anatomies = [_sample_anatomy(rng, bool(c[car]), bool(c[aor])) for c in classes]
    exposures = [_sample_exposure(rng) for _ in range(n)]
    findings = [
        _findings(rng, an, [c for c, k in zip(CLASSES, row, strict=True) if k])
        for an, row in zip(anatomies, classes, strict=True)
    ]

    exam_ids = np.array([f"E{e:06d}" for e in range(n)], dtype=object)
    images = [f"{IMAGES_DIR}/{e}.png" for e in exam_ids]
    manifest = pd.DataFrame(
        {
            "image": images,
            "patient_id": [f"P{p:06d}" for p in range(n)],
            "exam_id": exam_ids,
            "lesion_id": pd.array([pd.NA] * n, dtype="string"),
        }
    )
    split = pd.Series("unlabeled", index=manifest.index, dtype="string")
    labeled = manifest[has_findings]
    split[has_findings] = assign_splits(labeled, labeled_fractions(split_fractions), seed)
    manifest["split"] = split.astype("string")

    px = preset.image_size
    share = np.array([CLASS_IMAGE_SHARE[c] for c in CLASSES])
    share = share / share.sum()
    read_rng = np.random.default_rng([seed, 41])  # readers: changing them never moves a pixel
    true_rows, box_rows, reading_rows = [], [], []
    for e in np.flatnonzero(has_findings):
        for f in findings[e]:
            true_rows.append((images[e], f.label, *_pixel_box(f.box, px)))
        readers = _readers_of(read_rng)
        reading_rows += [(images[e], r) for r in readers]
        for r, label, box in _read(read_rng, anatomies[e], findings[e], readers, share):
            box_rows.append((images[e], r, label, *_pixel_box(box, px)))
    boxes = pd.DataFrame(box_rows, columns=list(BOX_COLUMNS)).astype(BOX_COLUMNS)
    true_boxes = pd.DataFrame(true_rows, columns=["image", "label", *COORDS])
    true_boxes = true_boxes.astype({"image": "string", "label": "string"})
    readings = pd.DataFrame(reading_rows, columns=["image", "reader_id"], dtype="string")

    info = DatasetInfo(
        name=f"chest-xray-{size}",
        task="detection",
        classes=list(CLASSES),
        modality="DX",
        image_size=px,
        channels=1,
        version=f"synth-{size}-seed{seed}",
        description=(
            "Synthetic PA chest radiographs shaped like VinDr-CXR as paper 003 uses it (§II.A, "
            "Fig. 3, Table II): one image per patient, 13 local lesion classes with boxes by 3 "
            "of 17 readers (boxes.parquet); images with findings split train/val/test, the "
            "~2/3 without findings are unlabeled."
        ),
    )
    return ChestPlan(
        info=info,
        manifest=manifest,
        exam_index=np.arange(n),
        anatomies=anatomies,
        exposures=exposures,
        findings=findings,
        boxes=boxes,
        readings=readings,
        true_boxes=true_boxes,
        seed=seed,
    )


def write_chest(plan: ChestPlan, out: Path, workers: int = 0, progress: bool = True) -> Path:
    """Render every image and write the dataset folder with boxes.parquet (staged: complete at
    `out` or absent)."""
    specs = [plan.frame_spec(row) for row in range(len(plan.manifest))]
    return write_frames(
        out, plan.info, plan.manifest, plan.reports, plan.exam_index, specs, render_frame,
        workers=workers, progress=progress, boxes=plan.boxes,
    )  # fmt: skip


# --- measurements -----------------------------------------------------------------------------


def class_image_shares(table: pd.DataFrame, images: int) -> pd.Series:
    """Per class, the share of `images` images that have at least one box of it (Fig. 3)."""
    counts = table.drop_duplicates(["image", "label"])["label"].value_counts()
    return (counts.reindex(list(CLASSES), fill_value=0) / images).rename("share")


def inter_reader_iou(
    boxes: pd.DataFrame, reader_a: str, reader_b: str, threshold: float = 0.2
) -> np.ndarray:
    """Paper 003 Table II: for every box of `reader_a`, the IoU of the same-class box of
    `reader_b` on the same image that overlaps it most, kept where it is above `threshold`
    ("to avoid counting multiple instances of a class as the same prediction")."""
    a = boxes[boxes["reader_id"] == reader_a]
    b = boxes[boxes["reader_id"] == reader_b]
    theirs = {key: g[COORDS].to_numpy(np.float64) for key, g in b.groupby(["image", "label"])}
    out = []
    for key, g in a.groupby(["image", "label"]):
        other = theirs.get(key)
        if other is None:
            continue
        best = box_iou(g[COORDS].to_numpy(np.float64), other).max(axis=1)
        out.append(best[best > threshold])
    return np.concatenate(out) if out else np.zeros(0)


# --- pixels -------------------------------------------------------------------------------------

_F = np.float32


@lru_cache(maxsize=4)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    coords = ((np.arange(n, dtype=_F) + _F(0.5)) / _F(n)).astype(_F)
    x, y = np.meshgrid(coords, coords)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _ramp(v: np.ndarray, width: float) -> np.ndarray:
    """0 → 1 as v goes from -width/2 to width/2 (a soft inside test)."""
    return np.clip(v * _F(1.0 / width) + _F(0.5), 0.0, 1.0)


def _window(n: int, box: tuple[float, ...], margin: float) -> tuple[slice, slice] | None:
    x1, y1, x2, y2 = box
    i0, i1 = max(0, int((y1 - margin) * n)), min(n, math.ceil((y2 + margin) * n))
    j0, j1 = max(0, int((x1 - margin) * n)), min(n, math.ceil((x2 + margin) * n))
    if i1 <= i0 or j1 <= j0:
        return None
    return slice(i0, i1), slice(j0, j1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth random field over `shape`, about unit sd, with ~`cells` blobs across."""
    k = max(2, cells + 2)
    coarse = rng.standard_normal((k, k)).astype(_F)
    h, w = shape
    yi = np.linspace(0.5, k - 1.5, h, dtype=_F)
    xi = np.linspace(0.5, k - 1.5, w, dtype=_F)
    y0, x0 = np.floor(yi).astype(int), np.floor(xi).astype(int)
    fy, fx = (yi - y0)[:, None], (xi - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    a, b = coarse[y0][:, x0], coarse[y0][:, x0 + 1]
    c, d = coarse[y0 + 1][:, x0], coarse[y0 + 1][:, x0 + 1]
    return (a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy


def _blur(img: np.ndarray, amount: float) -> np.ndarray:
    """A separable [a, 1 - 2a, a] blur, a = amount / 4 (0: none)."""
    a = _F(amount * 0.25)
    if a <= 0:
        return img
    out = img * (1 - 2 * a)
    out[:, 1:] += a * img[:, :-1]
    out[:, :-1] += a * img[:, 1:]
    out[:, 0] += a * img[:, 0]
    out[:, -1] += a * img[:, -1]
    res = out * (1 - 2 * a)
    res[1:] += a * out[:-1]
    res[:-1] += a * out[1:]
    res[0] += a * out[0]
    res[-1] += a * out[-1]
    return res


AIR = 0.38  # density the air in a lung removes


def _chest(
    rng: np.random.Generator, an: Anatomy, ex: Exposure, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The normal chest as density (n, n) and the lung mask (n, n)."""
    x, y = _grid(n)
    e = max(1.5 / n, 0.004)  # edge width
    cx = an.cx
    ax = np.abs(x - _F(cx))
    # body: neck, rounded shoulders, chest narrowing a little to the waist; arms at the sides
    neck = 0.085
    t = np.sqrt(np.clip((y - _F(an.shoulders - 0.11)) * _F(1 / 0.15), 0.0, 1.0))
    waist = np.clip((y - _F(an.base[1])) * _F(1 / 0.25), 0.0, 1.0)
    bw = _F(neck) + _F(an.body - neck) * t - _F(0.04) * waist
    body = _ramp(bw - ax, e * 2)
    depth = np.sqrt(np.clip(1 - (ax / np.maximum(bw, _F(0.05))) ** 2, 0.0, 1.0))
    density = body * (_F(0.4 * ex.soft) + _F(0.32 * ex.soft) * depth)
    if an.arms > 0:
        arm = _ramp(_F(an.arms) - np.abs(ax - _F(an.body + 0.02 + an.arms)), e * 3)
        arm *= _ramp(y - _F(an.shoulders + 0.02), 0.08)
        density += _F(0.5 * ex.soft) * arm

    # lungs
    lungs = np.zeros_like(x)
    for side in (-1, 1):
        base = an.base[(side + 1) // 2]
        u = (x - _F(cx + side * an.lung_offset)) * _F(side)  # > 0 lateral
        t = np.clip((y - _F(an.top)) * _F(1 / an.apex), 0.0, 1.0) ** _F(0.33)
        lat = _F(an.lung_lateral) * t
        med = _F(an.lung_offset - an.mediastinum) * t
        inside = _ramp(lat - u, e) * _ramp(u + med, e)
        rel = np.where(u > 0, u * _F(1 / an.lung_lateral), u * _F(0.5 / an.lung_offset))
        dome = _F(base) + _F(an.dome) * rel * rel
        inside *= _ramp(dome - y, e) * _ramp(y - _F(an.top), e)
        lungs = np.maximum(lungs, inside)

    # the heart sits on the diaphragm: an ellipse above its centre, a slowly narrowing base below
    hx, hy, hw, hh = an.heart
    dy = (y - _F(hy)) * _F(1 / hh)
    half = np.where(
        dy < 0,
        np.sqrt(np.clip(1 - dy * dy, 0.0, 1.0)),
        np.clip(1 - _F(0.12) * dy * dy, 0.0, 1.0),
    ) * _F(hw)
    heart = _ramp(half - np.abs(x - _F(hx)), e * 1.5) * _ramp(_F(an.base[1] + 0.03) - y, e * 4)
    heart_depth = np.sqrt(np.clip(1 - ((x - _F(hx)) * _F(1 / hw)) ** 2, 0.0, 1.0))
    kx, ky, kr = an.knob
    knob = _ramp(_F(kr) - np.sqrt((x - _F(kx)) ** 2 + (y - _F(ky)) ** 2), e)
    # the descending aorta: a faint stripe left of the spine, from the knob to the diaphragm
    aorta = _ramp(_F(kr * 0.7) - np.abs(x - _F(kx - 0.25 * kr)), e) * _ramp(y - _F(ky), e)
    aorta *= _ramp(_F(an.base[1]) - y, e)
    lungs = lungs * (1 - _F(0.92) * heart) * (1 - _F(0.9) * knob) * (1 - _F(0.35) * aorta)
    density -= _F(AIR) * lungs
    density += heart * _F(0.06) * heart_depth + _F(0.04) * knob
    # lung fields: uneven, brighter towards the bases (soft tissue in front)
    zone = np.clip((y - _F(an.top)) * _F(1 / (an.base[0] - an.top)), 0.0, 1.0)
    density += lungs * (_F(0.05) * zone + _F(0.03) * _smooth_noise(rng, (n, n), 5))

    # trachea: an air column down to the carina
    carina = an.top + 0.15
    trachea = _ramp(_F(0.016) - ax, e) * _ramp(_F(carina) - y, e * 4)
    density -= _F(0.1) * trachea * body
    # spine with vertebrae
    vert = (an.base[1] - an.top) / 11
    spine = _ramp(_F(an.spine) - ax, e * 2) * body
    density += spine * (_F(0.08) + _F(0.04) * np.cos(y * _F(2 * math.pi / vert)))

    # ribs: posterior (brighter, drooping laterally) and anterior (fainter, sloping down
    # medially, ending at the costal cartilage); plain over the lungs, faint over soft tissue
    reach = an.lung_offset + an.lung_lateral
    uu = ax * _F(1 / reach)
    cage = _ramp(_F(reach * 1.06) - ax, e * 2) * _ramp(ax - _F(an.spine * 1.1), e * 2)
    cage *= _ramp(y - _F(an.top - 0.06), e * 3) * _ramp(_F(an.base[1] + 0.05) - y, e * 6)
    cage *= _F(0.3) + _F(0.7) * lungs
    drop = (y - _F(an.top - 0.035)) * _F(1 / an.rib_spacing)
    post = drop + (_F(0.3) * uu - _F(an.rib_bend) * uu * uu * uu) * _F(1 / 0.065)
    post = post * (_F(1.0) - _F(0.02) * post)  # the lower ribs lie further apart
    ribs = np.clip((np.cos(post * _F(2 * math.pi)) - _F(0.25)) * _F(1 / 0.75), 0.0, 1.0)
    ribs *= np.clip(_F(1.15) - _F(0.3) * uu, 0.0, 1.0)  # thinner, fainter laterally
    ant = drop * _F(0.78) - _F(1.8) * (1 - uu)
    aribs = np.clip((np.cos(ant * _F(2 * math.pi)) - _F(0.55)) * _F(1 / 0.45), 0.0, 1.0)
    aribs *= _ramp(uu - _F(0.4), 0.12)
    density += cage * _F(ex.bone) * (_F(0.1) * np.sqrt(ribs) + _F(0.04) * aribs)
    # clavicles: from the midline outwards and up, across the apices
    cu = np.clip(uu, 0.0, 1.2)
    cy = _F(an.clavicle) - _F(0.1) * cu + _F(0.02) * cu * cu
    clav = np.exp(-(((y - cy) * _F(1 / 0.014)) ** 2)) * _ramp(uu - _F(0.06), 0.04)
    clav *= _ramp(_F(0.95) - uu, 0.08)
    density += _F(0.16 * ex.bone) * clav

    # hila and lung vessels: tapering branches from each hilum (drawn in the lung's window)
    for side in (-1, 1):
        hxs, hys = cx + side * (an.mediastinum + 0.03), an.top + 0.26
        reach_x = (cx, cx + side * (an.lung_offset + an.lung_lateral + 0.02))
        win = _window(n, (min(reach_x), an.top, max(reach_x), an.base[1] + an.dome), 0.0)
        if win is None:
            continue
        xs, ys = x[win], y[win]
        dxh, dyh = (xs - _F(hxs)) * _F(side), ys - _F(hys)
        rr = np.sqrt(dxh * dxh + dyh * dyh) + _F(1e-4)
        theta = np.arctan2(dyh, dxh)
        vessels = np.zeros_like(xs)
        for _ in range(14):
            a0 = _u(rng, -1.4, 1.9)  # from up-lateral to down, into the lung
            bend = _u(rng, -1.0, 1.0)
            r0, r1 = _u(rng, 0.0, 0.1), _u(rng, 0.12, 0.3)
            width = _u(rng, 0.004, 0.008) + 0.8 / n
            # distance across the branch, in widths that shrink towards its end
            off = (theta - _F(a0) - _F(bend) * rr) * rr * _F(1 / width)
            off /= np.maximum(_F(1.0) - _F(0.6 / r1) * rr, _F(0.3))
            taper = np.clip((_F(r1) - rr) * _F(1 / (r1 - r0)), 0.0, 1.0)
            taper *= np.clip((rr - _F(r0)) * _F(50.0), 0.0, 1.0)
            np.maximum(vessels, np.clip(1 - off * off, 0.0, 1.0) * taper, out=vessels)
        hilum = np.exp(-((rr * _F(1 / 0.045)) ** 2))
        density[win] += (_F(0.1) * vessels + _F(0.1) * hilum) * (lungs[win] + _F(0.15) * body[win])
    # breasts over the lung bases, gastric bubble under the image-right hemidiaphragm
    if an.breast > 0:
        for side in (-1, 1):
            bx, by = cx + side * (an.lung_offset + 0.05), an.base[(side + 1) // 2] - 0.01
            rb = ((x - _F(bx)) * _F(1 / 0.17)) ** 2 + ((y - _F(by)) * _F(1 / 0.1)) ** 2
            density += _F(an.breast) * _ramp(1 - rb, 0.4) * body
    if an.gastric > 0:
        gx, gy = cx + an.lung_offset * 0.9, an.base[1] + 0.05
        rg = ((x - _F(gx)) * _F(1 / 0.05)) ** 2 + ((y - _F(gy)) * _F(1 / 0.028)) ** 2
        density -= _F(0.18 * an.gastric) * _ramp(1 - rg, 0.3) * np.clip(_F(1.0) - heart, 0, 1)
    return density, lungs


def _draw(
    density: np.ndarray, lungs: np.ndarray, rng: np.random.Generator, f: Finding, n: int
) -> None:
    """Add one finding to the density, inside its box."""
    if f.label in ANATOMY:
        return  # the anatomy (a wider heart, a wider knob)
    x1, y1, x2, y2 = f.box
    win = _window(n, f.box, 0.0)
    if win is None:
        return
    x, y = (g[win] for g in _grid(n))
    lung = lungs[win]
    e = max(1.5 / n, 0.003)
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    hx, hy = max((x2 - x1) / 2, 0.5 / n), max((y2 - y1) / 2, 0.5 / n)
    u, v = (x - _F(mx)) * _F(1 / hx), (y - _F(my)) * _F(1 / hy)
    r = np.sqrt(u * u + v * v)
    small = min(hx, hy)
    vis = f.visibility
    label = f.label
    add: np.ndarray
    if label == "nodule_mass":
        theta = np.arctan2(v, u)
        rr = r * (1 + _F(_u(rng, 0.0, 0.12)) * np.cos(theta * 3 + _F(_u(rng, 0, 6.3))))
        add = _F(vis * _u(rng, 0.12, 0.28)) * _ramp((1 - rr) * _F(small), e * 2)
        add *= 1 - _F(0.35) * rr * rr  # denser in the centre
    elif label == "calcification":
        add = np.zeros_like(x)
        for _ in range(int(rng.integers(1, 4))):
            px, py = _u(rng, -0.45, 0.45), _u(rng, -0.45, 0.45)
            rad = _u(rng, 0.35, 0.55)
            d = np.sqrt((u - _F(px)) ** 2 + (v - _F(py)) ** 2)
            add = np.maximum(add, _ramp((_F(rad) - d) * _F(small), e))
        add *= _F(vis * _u(rng, 0.3, 0.55))
    elif label == "other_lesion":
        if f.kind == 1:  # a thick-walled cavity: a ring with a darker centre
            ring = _ramp((1 - r) * _F(small), e) - _F(0.7) * _ramp((_F(0.6) - r) * _F(small), e)
            add = _F(vis * _u(rng, 0.2, 0.32)) * ring
        else:
            noise = _smooth_noise(rng, x.shape, 3)
            add = _F(vis * _u(rng, 0.15, 0.28)) * _ramp(1 - r + _F(0.15) * noise, 0.25)
    elif label in ("lung_opacity", "infiltration", "consolidation"):
        noise = _smooth_noise(rng, x.shape, 4 if label != "infiltration" else 6)
        if label == "consolidation":  # dense, sharp-ish edges, air bronchograms
            shape = _ramp(1 - r + _F(0.15) * noise, 0.15)
            amp = _u(rng, 0.24, 0.38)
            for _ in range(int(rng.integers(1, 4))):  # air bronchograms: dark branches
                a = f.angle + rng.normal(0.0, 0.5)
                ox, oy = _u(rng, -0.4, 0.4), _u(rng, -0.4, 0.4)
                d = np.abs((u - _F(ox)) * _F(math.sin(a)) - (v - _F(oy)) * _F(math.cos(a)))
                tube = np.exp(-((d * _F(small / max(0.004, 1.0 / n))) ** 2))
                shape = shape * (1 - _F(0.4) * tube * _ramp(_F(0.6) - r, 0.2))
        elif label == "infiltration":  # patchy
            shape = _ramp(1 - r, 0.6) * np.clip(_F(0.55) + _F(0.6) * noise, 0.0, 1.0)
            amp = _u(rng, 0.14, 0.26)
        else:  # hazy
            shape = np.exp(-_F(2.2) * r * r) * (1 + _F(0.2) * noise) * _ramp(1 - r, 0.3)
            amp = _u(rng, 0.13, 0.24)
        add = _F(vis * amp) * shape * (_F(0.15) + _F(0.85) * lung)
    elif label == "ild":  # a fine reticular network over a faint haze
        period = max(0.022, 3.5 / n)
        k = _F(2 * math.pi / period)
        a1, a2 = _u(rng, 0, math.pi), _u(rng, 0, math.pi)
        p1 = np.abs(np.sin((x * _F(math.cos(a1)) + y * _F(math.sin(a1))) * k))
        p2 = np.abs(np.sin((x * _F(math.cos(a2)) + y * _F(math.sin(a2))) * k * _F(1.3)))
        net = np.clip(_F(1.0) - np.minimum(p1, p2) * _F(3.0), 0.0, 1.0)
        env = _ramp(1 - r, 0.4)
        add = _F(vis) * env * (_F(_u(rng, 0.1, 0.18)) * net + _F(0.05)) * (_F(0.3) + lung)
    elif label == "pulmonary_fibrosis":  # coarse streaks towards the hilum, some reticulation
        add = np.zeros_like(x)
        width = max(0.006, 1.2 / n)
        for _ in range(int(rng.integers(3, 7))):
            a = f.angle + rng.normal(0.0, 0.35)
            ox, oy = _u(rng, -0.5, 0.5) * hx, _u(rng, -0.5, 0.5) * hy
            d = np.abs((x - _F(mx + ox)) * _F(math.sin(a)) - (y - _F(my + oy)) * _F(math.cos(a)))
            add = np.maximum(add, np.exp(-((d * _F(1 / width)) ** 2)))
        add *= _ramp(1 - r, 0.3) * _F(vis * _u(rng, 0.15, 0.28)) * (_F(0.4) + _F(0.6) * lung)
    elif label == "atelectasis":  # a plate-like band
        d = np.abs(v * _F(math.cos(f.angle)) - u * _F(math.sin(f.angle) * hx / hy))
        add = np.exp(-((d * _F(1 / 0.45)) ** 2)) * _ramp(1 - r, 0.3)
        add *= _F(vis * _u(rng, 0.22, 0.36)) * (_F(0.4) + _F(0.6) * lung)
    elif label == "pleural_effusion":  # fluid in the costophrenic angle, a meniscus laterally
        side = f.side
        w = np.clip((x - _F(x1 if side < 0 else x2)) * _F(-side / (x2 - x1)), 0.0, 1.0)
        w = 1 - w  # 1 at the lateral edge, 0 medially
        meniscus = _F(y2) - _F(y2 - y1) * (_F(0.25) + _F(0.75) * w * w)
        fluid = _ramp(y - meniscus, e * 3)
        add = _F(vis * _u(rng, 0.3, 0.45)) * fluid * (_F(0.1) + _F(0.9) * lung)
    elif label == "pleural_thickening":
        if f.kind == 0:  # an apical cap, thickest at the top
            along = np.clip((y - _F(y1)) * _F(1 / (y2 - y1)), 0.0, 1.0)
            add = (1 - along) ** 2 * _ramp(1 - np.abs(u), 0.4)
        else:  # a band along the lateral chest wall
            side = f.side
            outer = x2 if side > 0 else x1
            along = np.clip(np.abs(x - _F(outer)) * _F(1 / (x2 - x1)), 0.0, 1.0)
            add = (1 - along) ** 2 * _ramp(1 - np.abs(v), 0.4)
        add *= _F(vis * _u(rng, 0.3, 0.45)) * (_F(0.15) + _F(0.85) * lung)
    else:  # pragma: no cover
        raise ValueError(label)
    density[win] += add


def render_frame(spec: tuple) -> np.ndarray:
    """One PA chest radiograph as uint8 (size, size), from its `ChestPlan.frame_spec`."""
    seed, exam, an, ex, findings, n = spec
    rng = np.random.default_rng([seed, 42, exam])
    density, lungs = _chest(rng, an, ex, n)
    for k, f in enumerate(findings):
        _draw(density, lungs, np.random.default_rng([seed, 43, exam, k]), f, n)
    y = _grid(n)[1]
    density = _blur(density, 0.4 + 0.6 * ex.blur)
    noise = rng.standard_normal((n, n), dtype=_F)
    density += _blur(noise, 1.0) * _F(ex.noise * 1.6)
    density *= _F(1.0) + _F(ex.heel) * (y - _F(0.5))
    density += _F(0.04) * _smooth_noise(rng, (n, n), 3)  # uneven exposure / scatter
    disp = np.clip((density - _F(ex.lo)) * _F(1 / (ex.hi - ex.lo)), 0.0, 1.0) ** _F(ex.gamma)
    img = (disp * _F(255.0) + _F(0.5)).astype(np.uint8)
    if ex.marker:  # a lead side marker in a top corner, outside the lungs
        s = max(2, n // 40)
        j0 = n // 20 if ex.marker < 0 else n - n // 20 - 2 * s
        img[n // 20 : n // 20 + 2 * s, j0 : j0 + 2 * s] = 235
        img[n // 20 + s // 2 : n // 20 + 2 * s - s // 2, j0 + s // 2 : j0 + s] = 120
    return img
