"""A synthetic abdominal-ultrasound archive shaped like paper 000's PACS export (§3.1, Fig. 4).

Two steps: `plan_archive` draws the whole archive as tables (patients → exams → images, labels,
kidney findings, scanner styles, French reports, splits) without any pixels, so its statistics can
be checked at full `paper` size in a fraction of a second; `write_archive` renders and writes the
PNGs in parallel and saves the dataset in the contract of docs/data-contract.md.

Every image's pixels come from a generator seeded by (seed, exam, image), so the output is
byte-identical for a given seed and size whatever the number of worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from medssl.data.contract import (
    IMAGES_DIR,
    DatasetInfo,
    label_column,
    write_dataset,
)
from medssl.data.splitting import assign_splits
from medssl.data.synth.reports import write_report
from medssl.data.synth.ultrasound import ScannerStyle, render_image
from medssl.fileio import staged_dir

CLASSES: tuple[str, ...] = (
    "liver",
    "gallbladder",
    "other",
    "kidney",
    "pancreas",
    "spleen",
    "bladder",
)

# Organ combinations seen in one frame and their probabilities. Solved so that the per-image label
# frequencies match paper 000's test set (Table 1: 555/115/315/316/72/135/58 labels over 1,242
# images) with its co-occurrences (liver+gallbladder, liver+kidney, spleen+kidney, liver+pancreas,
# bladder alone) and `other` exactly when no organ of interest is visible.
VIEWS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.2536),  # "other"
    (("bladder",), 0.0467),
    (("liver",), 0.2450),
    (("liver", "gallbladder"), 0.0700),
    (("liver", "kidney"), 0.0920),
    (("liver", "pancreas"), 0.0400),
    (("kidney",), 0.1024),
    (("spleen", "kidney"), 0.0600),
    (("spleen",), 0.0487),
    (("gallbladder",), 0.0226),
    (("pancreas",), 0.0180),
)
PAPER_LABEL_FREQUENCY: dict[str, float] = {
    "liver": 555 / 1242,
    "gallbladder": 115 / 1242,
    "other": 315 / 1242,
    "kidney": 316 / 1242,
    "pancreas": 72 / 1242,
    "spleen": 135 / 1242,
    "bladder": 58 / 1242,
}
KIDNEY_ABNORMAL_RATE = 0.3  # per exam: cysts or a dilated pelvis (paper 002's kidney task)


@dataclass(frozen=True)
class SizePreset:
    exams: int
    image_size: int
    images: int | None = None  # exact total (paper), else ≈ 12.9 per exam
    patients: int | None = None


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(exams=24, image_size=32),
    "small": SizePreset(exams=400, image_size=64),
    # paper 000 §3.1: 6,951 exams, 89,830 images, 5,788 patients after scoping
    "paper": SizePreset(exams=6951, image_size=128, images=89_830, patients=5788),
}
IMAGES_PER_EXAM = 89_830 / 6951
EXAMS_PER_PATIENT = 6951 / 5788


@dataclass
class ArchivePlan:
    """Everything about an archive but its pixels."""

    info: DatasetInfo
    manifest: pd.DataFrame  # contract columns + `kidney_abnormal` (labeled rows only)
    reports: pd.DataFrame
    organs: list[tuple[str, ...]]  # per manifest row: organs drawn in the frame
    kidney_abnormal: np.ndarray  # per manifest row: ground truth (bool)
    exam_index: np.ndarray  # per manifest row
    image_index: np.ndarray  # per manifest row, within its exam
    styles: list[ScannerStyle]  # per exam
    seed: int

    def truth(self) -> np.ndarray:
        """Ground-truth labels of every frame (also the unlabeled ones): bool (N, len(CLASSES))."""
        return organ_labels(self.organs)

    def render(self, row: int) -> np.ndarray:
        """The pixels of manifest row `row`, exactly as `write_archive` writes them."""
        return _render_frame(self.frame_spec(row))

    def frame_spec(self, row: int) -> tuple:
        """What `_render_frame` needs for row `row` (plain, picklable data)."""
        exam = int(self.exam_index[row])
        return (
            self.seed,
            exam,
            int(self.image_index[row]),
            self.organs[row],
            self.styles[exam],
            self.info.image_size,
            bool(self.kidney_abnormal[row]),
        )


def frame_rng(seed: int, exam: int, image: int) -> np.random.Generator:
    """Each frame's own generator: output independent of worker count and order."""
    return np.random.default_rng([seed, 2, exam, image])


