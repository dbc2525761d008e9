"""The validate stage: check a dataset folder against the data contract.

`validate` runs the great-expectations suites of `medssl.validation.suites` over the dataset's
tables (and, unless disabled, the image-file checks of `medssl.validation.images`), writes
``report.json`` and the HTML data docs into the output folder and returns a small
`ValidationResult`. Failed expectations do not raise: the result says ``success=False`` and the
CLI decides the exit code. A folder that is not a dataset at all (no or invalid dataset.yaml, a
missing or unreadable manifest, an unreadable reports/boxes table) raises `DataContractError`.
A `detection` dataset without boxes.parquet is a dataset with a failed expectation ("a detection
dataset has boxes.parquet"), and its boxes are checked against dataset.yaml: labels among its
classes, coordinates inside the (square) image of `image_size` pixels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medssl import __version__
from medssl.config import ValidateConfig
from medssl.data.contract import (
    BOXES_FILE,
    MANIFEST_FILE,
    REPORTS_FILE,
    image_dir,
    read_info,
    read_table,
)
from medssl.fileio import atomic_write_text, staged_dir

REPORT_FILE = "report.json"
IMAGE_FAILURES_FILE = "image_failures.csv"
MAX_IMAGE_FAILURES_IN_REPORT = 1000


@dataclass
class Failure:
    """One failed expectation: its human name, its view and a few offending rows."""

    name: str
    view: str
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: list[str] = field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        what = f"{self.name} [{self.view}]"
        if self.error:
            return f"{what}: error: {self.error}"
        if self.unexpected_count:
            of = f" of {self.element_count}" if self.element_count is not None else ""
            what += f": {self.unexpected_count}{of} rows"
        return what


@dataclass
class ValidationResult:
    """What the validate stage found; the details are in `report_path`."""

    success: bool
    dataset_dir: Path
    report_path: Path
    docs_index: Path | None
    counts: dict[str, int]
    n_expectations: int
    failures: list[Failure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    image_failures: int = 0
    seconds: float = 0.0

    @property
    def failed_names(self) -> list[str]:
        return [f.name for f in self.failures]


def _read_optional(path: Path) -> pd.DataFrame | None:
    return read_table(path) if path.exists() else None


def _counts(views: dict[str, Any], manifest: pd.DataFrame, **tables: pd.DataFrame | None) -> dict:
    counts = {"manifest_rows": len(manifest)}
    for col, key in (("patient_id", "patients"), ("exam_id", "exams")):
        if col in manifest.columns:
            counts[key] = int(manifest[col].nunique())
    for name in ("labeled", "unlabeled"):
        if name in views:
            counts[f"{name}_rows"] = len(views[name].frame)
    for name, table in tables.items():
        if table is not None:
            counts[f"{name}_rows"] = len(table)
    return counts


def validate(
    dataset_dir: Path | str,
    out_dir: Path | str,
    cfg: ValidateConfig | None = None,
    *,
    progress: bool | None = None,
) -> ValidationResult:
    """Validate the dataset at `dataset_dir`; write report.json and data docs under `out_dir`
    (replaced as a whole: complete or absent)."""
    cfg = cfg or ValidateConfig()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    info = read_info(dataset_dir)
    manifest = read_table(dataset_dir / MANIFEST_FILE)
    reports = _read_optional(dataset_dir / REPORTS_FILE)
    boxes = _read_optional(dataset_dir / BOXES_FILE)
    timings["read"] = round(time.perf_counter() - t0, 3)
    with staged_dir(out_dir) as tmp:  # the report folder is complete or absent
        result = _validate_into(tmp, dataset_dir, info, manifest, reports, boxes, cfg, progress)
        result.timings["total"] = round(time.perf_counter() - t0, 3)
        report = {**result.report, "timings_seconds": {**timings, **result.timings}}
        atomic_write_text(tmp / REPORT_FILE, json.dumps(report, indent=2, default=str) + "\n")
    docs = None if result.docs is None else out_dir / result.docs.relative_to(tmp)
    return ValidationResult(
        success=result.success,
        dataset_dir=dataset_dir,
        report_path=out_dir / REPORT_FILE,
        docs_index=docs,
        counts=result.counts,
        n_expectations=result.n_expectations,
        failures=result.failures,
        skipped=result.skipped,
        image_failures=result.image_failures,
        seconds=result.timings["total"],
    )


@dataclass
class _Written:
    success: bool
    report: dict[str, Any]
    docs: Path | None
    counts: dict[str, int]
    n_expectations: int
    failures: list[Failure]
    skipped: list[str]
    image_failures: int
    timings: dict[str, float]


def _validate_into(
    out_dir: Path,
    dataset_dir: Path,
    info: Any,
    manifest: pd.DataFrame,
    reports: pd.DataFrame | None,
    boxes: pd.DataFrame | None,
    cfg: ValidateConfig,
    progress: bool | None,
) -> _Written:
    """Run every check; write the data docs and the image-failure file into out_dir."""
    from medssl.validation import images as image_checks
    from medssl.validation import suites  # imports great-expectations (seconds): only when used

    timings: dict[str, float] = {}

    image_view = None
    failures_table = pd.DataFrame(columns=image_checks.FAILURE_COLUMNS)
    n_images = 0
    if cfg.check_images and "image" in manifest.columns:
        ts = time.perf_counter()
        failures_table = image_checks.check_images(
            image_dir(dataset_dir, info),
            manifest["image"],
            image_checks.Limits.from_config(cfg),
            workers=cfg.workers,
            progress=progress,
        )
        image_view = image_checks.image_files_view(manifest["image"], failures_table)
        n_images = len(image_view)
        timings["images"] = round(time.perf_counter() - ts, 3)

    ts = time.perf_counter()
    import great_expectations  # noqa: F401  (seconds on first use; timed apart)

    timings["gx_import"] = round(time.perf_counter() - ts, 3)
    ts = time.perf_counter()
    views, unavailable = suites.build_views(info, manifest, reports, boxes, image_view)
    checks = suites.build_checks(
        info,
        reports=reports is not None,
        boxes=boxes is not None,
        image_files=image_view is not None,
    )
    timings["views"] = round(time.perf_counter() - ts, 3)
    run = suites.run_checks(
        views,
        checks,
        unavailable=unavailable,
        docs_dir=out_dir / suites.DOCS_DIR,
        examples=cfg.examples,
    )
    timings.update(run.seconds)

    counts = _counts(views, manifest, reports=reports, boxes=boxes)
    if image_view is not None:
        counts["images_checked"] = n_images
    failures = [
        Failure(o.name, o.view, o.unexpected_count, o.element_count, o.examples, o.error)
        for o in run.outcomes
        if o.failed
    ]
    skipped = [f"{o.name} [{o.view}]: {o.skipped}" for o in run.outcomes if o.skipped]
    success = run.success and not failures

    failures_file = out_dir / IMAGE_FAILURES_FILE
    if len(failures_table) > MAX_IMAGE_FAILURES_IN_REPORT:
        failures_table.to_csv(failures_file, index=False)
    report = {
        "success": success,
        "dataset": {
            "path": str(dataset_dir.resolve()),
            "name": info.name,
            "task": info.task,
            "version": info.version,
        },
        "counts": counts,
        "summary": {
            "expectations": len(run.outcomes),
            "failed": len(failures),
            "skipped": len(skipped),
            "image_failures": len(failures_table),
        },
        "checkpoints": run.checkpoint_success,
        "unavailable_views": unavailable,
        "expectations": [o.to_dict() for o in run.outcomes],
        "image_checks": {
            "enabled": image_view is not None,
            "checked": n_images,
            "failed": len(failures_table),
            "failures": failures_table.head(MAX_IMAGE_FAILURES_IN_REPORT).to_dict("records"),
            "all_failures_file": failures_file.name if failures_file.exists() else None,
            "limits": {
                "min_image_side": cfg.min_image_side,
                "max_image_side": cfg.max_image_side,
                "min_file_bytes": cfg.min_file_bytes,
            },
        },
        "data_docs": str(run.docs_index.relative_to(out_dir)) if run.docs_index else None,
        "versions": {"medssl": __version__, "great_expectations": _gx_version()},
    }
    return _Written(
        success=success,
        report=report,
        docs=run.docs_index,
        counts=counts,
        n_expectations=len(run.outcomes),
        failures=failures,
        skipped=skipped,
        image_failures=len(failures_table),
        timings=timings,
    )


def _gx_version() -> str:
    import great_expectations

    return great_expectations.__version__


def summary(result: ValidationResult, *, max_failures: int = 20) -> str:
    """A few lines for a terminal: the verdict, each failed expectation with offending rows."""
    c = result.counts
    sizes = ", ".join(
        f"{c[k]} {label}"
        for k, label in (
            ("manifest_rows", "images"),
            ("patients", "patients"),
            ("exams", "exams"),
            ("reports_rows", "reports"),
            ("boxes_rows", "boxes"),
        )
        if k in c
    )
    if result.success:
        head = f"validate: OK - {result.n_expectations} expectations passed ({sizes})"
    else:
        head = (
            f"validate: FAILED - {len(result.failures)} of {result.n_expectations} "
            f"expectations failed ({sizes})"
        )
    lines = [head]
    for f in result.failures[:max_failures]:
        lines.append(f"  x {f.line()}")
        lines += [f"      {e}" for e in f.examples]
    if len(result.failures) > max_failures:
        lines.append(f"  ... {len(result.failures) - max_failures} more in the report")
    if result.skipped:
        lines.append(f"  ({len(result.skipped)} expectations skipped: their columns are missing)")
    lines.append(f"report: {result.report_path}")
    if result.docs_index is not None:
        lines.append(f"data docs: {result.docs_index}")
    return "\n".join(lines)
