"""The cross-validation study of paper 004 (§3, Tables 1-2): benign/malignant classification with
lesion recognition against its baseline, instance recognition and the negative-set ablations, by
5-fold cross-validation grouped by patient.

One `medssl tune` sweep (preset `cv`: budget, variants and folds in params.yaml): every
`lesion-recognition.variant` × `train.cv_fold` × seed is a cell, train → evaluate, the held-out fold
its test set (`train.cv_folds`; folds are the same for every variant and seed, so cells pair up).
It runs wherever `medssl tune` runs on this machine, is one MLflow sweep run with a child run per
cell, and `--resume` reruns only the cells that did not finish. Then the report, written to OUT and
logged to the sweep run:

    cv.md / cv.json   Table 1 (baseline, IR, LR) and Table 2 (LR(-), LR(-SC), LR(-DC), LR) as
                      mean ± std % over the fold × seed cells, beside the paper's numbers, and
                      the paper's comparisons as paired differences over the same folds and
                      seeds (mean and t 95 % CI)
    cv.png            AUC and MCR per variant, one point per cell
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medssl.config import Params
from medssl.errors import ConfigError, DataContractError
from medssl.fileio import atomic_write_text
from medssl.stages.evaluate import BINARY_COLUMNS as COLUMNS
from medssl.stages.study import SWEEP_DIR, sweep_and_report
from medssl.stages.tune import RESULTS_FILE, TRIALS_DIR, markdown_table
from medssl.tuning import SEED_KEY

PRESET = "cv"
VARIANT_KEY = "lesion-recognition.variant"
FOLD_KEY = "train.cv_fold"
REPORT_FILE = "cv.md"
REPORT_JSON = "cv.json"
PLOT_FILE = "cv.png"
NAMES = {
    "baseline": "Baseline",
    "ir": "IR",
    "lr": "LR",
    "lr-none": "LR(-)",
    "lr-sc": "LR(-SC)",
    "lr-dc": "LR(-DC)",
}
TABLES = {
    "Table 1": ("baseline", "ir", "lr"),
    "Table 2": ("lr-none", "lr-sc", "lr-dc", "lr"),
}
# paper 004 (mean, std %) per variant and column
PAPER = {
    "baseline": {"auc": (94.7, 1.7), "accuracy": (86.3, 1.7), "sensitivity": (92.6, 3.8),
                 "precision": (87.6, 2.6), "specificity": (76.3, 5.1), "f1": (89.9, 1.4),
                 "mcr": (59.9, 4.6)},
    "ir": {"auc": (93.9, 1.7), "accuracy": (84.5, 2.6), "sensitivity": (86.6, 8.6),
           "precision": (90.3, 5.6), "specificity": (80.8, 12.6), "f1": (88.0, 2.6),
           "mcr": (63.3, 7.9)},
    "lr": {"auc": (96.2, 1.0), "accuracy": (89.1, 1.9), "sensitivity": (92.3, 3.7),
           "precision": (91.5, 2.4), "specificity": (83.1, 5.5), "f1": (91.8, 1.4),
           "mcr": (52.7, 4.1)},
    "lr-none": {"auc": (94.9, 1.3), "accuracy": (86.1, 1.2), "sensitivity": (91.4, 4.2),
                "precision": (88.2, 2.9), "specificity": (76.0, 6.2), "f1": (89.7, 1.0)},
    "lr-sc": {"auc": (95.0, 1.4), "accuracy": (86.6, 1.2), "sensitivity": (91.9, 3.1),
              "precision": (88.4, 1.9), "specificity": (76.5, 4.1), "f1": (90.1, 1.0)},
    "lr-dc": {"auc": (95.6, 1.1), "accuracy": (88.3, 1.8), "sensitivity": (91.6, 2.9),
              "precision": (90.9, 1.7), "specificity": (81.9, 3.9), "f1": (91.2, 1.3)},
}  # fmt: skip
# the paper's claims: (name, a, b, metric) for Δ = a − b over paired cells
EFFECTS = (
    ("LR − baseline", "lr", "baseline", "auc"),
    ("baseline − IR", "baseline", "ir", "auc"),
    ("LR − baseline", "lr", "baseline", "mcr"),
    ("IR − baseline", "ir", "baseline", "mcr"),
    ("LR − LR(-)", "lr", "lr-none", "auc"),
    ("LR(-DC) − LR(-SC)", "lr-dc", "lr-sc", "auc"),
)


@dataclass
class CvStudyResult:
    out_dir: Path
    cells: pd.DataFrame  # one row per finished cell: variant, fold, seed, the metrics
    tables: dict[str, pd.DataFrame]
    effects: pd.DataFrame
    sweep_run_id: str | None = None
    seconds: float = 0.0
    paths: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> str:
        lines: list[str] = []
        for name, table in self.tables.items():
            lines += [f"{name} (mean ± std %, paper in brackets)", markdown_table(table), ""]
        lines += [markdown_table(self.effects, "(no pair of variants to compare)"), ""]
        if self.sweep_run_id:
            lines.append(f"MLflow sweep run {self.sweep_run_id}")
        lines.append(
            f"wrote {self.out_dir}/: {', '.join(sorted(p.name for p in self.paths.values()))}"
        )
        return "\n".join(lines)


def cv_study(
    dataset_dir: Path,
    out_dir: Path,
    params: Params,
    *,
    updates: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    track: bool = True,
) -> CvStudyResult:
    """Run the `cv` sweep (every variant × fold × seed, train → evaluate) and write the report.
    `updates`: tune settings over the preset (seeds, max_concurrent …)."""
    out_dir = Path(out_dir).resolve()
    cfg = params.tune.with_preset(PRESET).with_updates(updates or {})
    if cfg.address:
        raise ConfigError(
            f"tune.address={cfg.address}: the study reads every cell's folder from this machine; "
            "run it where the cells run (or `medssl tune --preset cv --address …` and report "
            "from the trial folders)"
        )
    check_dataset(Path(dataset_dir), int(cfg.space.get("train.cv_folds", params.train.cv_folds)))
    return sweep_and_report(
        dataset_dir, out_dir, params, cfg, {}, PRESET,
        lambda: write_cv_report(out_dir, out_dir / SWEEP_DIR),
        resume=resume, progress=progress, track=track,
    )  # fmt: skip


def check_dataset(dataset_dir: Path, folds: int) -> None:
    """One-line errors before any cell runs: the study needs folds, a binary dataset, a lesion
    id on every labeled row (the positives of LR, the groups of MCR) and a patient per fold."""
    from medssl.data.contract import LABELED_SPLITS, Dataset

    if folds < 2:
        raise ConfigError(f"tune.presets.{PRESET}.space must set train.cv_folds (>= 2)")
    dataset = Dataset.open(dataset_dir)
    if dataset.info.task != "binary":
        raise DataContractError(
            f"{dataset_dir}: a {dataset.info.task} dataset; the study needs a binary one "
            "(e.g. medssl data synth --kind breast-us)"
        )
    m = dataset.manifest
    labeled = m[m["split"].isin(list(LABELED_SPLITS))]
    if labeled["lesion_id"].isna().any():
        raise DataContractError(
            f"{dataset_dir}: {int(labeled['lesion_id'].isna().sum())} labeled row(s) without a "
            "lesion_id (lesion recognition and MCR need one on every row)"
        )
    if labeled["patient_id"].nunique() < folds:
        raise DataContractError(
            f"{dataset_dir}: {labeled['patient_id'].nunique()} labeled patient(s) cannot fill "
            f"{folds} patient-disjoint folds"
        )


def write_cv_report(out_dir: Path, sweep_dir: Path) -> CvStudyResult:
    """cv.md, cv.json and cv.png from the sweep's results.csv and its cells' metrics.json."""
    frame = pd.read_csv(sweep_dir / RESULTS_FILE)
    done = frame[frame["status"] == "completed"]
    if done.empty:
        raise ConfigError(f"{sweep_dir}: no completed cell to report")
    missing = [k for k in (VARIANT_KEY, FOLD_KEY) if k not in done]
    if missing:
        raise ConfigError(
            f"{sweep_dir}: the study's space must search {missing[0]} (tune.presets.{PRESET})"
        )
    cells = cell_metrics(done, sweep_dir / TRIALS_DIR)
    tables = {
        name: variant_table(cells, [v for v in variants if v in set(cells["variant"])])
        for name, variants in TABLES.items()
    }
    tables = {k: v for k, v in tables.items() if not v.empty}
    effects = effect_table(cells)
    folds, seeds = cells["fold"].nunique(), cells["seed"].nunique()
    lines = ["# Cross-validation study (paper 004 Tables 1-2)", ""]
    lines += [
        f"Test metrics of each held-out fold (threshold 0.5), mean ± std % over {folds} folds × "
        f"{seeds} seed(s); the paper's mean ± std over its 5 folds in brackets. MCR: the mean "
        "misclassified share of the images of a lesion, over lesions with at least one error.",
        "",
    ]
    for name, table in tables.items():
        lines += [f"## {name}", "", markdown_table(table), ""]
    lines += [
        "## The paper's comparisons",
        "",
        "Δ = a − b in points, paired over the same fold and seed, the seeds averaged within "
        "each fold; 95 % CI from the t distribution over the folds (df = folds − 1; folds share "
        "training rows, so it is somewhat narrow).",
        "",
        markdown_table(effects, "(no pair of variants to compare)"),
        "",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / REPORT_FILE, "json": out_dir / REPORT_JSON}
    atomic_write_text(paths["report"], "\n".join(lines))
    payload = {
        "cells": cells.astype(object).where(cells.notna(), None).to_dict(orient="records"),
        "tables": {k: v.to_dict(orient="records") for k, v in tables.items()},
        "effects": effects.to_dict(orient="records"),
    }
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=_json) + "\n")
    from medssl.plots import plot_cv

    plot_cv(cells, [v for v in NAMES if v in set(cells["variant"])], NAMES, out_dir / PLOT_FILE)
    paths["plot"] = out_dir / PLOT_FILE
    return CvStudyResult(out_dir, cells, tables, effects, paths=paths)


def cell_metrics(done: pd.DataFrame, trials_dir: Path) -> pd.DataFrame:
    """One row per finished cell: variant, fold, seed and its test metrics (from eval/)."""
    rows = []
    for row in done.to_dict(orient="records"):
        path = trials_dir / str(row["trial"]) / "eval" / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise ConfigError(f"{path}: missing or unreadable (rerun with --resume)") from None
        cell = {
            "variant": str(row[VARIANT_KEY]),
            "fold": int(row[FOLD_KEY]),
            "seed": int(row.get(SEED_KEY, 0) or 0),
            "test_images": metrics.get("test_images"),
        }
        for key in COLUMNS:
            value = metrics.get(f"test_{key}")
            cell[key] = math.nan if value is None else float(value)
        rows.append(cell)
    return pd.DataFrame(rows).sort_values(["variant", "fold", "seed"], ignore_index=True)


def variant_table(cells: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """The paper's layout: one row per variant, each column "mean ± std (paper)" in %."""
    rows = []
    for variant in variants:
        part = cells[cells["variant"] == variant]
        row = {"method": NAMES.get(variant, variant), "cells": len(part)}
        for key, name in COLUMNS.items():
            values = 100 * part[key].dropna()
            paper = PAPER.get(variant, {}).get(key)
            text = f"{values.mean():.1f} ± {values.std(ddof=1) if len(values) > 1 else 0:.1f}"
            row[name] = text + (f" ({paper[0]:.1f})" if paper else "")
        rows.append(row)
    return pd.DataFrame(rows)