def organ_labels(organs: list[tuple[str, ...]]) -> np.ndarray:
    """Per frame and class: the organ is drawn, or (`other`) no organ of interest is."""
    return np.array([[(not o) if c == "other" else (c in o) for c in CLASSES] for o in organs])


def plan_archive(size: str, seed: int, split_fractions: Mapping[str, float]) -> ArchivePlan:
    """Draw the archive's structure, labels, reports and patient-disjoint splits."""
    preset = SIZES[size]
    rng = np.random.default_rng([seed, 0])
    n_exams = preset.exams
    per_exam = _images_per_exam(rng, n_exams, preset.images)
    n_patients = preset.patients or max(1, round(n_exams / EXAMS_PER_PATIENT))
    # every patient has one exam, the remaining exams go to random patients (some have several)
    exam_patient = np.concatenate(
        [np.arange(n_patients), rng.integers(0, n_patients, n_exams - n_patients)]
    )
    rng.shuffle(exam_patient)
    styles = [ScannerStyle.sample(rng) for _ in range(n_exams)]
    exam_kidney_abnormal = rng.random(n_exams) < KIDNEY_ABNORMAL_RATE

    views, probs = zip(*VIEWS, strict=True)
    probs_arr = np.asarray(probs) / np.sum(probs)
    exam_index = np.repeat(np.arange(n_exams), per_exam)
    image_index = np.concatenate([np.arange(k) for k in per_exam])
    view_ids = rng.choice(len(views), size=len(exam_index), p=probs_arr)
    organs = [views[v] for v in view_ids]

    exam_ids = np.array([f"E{e:06d}" for e in range(n_exams)], dtype=object)
    patient_ids = np.array([f"P{p:06d}" for p in range(n_patients)], dtype=object)
    manifest = pd.DataFrame(
        {
            "image": [
                f"{IMAGES_DIR}/{exam_ids[e]}/{i:02d}.png"
                for e, i in zip(exam_index, image_index, strict=True)
            ],
            "patient_id": patient_ids[exam_patient[exam_index]],
            "exam_id": exam_ids[exam_index],
            "lesion_id": pd.array([pd.NA] * len(exam_index), dtype="string"),
        }
    )
    manifest["split"] = assign_splits(manifest, split_fractions, seed)
    labeled = (manifest["split"] != "unlabeled").to_numpy()
    truth = organ_labels(organs).astype("int8")
    for k, name in enumerate(CLASSES):
        manifest[label_column(name)] = pd.array(truth[:, k], dtype="Int8")
        manifest.loc[~labeled, label_column(name)] = pd.NA
    has_kidney = np.array(["kidney" in o for o in organs])
    kidney_abnormal = exam_kidney_abnormal[exam_index] & has_kidney
    # the kidney finding is an expert label too: known only where the kidney label is
    kidney_label = pd.array(kidney_abnormal, dtype="boolean")
    kidney_label[~(labeled & has_kidney)] = pd.NA
    manifest["kidney_abnormal"] = kidney_label

    seen: list[set[str]] = [set() for _ in range(n_exams)]
    for e, frame_organs in zip(exam_index, organs, strict=True):
        seen[e].update(frame_organs)
    report_rng = np.random.default_rng([seed, 1])
    reports = []
    for e in range(n_exams):
        abnormal = bool(exam_kidney_abnormal[e]) and "kidney" in seen[e]
        title, text = write_report(report_rng, seen[e], kidney_abnormal=abnormal)
        reports.append({"exam_id": exam_ids[e], "title": title, "text": text, "language": "fr"})

    info = DatasetInfo(
        name=f"abdominal-us-{size}",
        task="multilabel",
        classes=list(CLASSES),
        modality="US",
        image_size=preset.image_size,
        channels=1,
        version=f"synth-{size}-seed{seed}",
        description=(
            "Synthetic abdominal B-mode ultrasound archive shaped like paper 000 (§3.1): "
            "patients → exams → ~13 frames, 7 non-exclusive organ labels, French reports."
        ),
        attributes=["kidney_abnormal"],
    )
    return ArchivePlan(
        info=info,
        manifest=manifest,
        reports=pd.DataFrame(reports),
        organs=organs,
        kidney_abnormal=kidney_abnormal,
        exam_index=exam_index,
        image_index=image_index,
        styles=styles,
        seed=seed,
    )


