"""A synthetic cardiac-MR archive shaped like paper 001's UK Biobank subsets (§3, supp. Table 2).

Paper 001 clusters UK Biobank cardiac MR images into the 13 sequence/view categories of the
study's naming convention, on three subsets: (i) the three long-axis cine views, balanced
(47,637 images); (ii) all 13 categories (192,272); (iii) all 13, smaller and highly imbalanced
(23,943: one short-axis stack of ~10 slices per visit against one image of most other series).
Its introduction motivates the clustering with unreliable DICOM metadata (Gueld et al.: 15 % of
Body Part Examined tags wrong), so every series here also carries a `series_description` header
that names a wrong category for `metadata_error` of the series.

Like archive.py, two steps: `plan_cardiac` draws patients → visits (exams) → series → slices,
the anatomy of every patient, the scanner of every visit, the headers and the patient-disjoint
splits without any pixels; `write_cardiac` renders the PNGs in parallel (archive.write_frames)
and writes the dataset in the contract of docs/data-contract.md. Every image comes from
generators seeded by (seed, exam, image) and (seed, exam, acquisition), so the output is
byte-identical for a given seed and size whatever the number of worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.contract import IMAGES_DIR, DatasetInfo, label_column
from medssl.data.splitting import assign_splits
from medssl.data.synth.archive import write_frames
from medssl.data.synth.ultrasound import _local, _upsampler

__all__ = [
    "CLASSES",
    "LA_CLASSES",
    "LONG_NAMES",
    "PAPER_COUNTS",
    "SIZES",
    "CardiacPlan",
    "plan_cardiac",
    "write_cardiac",
]

# UK Biobank's naming of the 13 sequence/view categories (paper 001 §3), in protocol order.
CLASSES: tuple[str, ...] = (
    "sa",
    "la_2ch",
    "la_3ch",
    "la_4ch",
    "lvot",
    "ao",
    "flow",
    "flow_mag",
    "flow_pha",
    "shmolli",
    "shmolli_fitpar",
    "shmolli_t1map",
    "cine_tag",
)
LA_CLASSES: tuple[str, ...] = ("la_2ch", "la_3ch", "la_4ch")
LONG_NAMES: dict[str, str] = {
    "sa": "short-axis cine (bSSFP stack, base to apex)",
    "la_2ch": "long-axis cine, 2-chamber view",
    "la_3ch": "long-axis cine, 3-chamber view",
    "la_4ch": "long-axis cine, 4-chamber view",
    "lvot": "left-ventricular outflow tract cine",
    "ao": "aortic distensibility cine (transverse, ascending and descending aorta)",
    "flow": "phase-contrast flow at the aortic valve, combined (speed-weighted) image",
    "flow_mag": "phase-contrast flow at the aortic valve, magnitude image",
    "flow_pha": "phase-contrast flow at the aortic valve, phase (velocity) image",
    "shmolli": "ShMOLLI T1 mapping, inversion-recovery source image",
    "shmolli_fitpar": "ShMOLLI T1 mapping, fit-parameter map",
    "shmolli_t1map": "ShMOLLI T1 mapping, T1 map",
    "cine_tag": "tagged cine (short axis, grid tagging)",
}

# Paper 001, supplementary Table 2: images per category of dataset (iii) and dataset (i).
PAPER_COUNTS: dict[str, dict[str, int]] = {
    "iii": {
        "sa": 10339, "la_2ch": 990, "la_3ch": 992, "la_4ch": 990, "lvot": 979, "ao": 982,
        "flow": 971, "flow_mag": 971, "flow_pha": 971, "shmolli": 944, "shmolli_fitpar": 944,
        "shmolli_t1map": 944, "cine_tag": 2926,
    },
    "i": {"la_2ch": 15868, "la_3ch": 15889, "la_4ch": 15880},
}  # fmt: skip
# Visits behind each setting: at most 992 series of one category in (iii), 15,889 in (i); a few
# visits miss a series ("the odd missing series").
SETTING_EXAMS: dict[str, int] = {"iii": 1000, "i": 15_900}
# Series (not images) per setting for the multi-slice categories: a short-axis stack has ≈ 10.5
# slices (10,339 / 985), a tagging series 3 (UK Biobank's 3-slice tagging, a few with a slice less).
SETTING_SERIES: dict[str, dict[str, int]] = {"iii": {"sa": 985, "cine_tag": 976}, "i": {}}
SLICE_RANGE: dict[str, tuple[int, int]] = {"sa": (6, 15), "cine_tag": (2, 3)}
SLICE_START: dict[str, float] = {"sa": 10.5, "cine_tag": 3.0}
EXAMS_PER_PATIENT = 1.1  # UK Biobank: a first imaging visit, some patients a repeat visit

# A wrong header names a plausible neighbour (same plane or same acquisition) with this chance.
PLAUSIBLE_SHARE = 0.75
CONFUSIONS: dict[str, tuple[str, ...]] = {
    "sa": ("cine_tag", "shmolli"),
    "la_2ch": ("la_4ch", "la_3ch"),
    "la_3ch": ("lvot", "la_2ch"),
    "la_4ch": ("la_2ch", "la_3ch"),
    "lvot": ("la_3ch", "ao"),
    "ao": ("flow", "flow_mag", "lvot"),
    "flow": ("flow_mag", "flow_pha"),
    "flow_mag": ("flow", "flow_pha"),
    "flow_pha": ("flow", "flow_mag"),
    "shmolli": ("shmolli_t1map", "shmolli_fitpar"),
    "shmolli_fitpar": ("shmolli_t1map", "shmolli"),
    "shmolli_t1map": ("shmolli_fitpar", "shmolli"),
    "cine_tag": ("sa",),
}


@dataclass(frozen=True)
class SizePreset:
    setting: str  # "iii": 13 imbalanced categories; "i": the 3 long-axis views, balanced
    exams: int
    image_size: int


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset("iii", exams=13, image_size=32),  # ≈ 310 images, for tests
    "small": SizePreset("iii", exams=167, image_size=64),  # ≈ 4,000
    "small-3": SizePreset("i", exams=1000, image_size=64),  # ≈ 3,000
    "paper": SizePreset("iii", exams=1000, image_size=128),  # 23,943 exactly
    "paper-3": SizePreset("i", exams=15_900, image_size=128),  # 47,637 exactly
}


def setting_classes(setting: str) -> tuple[str, ...]:
    return CLASSES if setting == "iii" else LA_CLASSES


# --- who and where: per patient and per visit ------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """One patient's body and heart (image widths, radians); the same at every visit."""

    body_cx: float
    body_cy: float
    body_a: float  # half-width of the chest
    body_b: float  # half-height
    fat: float  # subcutaneous fat thickness
    heart_dx: float  # LV centre relative to the chest centre
    heart_dy: float
    heart: float  # LV outer radius at the base
    heart_angle: float  # in-plane rotation of the heart
    wall: float  # LV wall thickness / radius
    rv: float  # RV size relative to the LV
    aorta: float  # aortic radius
    atrium: float  # atrial size relative to the LV

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Anatomy:
        return cls(
            body_cx=_u(rng, 0.47, 0.53),
            body_cy=_u(rng, 0.49, 0.55),
            body_a=_u(rng, 0.38, 0.47),
            body_b=_u(rng, 0.27, 0.36),
            fat=_u(rng, 0.012, 0.04),
            heart_dx=_u(rng, 0.03, 0.1),
            heart_dy=_u(rng, -0.04, 0.04),
            heart=_u(rng, 0.085, 0.12),
            heart_angle=_u(rng, -0.35, 0.35),
            wall=_u(rng, 0.22, 0.36),
            rv=_u(rng, 0.8, 1.25),
            aorta=_u(rng, 0.03, 0.048),
            atrium=_u(rng, 0.7, 1.0),
        )