def effect_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Each claim of the paper as Δ = a − b (points), paired over the fold × seed cells both
    variants ran, the seeds averaged within each fold first (a fold's seeds share its train and
    test rows: they are not independent), with the t 95 % CI over the folds (df = folds − 1) and
    the paper's Δ. Folds share training rows too, so even this CI is somewhat narrow (Nadeau and
    Bengio 2003)."""
    from scipy import stats

    rows = []
    for name, a, b, key in EFFECTS:
        pa = cells[cells["variant"] == a].set_index(["fold", "seed"])[key]
        pb = cells[cells["variant"] == b].set_index(["fold", "seed"])[key]
        diff = (100 * (pa - pb)).dropna().groupby(level="fold").mean()
        if diff.empty:
            continue
        mean = float(diff.mean())
        if len(diff) > 1:
            half = float(
                stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
            )
        else:
            half = math.nan
        paper = PAPER.get(a, {}).get(key), PAPER.get(b, {}).get(key)
        rows.append(
            {
                "effect": name,
                "metric": COLUMNS[key],
                "delta": round(mean, 2),
                "ci_low": round(mean - half, 2),
                "ci_high": round(mean + half, 2),
                "folds": len(diff),
                "paper": round(paper[0][0] - paper[1][0], 1) if all(paper) else None,
            }
        )
    return pd.DataFrame(
        rows, columns=["effect", "metric", "delta", "ci_low", "ci_high", "folds", "paper"]
    )


def _json(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(type(value).__name__)