def _images_per_exam(rng: np.random.Generator, n_exams: int, total: int | None) -> np.ndarray:
    counts = np.clip(rng.poisson(IMAGES_PER_EXAM, n_exams), 3, 30)
    if total is not None:  # nudge random exams by one image until the total is exact
        while (diff := total - int(counts.sum())) != 0:
            step = 1 if diff > 0 else -1
            idx = rng.choice(n_exams, size=min(abs(diff), n_exams), replace=False)
            ok = idx[(counts[idx] + step >= 3) & (counts[idx] + step <= 30)]
            counts[ok] += step
    return counts


def _render_frame(spec: tuple) -> np.ndarray:
    seed, exam, image, organs, style, size, abnormal = spec
    rng = frame_rng(seed, exam, image)
    return render_image(rng, organs, style, size, kidney_abnormal=abnormal)


def write_archive(plan: ArchivePlan, out: Path, workers: int = 0, progress: bool = True) -> Path:
    """Render every image and write the dataset folder. Writes into a temporary sibling and
    renames it at the end, so an interrupted run never leaves a half dataset at `out`
    (fileio.staged_dir)."""
    specs = [plan.frame_spec(row) for row in range(len(plan.manifest))]
    return write_frames(
        out, plan.info, plan.manifest, plan.reports, plan.exam_index, specs, _render_frame,
        workers=workers, progress=progress,
    )  # fmt: skip


# --- writing any planned archive (shared with cardiac.py) -------------------------------------


def write_frames(
    out: Path,
    info: DatasetInfo,
    manifest: pd.DataFrame,
    reports: pd.DataFrame | None,
    groups: np.ndarray,
    specs: Sequence[Any],
    render: Callable[[Any], np.ndarray],
    workers: int = 0,
    progress: bool = True,
    boxes: pd.DataFrame | None = None,
) -> Path:
    """Write a planned dataset: `render(specs[i])` gives the pixels of manifest row i (saved at
    its `image` path), then the contract tables. `render` must be a module-level function and
    the specs plain data (they travel to worker processes); the rows of one `groups` value
    (an exam) are rendered by one job. Every row's pixels must depend on its spec alone, so the
    output is byte-identical whatever `workers` is. `boxes` (a detection dataset's readers'
    boxes) is written as boxes.parquet. Staged: complete at `out` or absent."""
    out = Path(out)
    with staged_dir(out) as tmp:
        paths = manifest["image"].tolist()
        for folder in sorted({os.path.dirname(p) for p in paths}):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        jobs = [
            (str(tmp), render, [(paths[i], specs[i]) for i in rows])
            for _, rows in pd.Series(range(len(paths))).groupby(np.asarray(groups))
        ]
        workers = workers or os.cpu_count() or 1
        bar = tqdm(total=len(paths), unit="img", desc="synth", disable=not progress)
        if workers == 1:
            for job in jobs:
                bar.update(_render_job(job))
        else:
            chunks = max(1, len(jobs) // (workers * 16))
            with ProcessPoolExecutor(workers) as pool:
                for n in pool.map(_render_job, jobs, chunksize=chunks):
                    bar.update(n)
        bar.close()
        write_dataset(tmp, info, manifest, reports, boxes)
    return out


def _render_job(job: tuple) -> int:
    root, render, frames = job
    for relpath, spec in frames:
        Image.fromarray(render(spec)).save(Path(root) / relpath, compress_level=6)
    return len(frames)