@dataclass(frozen=True)
class Scanner:
    """One visit's acquisition: receive-coil shading, noise and contrast (shared by its series)."""

    noise: float  # noise sd relative to bright blood
    shading: float  # strength of the coil-sensitivity gradient
    shading_angle: float  # its direction
    contrast: float  # display gamma
    blood: float  # multipliers of the tissue signals
    myo: float
    fat: float
    t1_bias: float  # field-strength / sequence bias of the T1 values
    zoom: float  # field of view: larger shows the anatomy bigger

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Scanner:
        return cls(
            noise=_u(rng, 0.02, 0.06),
            shading=_u(rng, 0.15, 0.7),
            shading_angle=_u(rng, 0.0, 2 * math.pi),
            contrast=_u(rng, 0.8, 1.2),
            blood=_u(rng, 0.85, 1.1),
            myo=_u(rng, 0.85, 1.2),
            fat=_u(rng, 0.8, 1.15),
            t1_bias=_u(rng, 0.95, 1.05),
            zoom=_u(rng, 0.85, 1.2),
        )


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class CardiacPlan:
    """Everything about a cardiac-MR archive but its pixels."""

    info: DatasetInfo
    manifest: pd.DataFrame  # contract columns + series_id, series_description
    category: np.ndarray  # per manifest row: index into info.classes (the truth)
    exam_index: np.ndarray  # per manifest row
    image_index: np.ndarray  # per manifest row, within its exam
    series_number: np.ndarray  # per manifest row, within its exam (1-based)
    slice_position: np.ndarray  # per manifest row: 0 … 1 base to apex (stacks), else 0.5
    anatomies: list[Anatomy]  # per patient
    scanners: list[Scanner]  # per exam
    exam_patient: np.ndarray  # per exam: patient index
    seed: int
    reports: pd.DataFrame | None = None  # no reports in this archive

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.info.classes)

    def truth(self) -> np.ndarray:
        """The true category of every image (also the unlabeled ones), one-hot: bool (N, C)."""
        return np.eye(len(self.classes), dtype=bool)[self.category]

    def header_accuracy(self) -> float:
        """Share of images whose `series_description` names their true category."""
        truth = np.asarray(self.classes, dtype=object)[self.category]
        return float((self.manifest["series_description"].to_numpy(dtype=object) == truth).mean())

    def frame_spec(self, row: int) -> tuple:
        """What `render_frame` needs for row `row` (plain, picklable data)."""
        exam = int(self.exam_index[row])
        name = self.classes[int(self.category[row])]
        return (
            self.seed,
            exam,
            int(self.image_index[row]),
            name,
            float(self.slice_position[row]),
            _acquisition(name, int(self.series_number[row])),
            self.anatomies[int(self.exam_patient[exam])],
            self.scanners[exam],
            self.info.image_size,
        )

    def render(self, row: int) -> np.ndarray:
        """The pixels of manifest row `row`, exactly as `write_cardiac` writes them."""
        return render_frame(self.frame_spec(row))


def _acquisition(name: str, series_number: int) -> int:
    """Images of one acquisition share their geometry: the slices of a series, and the three
    reconstructions of one flow or one ShMOLLI acquisition."""
    if name.startswith("flow"):
        return 100
    if name.startswith("shmolli"):
        return 101
    return series_number


