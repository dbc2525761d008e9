"""Synth stage: write a synthetic archive in the data contract (the embedded default dataset)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medssl.config import DataConfig, SplitConfig
from medssl.data.synth.archive import plan_archive, write_archive


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
    Splits follow `split.fractions` (default: paper 000's 94.6/3.0/1.0/1.4 %)."""
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
