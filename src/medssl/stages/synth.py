"""Synth stage: write a synthetic archive in the data contract (the embedded default dataset)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medssl.config import DataConfig, SplitConfig
from medssl.data.synth.archive import ArchivePlan, plan_archive, write_archive
from medssl.data.synth.breast import BreastPlan, plan_breast, write_breast
from medssl.data.synth.cardiac import CardiacPlan, plan_cardiac, write_cardiac
from medssl.data.synth.chest import ChestPlan, plan_chest, write_chest


@dataclass
class SynthResult:
    out_dir: Path
    images: int
    exams: int
    patients: int
    splits: dict[str, int]


def synth(
    out_dir: Path, data: DataConfig, split: SplitConfig, progress: bool = True
) -> SynthResult:
    """Plan and render a `data.kind` archive of `data.size` into `out_dir` (replaced atomically).
    Splits follow `split.fractions` (default: paper 000's 94.6/3.0/1.0/1.4 %). Kinds:
    `abdominal-us` (archive.py, paper 000), `cardiac-mr` (cardiac.py, paper 001), `breast-us`
    (breast.py, paper 004: every image labeled, so only the train/val/test shares count,
    renormalised to 1) and `chest-xray` (chest.py, paper 003: a detection dataset with
    boxes.parquet; the images with findings get the renormalised train/val/test shares, the
    images without findings are `unlabeled`)."""
    plan: ArchivePlan | CardiacPlan | BreastPlan | ChestPlan
    if data.kind == "cardiac-mr":
        plan = plan_cardiac(data.size, data.seed, split.fractions, data.metadata_error)
        write_cardiac(plan, Path(out_dir), workers=data.workers, progress=progress)
    elif data.kind == "breast-us":
        plan = plan_breast(data.size, data.seed, split.fractions)
        write_breast(plan, Path(out_dir), workers=data.workers, progress=progress)
    elif data.kind == "chest-xray":
        plan = plan_chest(data.size, data.seed, split.fractions)
        write_chest(plan, Path(out_dir), workers=data.workers, progress=progress)
    else:
        plan = plan_archive(data.size, data.seed, split.fractions)
        write_archive(plan, Path(out_dir), workers=data.workers, progress=progress)
    m = plan.manifest
    return SynthResult(
        out_dir=Path(out_dir),
        images=len(m),
        exams=int(m["exam_id"].nunique()),
        patients=int(m["patient_id"].nunique()),
        splits={k: int(v) for k, v in m["split"].value_counts().sort_index().items()},
    )