def plan_cardiac(
    size: str,
    seed: int,
    split_fractions: Mapping[str, float],
    metadata_error: float = 0.15,
) -> CardiacPlan:
    """Draw the archive's patients, visits, series, slices, headers and patient-disjoint splits."""
    if size not in SIZES:
        raise ValueError(f"unknown cardiac-mr size {size!r} (sizes: {', '.join(SIZES)})")
    if not 0.0 <= metadata_error <= 1.0:
        raise ValueError(f"metadata_error must be in [0, 1], got {metadata_error}")
    preset = SIZES[size]
    classes = setting_classes(preset.setting)
    rng = np.random.default_rng([seed, 10])
    n_exams = preset.exams
    n_patients = max(1, round(n_exams / EXAMS_PER_PATIENT))
    exam_patient = np.concatenate(
        [np.arange(n_patients), rng.integers(0, n_patients, n_exams - n_patients)]
    )
    rng.shuffle(exam_patient)
    anatomies = [Anatomy.sample(rng) for _ in range(n_patients)]
    scanners = [Scanner.sample(rng) for _ in range(n_exams)]

    # slices[e, c]: images of category c in exam e (0: the exam has no such series)
    slices = np.zeros((n_exams, len(classes)), dtype=np.int64)
    for c, name in enumerate(classes):
        slices[:, c] = _series_slices(rng, preset, name, n_exams)

    exam_index, category, series_number, slice_pos = [], [], [], []
    image_index = []
    for e in range(n_exams):
        k = 0
        i = 0
        for c in range(len(classes)):
            m = int(slices[e, c])
            if not m:
                continue
            k += 1
            for j in range(m):
                exam_index.append(e)
                category.append(c)
                series_number.append(k)
                slice_pos.append((j + 0.5) / m if m > 1 else 0.5)
                image_index.append(i)
                i += 1
    exam_index_arr = np.asarray(exam_index, dtype=np.int64)
    category_arr = np.asarray(category, dtype=np.int64)
    series_arr = np.asarray(series_number, dtype=np.int64)

    # the header: one per series, wrong for exactly round(metadata_error * series) of them
    series_key = exam_index_arr * 100 + series_arr
    first = np.r_[True, series_key[1:] != series_key[:-1]]
    series_of_row = np.cumsum(first) - 1
    series_category = category_arr[first]
    n_series = len(series_category)
    header = series_category.copy()
    wrong = rng.choice(n_series, size=round(metadata_error * n_series), replace=False)
    for s in np.sort(wrong):
        header[s] = _wrong_header(rng, classes, int(series_category[s]))

    exam_ids = np.array([f"E{e:06d}" for e in range(n_exams)], dtype=object)
    patient_ids = np.array([f"P{p:06d}" for p in range(n_patients)], dtype=object)
    slice_in_series = _slice_in_series(first)
    manifest = pd.DataFrame(
        {
            "image": [
                f"{IMAGES_DIR}/{exam_ids[e]}/{k:02d}_{j:02d}.png"
                for e, k, j in zip(exam_index_arr, series_arr, slice_in_series, strict=True)
            ],
            "patient_id": patient_ids[exam_patient[exam_index_arr]],
            "exam_id": exam_ids[exam_index_arr],
            "lesion_id": pd.array([pd.NA] * len(exam_index_arr), dtype="string"),
        }
    )
    manifest["split"] = assign_splits(manifest, split_fractions, seed)
    labeled = (manifest["split"] != "unlabeled").to_numpy()
    onehot = np.eye(len(classes), dtype="int8")[category_arr]
    for c, name in enumerate(classes):
        manifest[label_column(name)] = pd.array(onehot[:, c], dtype="Int8")
        manifest.loc[~labeled, label_column(name)] = pd.NA
    manifest["series_id"] = pd.array(
        [f"{exam_ids[e]}-S{k:02d}" for e, k in zip(exam_index_arr, series_arr, strict=True)],
        dtype="string",
    )
    names = np.asarray(classes, dtype=object)
    manifest["series_description"] = pd.array(names[header[series_of_row]], dtype="string")

    setting = "(iii) 13 imbalanced categories" if preset.setting == "iii" else "(i) LA 2/3/4ch"
    info = DatasetInfo(
        name=f"cardiac-mr-{size}",
        task="multilabel",
        classes=list(classes),
        modality="MR",
        image_size=preset.image_size,
        channels=1,
        version=f"synth-{size}-seed{seed}",
        description=(
            f"Synthetic cardiac MR archive shaped like paper 001's UK Biobank subset {setting}: "
            "patients → visits → series → slices; one category per image (one-hot labels); "
            f"series_description is the DICOM header, wrong for {metadata_error:.0%} of series."
        ),
        attributes=["series_id", "series_description"],
    )
    return CardiacPlan(
        info=info,
        manifest=manifest,
        category=category_arr,
        exam_index=exam_index_arr,
        image_index=np.asarray(image_index, dtype=np.int64),
        series_number=series_arr,
        slice_position=np.asarray(slice_pos, dtype=np.float64),
        anatomies=anatomies,
        scanners=scanners,
        exam_patient=exam_patient,
        seed=seed,
    )


def _slice_in_series(first: np.ndarray) -> np.ndarray:
    """Position of each row within its series (rows of a series are consecutive)."""
    idx = np.arange(len(first))
    starts = np.maximum.accumulate(np.where(first, idx, 0))
    return idx - starts


def _series_slices(
    rng: np.random.Generator, preset: SizePreset, name: str, n_exams: int
) -> np.ndarray:
    """Images of category `name` per exam: which exams have the series and how many slices, with
    the category's total scaled exactly from paper 001's Table 2."""
    ref_exams = SETTING_EXAMS[preset.setting]
    count = PAPER_COUNTS[preset.setting][name]
    scale = n_exams / ref_exams
    total = round(count * scale)
    lo, hi = SLICE_RANGE.get(name, (1, 1))
    series = round(SETTING_SERIES[preset.setting].get(name, count) * scale)
    series = min(n_exams, max(series, -(-total // hi)), total // lo)
    out = np.zeros(n_exams, dtype=np.int64)
    if series == 0:
        return out
    present = np.sort(rng.choice(n_exams, size=series, replace=False))
    if name == "sa":
        counts = np.clip(rng.poisson(SLICE_START[name], series), lo, hi)
    else:
        counts = np.full(series, round(SLICE_START.get(name, 1.0)), dtype=np.int64)
    while (diff := total - int(counts.sum())) != 0:  # nudge random series by one slice
        step = 1 if diff > 0 else -1
        idx = rng.choice(series, size=min(abs(diff), series), replace=False)
        ok = idx[(counts[idx] + step >= lo) & (counts[idx] + step <= hi)]
        counts[ok] += step
    out[present] = counts
    return out


def _wrong_header(rng: np.random.Generator, classes: tuple[str, ...], true: int) -> int:
    """A wrong category for a series header: a plausible neighbour more often than not."""
    name = classes[true]
    plausible = [classes.index(c) for c in CONFUSIONS[name] if c in classes]
    if plausible and rng.random() < PLAUSIBLE_SHARE:
        return int(plausible[int(rng.integers(len(plausible)))])
    others = [c for c in range(len(classes)) if c != true]
    return int(others[int(rng.integers(len(others)))])


def write_cardiac(plan: CardiacPlan, out: Path, workers: int = 0, progress: bool = True) -> Path:
    """Render every image and write the dataset folder (staged: complete at `out` or absent)."""
    specs = [plan.frame_spec(row) for row in range(len(plan.manifest))]
    return write_frames(
        out, plan.info, plan.manifest, plan.reports, plan.exam_index, specs, render_frame,
        workers=workers, progress=progress,
    )  # fmt: skip


# --- pixels -------------------------------------------------------------------------------------

_F = np.float32


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = ((np.arange(size, dtype=_F) + _F(0.5)) / _F(size)).astype(_F)
    x, y = np.meshgrid(coords, coords)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


class _Canvas:
    """A signal map being drawn (arbitrary units, bright blood ≈ 1) and, for phase-contrast
    images, the through-plane velocity of each pixel (-1 … 1 of the encoding velocity)."""

    def __init__(self, size: int, view: tuple[float, float, float, float], soft: float = 1.0):
        self.n = size
        self.x, self.y = _grid(size)
        self.img = np.zeros((size, size), dtype=_F)
        self.vel = np.zeros((size, size), dtype=_F)
        self.soft = soft  # edge width in pixels (lower-resolution sequences: wider)
        # scene → image: the planned slice's shift, in-plane rotation and field of view
        self.tx, self.ty, self.rot, self.zoom = view

    def _map(self, x: float, y: float) -> tuple[float, float]:
        dx, dy = x - 0.5, y - 0.5
        c, s = math.cos(self.rot), math.sin(self.rot)
        return (
            0.5 + self.tx + self.zoom * (dx * c - dy * s),
            0.5 + self.ty + self.zoom * (dx * s + dy * c),
        )

    def inside(self, cx: float, cy: float, a: float, b: float) -> np.ndarray:
        """Boolean (n, n): the pixels inside an (unrotated) ellipse of the scene."""
        cx, cy = self._map(cx, cy)
        a, b = a * self.zoom, b * self.zoom
        u, v = _local(self.x, self.y, cx, cy, self.rot)
        return (u * _F(1 / a)) ** 2 + (v * _F(1 / b)) ** 2 < 1.0

    def _window(self, x0: float, x1: float, y0: float, y1: float):
        n = self.n
        c0, c1 = max(0, int(x0 * n) - 1), min(n, int(x1 * n) + 2)
        r0, r1 = max(0, int(y0 * n) - 1), min(n, int(y1 * n) + 2)
        if c0 >= c1 or r0 >= r1:
            return None
        sl = (slice(r0, r1), slice(c0, c1))
        return sl, self.x[sl], self.y[sl]

    def _paint(self, sl, alpha: np.ndarray, value: float, vel: float | np.ndarray) -> None:
        img = self.img[sl]
        img += alpha * (_F(value) - img)
        v = self.vel[sl]
        v += alpha * (vel - v)

    def ellipse(
        self,
        cx: float,
        cy: float,
        a: float,
        b: float,
        ang: float,
        value: float,
        *,
        taper: float = 0.0,
        vel: float = 0.0,
        profile: bool = False,
    ) -> None:
        """A soft ellipse (half-axes a along `ang`, b across), narrowing by `taper` towards +a.
        `profile`: the velocity is parabolic (laminar flow), peaking at `vel` in the centre."""
        cx, cy = self._map(cx, cy)
        a, b, ang = a * self.zoom, b * self.zoom, ang + self.rot
        reach = max(a, b * (1 + taper)) + 2.0 / self.n
        win = self._window(cx - reach, cx + reach, cy - reach, cy + reach)
        if win is None:
            return
        sl, x, y = win
        u, v = _local(x, y, cx, cy, ang)
        if taper:
            bb = _F(b) * (1.0 - _F(taper) * np.clip(u * _F(1 / a), -1.0, 1.0))
            f = (u * _F(1 / a)) ** 2 + (v / bb) ** 2
        else:
            f = (u * _F(1 / a)) ** 2 + (v * _F(1 / b)) ** 2
        k = max(1.5, self.n * min(a, b) / (2.4 * self.soft))
        alpha = np.clip((1.0 - f) * _F(k), 0.0, 1.0)
        velocity = _F(vel) * np.clip(1.0 - f, 0.0, 1.0) * _F(1.5) if profile and vel else vel
        self._paint(sl, alpha, value, velocity)

    def circle(self, cx: float, cy: float, r: float, value: float, **kw) -> None:
        self.ellipse(cx, cy, r, r, 0.0, value, **kw)

    def tube(
        self, points: list[tuple[float, float]], r: float, value: float, vel: float = 0.0
    ) -> None:
        """A vessel of radius r along a polyline (soft capsules)."""
        points = [self._map(x, y) for x, y in points]
        r *= self.zoom
        for (x0, y0), (x1, y1) in pairwise(points):
            win = self._window(min(x0, x1) - r, max(x0, x1) + r, min(y0, y1) - r, max(y0, y1) + r)
            if win is None:
                continue
            sl, x, y = win
            dx, dy = x1 - x0, y1 - y0
            length2 = max(dx * dx + dy * dy, 1e-12)
            t = np.clip(((x - _F(x0)) * _F(dx) + (y - _F(y0)) * _F(dy)) * _F(1 / length2), 0, 1)
            dist = np.hypot(x - _F(x0) - t * _F(dx), y - _F(y0) - t * _F(dy))
            alpha = np.clip((_F(r) - dist) * _F(self.n / (1.2 * self.soft)) + 0.5, 0.0, 1.0)
            self._paint(sl, alpha, value, vel)


def _at(cx: float, cy: float, ang: float, du: float, dv: float) -> tuple[float, float]:
    """The point (du along `ang`, dv across) from (cx, cy)."""
    c, s = math.cos(ang), math.sin(ang)
    return cx + du * c - dv * s, cy + du * s + dv * c


# Tissue signals per contrast (before the scanner's multipliers and a per-image jitter):
# bSSFP cine (bright blood, bright fat), spoiled gradient echo (tagging, flow), the ShMOLLI
# inversion-recovery source image (nulled myocardium), the T1 map (T1 / 2,000 ms) and a fit
# parameter map (an amplitude-like parameter).
_PALETTES: dict[str, dict[str, float]] = {
    "ssfp": dict(blood=0.92, myo=0.2, muscle=0.27, fat=0.75, lung=0.035, liver=0.3, bone=0.36,
                 csf=0.7),
    "gre": dict(blood=0.62, myo=0.3, muscle=0.32, fat=0.5, lung=0.03, liver=0.33, bone=0.3,
                csf=0.2),
    "ir": dict(blood=0.45, myo=0.05, muscle=0.06, fat=0.6, lung=0.02, liver=0.16, bone=0.25,
               csf=0.1),
    "t1": dict(blood=0.78, myo=0.48, muscle=0.5, fat=0.14, lung=0.3, liver=0.31, bone=0.45,
               csf=1.0),
    "fit": dict(blood=0.5, myo=0.62, muscle=0.6, fat=0.85, lung=0.2, liver=0.7, bone=0.55,
                csf=0.4),
}  # fmt: skip


def _palette(kind: str, scan: Scanner, rng: np.random.Generator) -> dict[str, float]:
    p = {k: v * _u(rng, 0.92, 1.08) for k, v in _PALETTES[kind].items()}
    if kind == "t1":  # quantitative: only the scanner's bias, no contrast multipliers
        return {k: v * scan.t1_bias for k, v in p.items()}
    if kind == "ir":  # the inversion time moves myocardium and blood around the null
        ti = _u(rng, 0.0, 1.0)
        p["myo"] += 0.2 * ti
        p["muscle"] += 0.2 * ti
        p["blood"] += 0.25 * ti
    p["blood"] *= scan.blood
    p["myo"] *= scan.myo
    p["fat"] *= scan.fat
    return p


def _thorax(
    cv: _Canvas, an: Anatomy, p: dict[str, float], geo: np.random.Generator, lungs: float = 1.0
) -> None:
    """Chest: subcutaneous fat, muscle, both lungs (with vessels), spine, descending aorta.
    `lungs`: their size (the transverse sections above the heart cut through more lung)."""
    bx, by, ba, bb = an.body_cx, an.body_cy, an.body_a, an.body_b
    cv.ellipse(bx, by, ba, bb, 0.0, p["fat"])
    cv.ellipse(bx, by + an.fat * 0.3, ba - an.fat, bb - an.fat, 0.0, p["muscle"])
    for side in (-1.0, 1.0):
        off = _u(geo, 0.45, 0.55) if lungs > 1 else _u(geo, 0.55, 0.64)
        lx, ly = bx + side * ba * off, by - bb * _u(geo, 0.0, 0.12)
        la, lb = ba * _u(geo, 0.24, 0.3) * lungs, bb * _u(geo, 0.45, 0.58) * lungs
        cv.ellipse(lx, ly, lb, la, math.pi / 2 + side * _u(geo, 0.0, 0.25), p["lung"])
        for _ in range(int(geo.integers(1, 4))):  # pulmonary vessels: small bright dots
            vx, vy = _at(lx, ly, _u(geo, 0, 6.3), _u(geo, 0.0, 0.6) * la, 0.0)
            cv.circle(vx, vy, _u(geo, 0.004, 0.01), p["blood"] * 0.6)
    sx, sy = bx, by + bb * 0.74
    cv.ellipse(sx, sy, 0.05, 0.042, 0.0, p["bone"])
    cv.circle(sx, sy + 0.055, 0.016, p["csf"])
    cv.circle(sx + 0.06, sy - 0.07, an.aorta * 0.8, p["blood"], vel=-0.55, profile=True)


def _short_axis(
    cv: _Canvas,
    an: Anatomy,
    p: dict[str, float],
    geo: np.random.Generator,
    t: float,
    shift: tuple[float, float] = (0.0, 0.0),
) -> None:
    """A short-axis slice at t (0 base … 1 apex): LV ring with bright pool in bright epicardial
    fat, RV crescent on the septal side, papillary muscles mid-ventricle, the liver under apical
    slices; basal slices cut the aortic root."""
    _thorax(cv, an, p, geo)
    ang = an.heart_angle + _u(geo, -0.15, 0.15)
    r0 = an.heart * _u(geo, 0.95, 1.05)
    hx = an.body_cx + an.heart_dx + shift[0] + 0.025 * t
    hy = an.body_cy + an.heart_dy + shift[1] + 0.015 * t
    r = r0 * (1.0 - 0.55 * t**1.5)
    w = r0 * an.wall * (1.0 + 0.15 * t)
    ri = max(r - w, 0.0) * (1.0 - 0.45 * t**2)
    ecc = _u(geo, 0.9, 1.0)
    if t > 0.3:  # liver below the heart
        lx, ly = _at(hx, hy, ang, -0.08, r + 0.1 + 0.05 * (1 - t))
        cv.ellipse(lx, ly, 0.17, 0.09, ang + 0.3, p["liver"])
    cv.ellipse(hx - r * 0.2, hy, r * 1.5, r * 1.25 * ecc, ang, p["fat"] * _u(geo, 0.4, 0.8))
    if t < 0.9:
        rv = an.rv * r0 * (1.0 - 0.7 * t)
        rx, ry = _at(hx, hy, ang, -(r * 0.7 + rv * 0.45), -0.15 * r)
        cv.ellipse(rx, ry, rv * 1.25 + 0.008, rv * 0.85 + 0.008, ang + 0.25, p["myo"])
        cv.ellipse(rx, ry, rv * 1.25, rv * 0.85, ang + 0.25, p["blood"])
    cv.ellipse(hx, hy, r, r * ecc, ang, p["myo"])
    if ri > 0.3 / cv.n:
        cv.ellipse(hx, hy, ri, ri * ecc, ang, p["blood"])
    if 0.2 < t < 0.8 and ri > 0:
        for a in (0.9, 2.5):
            px, py = _at(hx, hy, ang + a, ri * 0.62, 0.0)
            cv.circle(px, py, ri * 0.22, p["myo"])
    if t < 0.15:  # basal slice: the aortic root next to the LV
        ax, ay = _at(hx, hy, ang, -r * 0.35, -r * 1.05)
        cv.circle(ax, ay, an.aorta * 1.2, p["myo"])
        cv.circle(ax, ay, an.aorta * 1.05, p["blood"])


# Long-axis views: direction of the apex from the LV centre (radians, image coordinates).
_APEX_ANGLE: dict[str, float] = {"la_2ch": 2.3, "la_3ch": 2.45, "lvot": 2.25, "la_4ch": 2.5}


def _arc(
    x: float, y: float, ang: float, length: float, bend: float, steps: int = 4
) -> list[tuple[float, float]]:
    """Points of a circular arc from (x, y) leaving at `ang`, turning by `bend` radians."""
    points = [(x, y)]
    for i in range(steps):
        a = ang + bend * (i + 0.5) / steps
        x, y = x + math.cos(a) * length / steps, y + math.sin(a) * length / steps
        points.append((x, y))
    return points


def _long_axis(
    cv: _Canvas, an: Anatomy, p: dict[str, float], geo: np.random.Generator, view: str
) -> None:
    """2/3/4-chamber and LVOT views: an elongated LV with its atrium at the base; 3-chamber and
    LVOT add the outflow tract and aortic root (LVOT: a longer ascending aorta, smaller atrium);
    4-chamber adds the RV beside the septum and the right atrium. The liver lies under the
    diaphragm below the heart."""
    _thorax(cv, an, p, geo)
    phi = _APEX_ANGLE[view] + 0.6 * an.heart_angle + _u(geo, -0.15, 0.15)
    s = an.heart
    a = s * _u(geo, 1.6, 1.85) * (0.92 if view == "lvot" else 1.0)  # LV half-length
    b = s * _u(geo, 0.85, 1.0)
    w = s * an.wall
    hx = an.body_cx + an.heart_dx * 0.5 + _u(geo, -0.02, 0.02)
    hy = an.body_cy + an.heart_dy + _u(geo, -0.02, 0.02)
    if view == "la_4ch":
        hx, hy = _at(hx, hy, phi, 0.0, b * 0.6)
    liver_y = hy + a * abs(math.sin(phi)) * 0.8 + _u(geo, 0.06, 0.12)  # under the diaphragm
    cv.ellipse(hx - _u(geo, 0.05, 0.15), liver_y, 0.2, 0.08, _u(geo, -0.1, 0.4), p["liver"])
    taper = _u(geo, 0.15, 0.3)
    bx, by = _at(hx, hy, phi, -a * 0.92, 0.0)  # mitral valve
    r_la = s * an.atrium * {"la_2ch": 0.85, "la_3ch": 0.8, "lvot": 0.6, "la_4ch": 0.8}[view]
    lax, lay = _at(bx, by, phi, -r_la * 0.85, {"la_3ch": 0.35, "lvot": 0.5}.get(view, 0.0) * b)
    cv.ellipse(hx, hy, a * 1.15, b * 1.3, phi, p["fat"] * _u(geo, 0.4, 0.8), taper=taper)
    walls: list[tuple] = []  # (x, y, a, b, angle, taper): outer outlines painted as myocardium
    pools: list[tuple] = []  # the blood inside them, painted after every wall
    walls.append((lax, lay, r_la + 0.006, r_la * 0.85 + 0.006, phi, 0.0))
    pools.append((lax, lay, r_la, r_la * 0.85, phi, 0.0))
    if view == "la_2ch":  # left atrial appendage
        ax, ay = _at(lax, lay, phi, r_la * 0.3, -r_la * 0.95)
        pools.append((ax, ay, r_la * 0.35, r_la * 0.2, phi + 0.6, 0.0))
    if view == "la_4ch":  # RV beside the septum, right atrium behind it
        rb = b * 0.75 * an.rv
        rx, ry = _at(hx, hy, phi, -a * 0.12, -(b + rb + w * 0.2))
        walls.append((rx, ry, a * 0.82 + 0.006, rb + 0.006, phi, taper))
        pools.append((rx, ry, a * 0.82, rb, phi, taper))
        r_ra = s * an.atrium * 0.75
        rax, ray = _at(rx, ry, phi, -a * 0.82 - r_ra * 0.8, 0.0)
        walls.append((rax, ray, r_ra + 0.006, r_ra + 0.006, phi, 0.0))
        pools.append((rax, ray, r_ra, r_ra, phi, 0.0))
    elif view in ("la_3ch", "lvot"):  # a strip of RV in front of the septum
        rb = b * 0.4 * an.rv
        rx, ry = _at(hx, hy, phi, a * 0.05, -(b + rb + w * 0.2))
        walls.append((rx, ry, a * 0.5 + 0.006, rb + 0.006, phi + 0.1, 0.2))
        pools.append((rx, ry, a * 0.5, rb, phi + 0.1, 0.2))
    for wx in walls:
        cv.ellipse(*wx[:4], wx[4], p["myo"], taper=wx[5])
    cv.ellipse(hx, hy, a, b, phi, p["myo"], taper=taper)
    for px in pools:
        cv.ellipse(*px[:4], px[4], p["blood"], taper=px[5])
    cv.ellipse(hx, hy, a - w * 0.8, b - w, phi, p["blood"], taper=taper)
    if view in ("la_3ch", "lvot"):  # outflow tract → aortic root → ascending aorta
        rad = an.aorta
        ox, oy = _at(hx, hy, phi, -a * 0.72, -b * 0.45)
        if view == "la_3ch":
            turn, length, bend = phi + math.pi - 0.75, s * _u(geo, 1.2, 1.6), _u(geo, -0.3, 0.3)
        else:
            turn, length, bend = phi + math.pi - 0.45, s * _u(geo, 2.2, 2.8), _u(geo, 0.3, 0.8)
        turn += _u(geo, -0.1, 0.1)
        path = _arc(ox, oy, turn, length, bend)
        cv.tube(path, rad * 1.15, p["myo"])
        cv.tube(path, rad, p["blood"])
        rx, ry = _at(ox, oy, turn, rad * 1.4, 0.0)
        cv.circle(rx, ry, rad * 1.3, p["blood"])  # sinus of Valsalva
    if view == "la_4ch":
        dx, dy = _at(lax, lay, phi, -r_la * 1.3, r_la * 0.4)
        cv.circle(dx, dy, an.aorta * 0.8, p["blood"])


def _vessels(
    cv: _Canvas, an: Anatomy, p: dict[str, float], geo: np.random.Generator, level: str
) -> None:
    """Transverse sections of the great vessels. `ao`: at the pulmonary bifurcation (ascending
    and descending aorta, pulmonary trunk and branches, SVC); `aov`: at the aortic valve (aortic
    root, left atrium behind it, right-ventricular outflow in front, descending aorta). The
    velocity map is what a phase-contrast sequence encodes (ascending: up, descending: down)."""
    _thorax(cv, an, p, geo, lungs=1.25)
    bx, by, bb = an.body_cx, an.body_cy, an.body_b
    ra = an.aorta * _u(geo, 0.95, 1.1)
    ax = bx + _u(geo, -0.03, 0.03) + an.heart_dx * 0.2
    ay = by - bb * _u(geo, 0.25, 0.4)
    dxo, dyo = bx + 0.06, by + bb * 0.74 - 0.07  # descending aorta (drawn by _thorax)
    mx, my = (ax + dxo) / 2, (ay + dyo) / 2
    cv.ellipse(mx, my, 0.12, 0.07, 1.3, p["fat"] * _u(geo, 0.3, 0.6))  # mediastinal fat
    v_up = _u(geo, 0.5, 0.9)
    if level == "ao":
        px, py = ax + ra * 2.0, ay - ra * 0.3
        trunk = _arc(px, py, _u(geo, 1.2, 1.6), ra * 2.2, _u(geo, 0.4, 0.8), steps=3)
        cv.tube(trunk, ra * 0.95, p["blood"], vel=0.3)
        bif = trunk[-1]
        cv.tube(_arc(*bif, 0.6, ra * 2.5, 0.9, steps=3), ra * 0.6, p["blood"], vel=0.15)
        cv.tube(_arc(*bif, 2.6, ra * 4.5, -0.5), ra * 0.55, p["blood"], vel=0.15)
        cv.circle(ax - ra * 1.9, ay + ra * 0.2, ra * 0.6, p["blood"] * 0.9, vel=-0.2)  # SVC
        cv.circle(ax, ay, ra * 1.15, p["myo"])
        cv.circle(ax, ay, ra, p["blood"], vel=v_up, profile=True)
    else:
        la = (bx + _u(geo, 0.0, 0.04), ay + ra * 2.6)
        cv.ellipse(*la, ra * 2.4, ra * 1.3, _u(geo, -0.2, 0.2), p["blood"] * 0.85, vel=0.05)
        cv.ellipse(ax + ra * 1.8, ay - ra * 1.2, ra * 1.6, ra * 0.9, 0.5, p["blood"], vel=0.1)
        cv.ellipse(ax - ra * 2.2, ay + ra * 0.8, ra * 1.3, ra * 1.2, 0.0, p["blood"] * 0.9)
        cv.circle(ax, ay, ra * 1.25, p["myo"])
        cv.circle(ax, ay, ra * 1.1, p["blood"], vel=v_up, profile=True)
        cv.circle(dxo, dyo, an.aorta * 0.8, p["blood"], vel=-0.55 * v_up, profile=True)


def _coil(size: int, scan: Scanner, rng: np.random.Generator) -> np.ndarray:
    """Receive-coil sensitivity: a gradient across the chest and a smooth random ripple."""
    x, y = _grid(size)
    c, s = math.cos(scan.shading_angle), math.sin(scan.shading_angle)
    w = _upsampler(size, 4)
    ripple = w @ rng.standard_normal((4, 4)).astype(_F) @ w.T
    ramp = ((x - _F(0.5)) * _F(c) + (y - _F(0.5)) * _F(s)) * _F(2 * scan.shading)
    return np.exp(ramp + ripple * _F(0.12))


def _magnitude(
    img: np.ndarray, scan: Scanner, rng: np.random.Generator, noise: float = 1.0
) -> np.ndarray:
    """Coil shading, Rician noise, then a per-image display window; 0 … 1."""
    n = img.shape[0]
    img = img * _coil(n, scan, rng)
    sigma = _F(scan.noise * noise * _u(rng, 0.8, 1.25))
    re = img + sigma * rng.standard_normal((n, n), dtype=_F)
    im = sigma * rng.standard_normal((n, n), dtype=_F)
    img = np.sqrt(re * re + im * im)
    top = float(np.partition(img.ravel(), int(0.995 * (img.size - 1)))[int(0.995 * (img.size - 1))])
    img = np.clip(img / _F(max(top, 1e-6) * _u(rng, 0.9, 1.15)), 0.0, 1.0)
    return img ** _F(scan.contrast)


def render_frame(spec: tuple) -> np.ndarray:
    """One image of the archive as uint8 (size, size), from its `CardiacPlan.frame_spec`."""
    seed, exam, image, name, t, acquisition, an, scan, size = spec
    rng = np.random.default_rng([seed, 20, exam, image])  # this image
    geo = np.random.default_rng([seed, 21, exam, acquisition])  # shared by one acquisition
    # the planned slice: shift, in-plane rotation and field of view of the acquisition
    view = (
        _u(geo, -0.07, 0.07),
        _u(geo, -0.07, 0.07),
        _u(geo, -0.35, 0.35),
        scan.zoom * _u(geo, 0.93, 1.07),
    )
    if name in ("sa", "cine_tag"):
        tag = name == "cine_tag"
        p = _palette("gre" if tag else "ssfp", scan, rng)
        cv = _Canvas(size, view, soft=1.3 if tag else 1.0)
        breath = (_u(rng, -0.012, 0.012), _u(rng, -0.012, 0.012))  # one breath-hold per slice
        _short_axis(cv, an, p, geo, t, shift=breath)
        img = cv.img
        if tag:
            img = img * _tags(size, rng)
        out = _magnitude(img, scan, rng, noise=1.5 if tag else 1.0)
    elif name in ("la_2ch", "la_3ch", "la_4ch", "lvot"):
        cv = _Canvas(size, view)
        _long_axis(cv, an, _palette("ssfp", scan, rng), geo, name)
        out = _magnitude(cv.img, scan, rng)
    elif name == "ao":
        cv = _Canvas(size, view)
        _vessels(cv, an, _palette("ssfp", scan, rng), geo, "ao")
        out = _magnitude(cv.img, scan, rng)
    elif name.startswith("flow"):
        cv = _Canvas(size, view, soft=1.4)
        _vessels(cv, an, _palette("gre", scan, rng), geo, "aov")
        if name == "flow_mag":
            out = _magnitude(cv.img, scan, rng, noise=1.6)
        elif name == "flow":  # speed-weighted: stationary tissue suppressed
            weight = _F(_u(rng, 0.25, 0.45)) + np.abs(cv.vel) * _F(1.2)
            out = _magnitude(cv.img * weight, scan, rng, noise=1.0)
        else:
            out = _phase(cv, scan, rng)
    else:  # the ShMOLLI reconstructions: one mid-ventricular short-axis acquisition
        kind = {"shmolli": "ir", "shmolli_t1map": "t1", "shmolli_fitpar": "fit"}[name]
        cv = _Canvas(size, view, soft=1.6)
        _short_axis(cv, an, _palette(kind, scan, rng), geo, 0.5)
        if name == "shmolli":
            out = _magnitude(cv.img, scan, rng, noise=1.8)
        else:
            body = cv.inside(an.body_cx, an.body_cy, an.body_a, an.body_b)
            out = _parameter_map(cv.img, body, rng, fit=name == "shmolli_fitpar")
    return np.round(out * _F(255.0)).astype(np.uint8)


def _tags(size: int, rng: np.random.Generator) -> np.ndarray:
    """A grid of dark saturation lines (SPAMM tagging) at a random angle near 45°."""
    x, y = _grid(size)
    ang = _u(rng, 0.6, 0.97)
    spacing = max(_u(rng, 0.045, 0.06), 3.0 / size)
    depth = _F(_u(rng, 0.6, 0.85))
    lines = np.zeros_like(x)
    for a in (ang, ang + math.pi / 2):
        proj = (x * _F(math.cos(a)) + y * _F(math.sin(a))) * _F(1 / spacing)
        lines = np.maximum(lines, np.abs(np.cos(proj * _F(math.pi))) ** _F(6))
    return 1.0 - depth * lines


def _phase(cv: _Canvas, scan: Scanner, rng: np.random.Generator) -> np.ndarray:
    """Phase-contrast velocity image: mid-grey where nothing moves, bright up, dark down; the
    phase of noise (air, lungs) is uniform."""
    n = cv.n
    mag = cv.img * _coil(n, scan, rng)
    mag = mag / _F(max(float(mag.max()), 1e-6))
    sigma = _F(scan.noise * 0.8) / np.maximum(mag, _F(0.005))
    phase = _F(0.5) + _F(0.45) * cv.vel + sigma * rng.standard_normal((n, n), dtype=_F)
    background = _F(_u(rng, -0.03, 0.03))  # eddy-current offset
    return np.mod(phase + background, _F(1.0))


def _parameter_map(
    img: np.ndarray, body: np.ndarray, rng: np.random.Generator, fit: bool
) -> np.ndarray:
    """A quantitative map: values where the body is, zero (T1 map) or fitted noise (fit
    parameters) in the air, noisy fits at tissue edges."""
    n = img.shape[0]
    out = img + _F(0.02) * rng.standard_normal((n, n), dtype=_F)
    outliers = rng.random((n, n)) < 0.004
    out = np.where(outliers, rng.random((n, n), dtype=_F), out)
    if fit:
        air = np.where(rng.random((n, n)) < 0.55, rng.random((n, n), dtype=_F) * _F(0.9), 0.0)
    else:
        air = np.zeros((n, n), dtype=_F)
    out = np.where(body, out, air)
    return np.clip(out, 0.0, 1.0)
