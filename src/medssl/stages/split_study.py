"""The pre-training split study of paper 003 (§III.A, Table I-II, Fig. 4): how much SimCLR
pre-training on part of the training set saves in box labels.

    medssl study pretrain-split DATASET --out OUT

1. OUT/data: the dataset with nested label-fraction subsets of its train split, 10 … 100 %
   (the split stage, by exam).
2. The baseline sweep (tune preset `pretrain-split-baseline`, into OUT/baseline): the detector
   from random init on train.label_fraction 1.0 — and on smaller subsets too when the preset
   lists them: the same fine-tuning sets without pre-training, the control that tells what
   pre-training adds from what fewer labels take away (the paper has no such control).
3. The split sweep (preset `pretrain-split`, into OUT/sweep): for each p, SimCLR on the train rows
   outside the 1 − p subset (`pretrain.rows: train-rest`, their labels unread), then the
   detector from that encoder fine-tuned on the 1 − p subset (`chain: pretrain-train`).

Both sweeps run wherever `medssl tune` runs (local Ray; each cell a child MLflow run), and
`--resume` reruns only the cells that did not finish. Then the report in OUT:

    study.md / study.json   Table I (mAP, mAP50, mAP small, AR, AR small, training images) and
                            Table II (IoU) per row, mean over seeds, beside the paper's; each row's
                            mAP difference to the baseline, paired over the same test images and
                            seeds, with an image-bootstrap 95 % CI
    fig4.png                test mAP per class against the share of labels (paper 003 Fig. 4)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medssl.config import Params, SplitConfig
from medssl.data.contract import PREDICTIONS_FILE, Dataset
from medssl.errors import ConfigError, DataContractError
from medssl.fileio import atomic_write_text
from medssl.plots import plot_class_map_by_labels
from medssl.stages.study import SWEEP_DIR, sweep_and_report
from medssl.stages.tune import RAY_DIR, RESULTS_FILE, TRIALS_DIR, can_restore, markdown_table
from medssl.tuning import SEED_KEY

PRESET = "pretrain-split"
BASELINE_PRESET = "pretrain-split-baseline"
FRACTION_KEY = "train.label_fraction"
PAIRED_KEY = "pretrain.label_fraction,train.label_fraction"
DATA_DIR = "data"
BASELINE_DIR = "baseline"
REPORT_FILE = "study.md"
REPORT_JSON = "study.json"
PLOT_FILE = "fig4.png"
FRACTIONS = [round(0.1 * k, 1) for k in range(1, 11)]  # the nested fine-tuning subsets
BOOTSTRAP = 200  # image resamples for each paired CI (at most; fewer if evaluate.bootstrap is)
# paper 003 Table I (mAP, mAP50, mAP small, AR, AR small, training images) and Table II (IoU
# mean, σ): its baseline (COCO-initialised) and SSL p %
PAPER_TABLE_I = {
    "baseline": (0.129, 0.278, 0.021, 0.412, 0.154, 3075),
    10: (0.142, 0.284, 0.026, 0.413, 0.156, 2767),
    20: (0.139, 0.292, 0.020, 0.412, 0.158, 2460),
    30: (0.130, 0.268, 0.014, 0.402, 0.146, 2152),
    40: (0.123, 0.272, 0.014, 0.394, 0.131, 1845),
    50: (0.109, 0.248, 0.011, 0.387, 0.131, 1537),
    60: (0.104, 0.230, 0.011, 0.378, 0.120, 1230),
    70: (0.095, 0.202, 0.007, 0.363, 0.108, 922),
    80: (0.081, 0.178, 0.006, 0.338, 0.089, 615),
    90: (0.060, 0.135, 0.003, 0.303, 0.064, 307),
}
PAPER_TABLE_II = {
    "baseline": (0.565, 0.309), 10: (0.566, 0.309), 20: (0.565, 0.308), 30: (0.555, 0.312),
    40: (0.545, 0.316), 50: (0.536, 0.319), 60: (0.527, 0.324), 70: (0.507, 0.331),
    80: (0.479, 0.336), 90: (0.438, 0.343),
}  # fmt: skip
PAPER_READERS = {"R09 vs R10": (0.580, 0.284), "R09 vs R11": (0.674, 0.149)}
COLUMNS = {"map": "mAP", "map50": "mAP50", "map_small": "mAP small", "ar100": "AR",
           "ar_small": "AR small"}  # fmt: skip


@dataclass
class SplitStudyResult:
    out_dir: Path
    cells: pd.DataFrame  # one row per finished cell: arm, pretrain percent, seed, metrics
    table: pd.DataFrame
    effects: pd.DataFrame
    sweep_run_id: str | None = None
    seconds: float = 0.0
    paths: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> str:
        return "\n".join(
            [
                "Table I / II (mean over seeds; the paper's in brackets)",
                markdown_table(self.table),
                "",
                markdown_table(self.effects, "(no cell to compare with the baseline)"),
                "",
                f"wrote {self.out_dir}/: {', '.join(sorted(p.name for p in self.paths.values()))}",
            ]
        )


def pretrain_split_study(
    dataset_dir: Path,
    out_dir: Path,
    params: Params,
    *,
    updates: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    track: bool = True,
) -> SplitStudyResult:
    """Split, run both sweeps (see the module doc) and write the report. `updates`: tune
    settings over both presets (seeds, max_concurrent …)."""
    from medssl.stages.tune import tune_sweep

    out_dir = Path(out_dir).resolve()
    cfgs = {
        name: params.tune.with_preset(name).with_updates(updates or {})
        for name in (BASELINE_PRESET, PRESET)
    }
    if any(c.address for c in cfgs.values()):
        raise ConfigError("tune.address: the study reads every cell's folder from this machine")
    data = split_dataset(Path(dataset_dir), out_dir / DATA_DIR)
    cfg = cfgs[BASELINE_PRESET]
    storage = cfg.storage or str(out_dir / BASELINE_DIR / RAY_DIR)
    baseline = tune_sweep(
        data, out_dir / BASELINE_DIR, params, cfg, {}, name=BASELINE_PRESET,
        resume=resume and can_restore(storage, BASELINE_PRESET), progress=progress, track=track,
    )  # fmt: skip
    resamples = min(BOOTSTRAP, params.evaluate.bootstrap)
    result = sweep_and_report(
        data, out_dir, params, cfgs[PRESET], {}, PRESET, lambda: write_report(out_dir, resamples),
        resume=resume, progress=progress, track=track,
    )  # fmt: skip
    result.seconds += baseline.seconds
    return result


def split_dataset(dataset_dir: Path, out: Path) -> Path:
    """OUT/data: the detection dataset with the nested 10 … 100 % subsets of its train split
    (reused when it is there)."""
    from medssl.stages.split import split

    ds = Dataset.open(dataset_dir)
    if ds.info.task != "detection":
        raise DataContractError(
            f"{dataset_dir}: a {ds.info.task} dataset; the study needs a detection one "
            "(e.g. medssl data synth --kind chest-xray)"
        )
    if not (out / "dataset.yaml").is_file():
        split(dataset_dir, out, SplitConfig(label_fractions=FRACTIONS))
    return out


def _percent(fraction: float) -> int:
    """The pre-trained share p (%) of a fine-tuning fraction 1 − p."""
    return round(100 * (1 - float(fraction)))


def study_cells(out_dir: Path) -> pd.DataFrame:
    """One row per finished cell of both sweeps: arm (baseline | ssl), p (% pre-trained; for a
    baseline cell, the labels it did not get), seed, train images, the test metrics and where
    its predictions are."""
    rows = []
    for arm, folder in (("baseline", BASELINE_DIR), ("ssl", SWEEP_DIR)):
        results = out_dir / folder / RESULTS_FILE
        if not results.is_file():
            continue
        frame = pd.read_csv(results)
        for row in frame[frame["status"] == "completed"].to_dict(orient="records"):
            fraction = row.get(FRACTION_KEY, row.get(PAIRED_KEY, 1.0))
            fraction = 1.0 if fraction is None or fraction != fraction else float(fraction)
            trial = out_dir / folder / TRIALS_DIR / str(row["trial"])
            try:
                metrics = json.loads((trial / "eval" / "metrics.json").read_text())
                summary = json.loads((trial / "train" / "train.json").read_text())
            except (OSError, json.JSONDecodeError):
                raise ConfigError(
                    f"{trial}: missing or unreadable results (rerun with --resume)"
                ) from None
            cell = {
                "arm": arm,
                "p": _percent(fraction),
                "seed": int(row.get(SEED_KEY, 0) or 0),
                "train_images": int(summary["train_images"]),
                "predictions": str(trial / "train" / PREDICTIONS_FILE),
                "model_iou": metrics.get("test_model_iou"),
                "model_iou_std": metrics.get("test_model_iou_std"),
                "readers": metrics.get("readers", []),
                "per_class": {
                    c: v.get("map") for c, v in metrics["per_class"].items() if v.get("boxes")
                },
            }
            for key in COLUMNS:
                value = metrics.get(f"test_{key}")
                cell[key] = math.nan if value is None else float(value)
            rows.append(cell)
    if not rows:
        raise ConfigError(f"{out_dir}: no completed cell to report")
    return pd.DataFrame(rows).sort_values(["arm", "p", "seed"], ignore_index=True)


def _name(arm: str, p: int) -> str:
    if arm == "baseline":
        return "Baseline" if p == 0 else f"random init, {100 - p} % labels"
    return f"SSL {p}%"


def summary_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Table I and the model rows of Table II: mean over seeds, the paper's value in brackets."""
    rows = []
    for (arm, p), part in cells.groupby(["arm", "p"], sort=False):
        paper_key = "baseline" if (arm, p) == ("baseline", 0) else (p if arm == "ssl" else None)
        paper = PAPER_TABLE_I.get(paper_key) if paper_key is not None else None
        row: dict[str, Any] = {"model": _name(arm, p), "seeds": len(part)}
        for i, (key, label) in enumerate(COLUMNS.items()):
            text = f"{part[key].mean():.3f}"
            row[label] = text + (f" ({paper[i]:.3f})" if paper else "")
        images = int(part["train_images"].mean())
        row["Training images"] = f"{images}" + (f" ({paper[5]})" if paper else "")
        iou = PAPER_TABLE_II.get(paper_key) if paper_key is not None else None
        mean_iou = pd.to_numeric(part["model_iou"]).mean()
        sd = pd.to_numeric(part["model_iou_std"]).mean()
        row["IoU mean ± σ"] = f"{mean_iou:.3f} ± {sd:.3f}" + (
            f" ({iou[0]:.3f} ± {iou[1]:.3f})" if iou else ""
        )
        rows.append(row)
    order = {"Baseline": -1}
    table = pd.DataFrame(rows)
    return table.sort_values("model", key=lambda s: s.map(lambda m: order.get(m, 0)), kind="stable")


def reader_rows(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """Table II's reader rows (the same test images in every cell: the first cell's)."""
    first = cells.iloc[0]["readers"]
    return [
        {
            "pair": f"{r['first']} vs {r['second']}",
            "mean": r.get("mean"),
            "std": r.get("std"),
            "n": r.get("n"),
        }
        for r in first
    ]


def paired_effects(cells: pd.DataFrame, resamples: int = BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Each row's test mAP minus the baseline's, paired over the same test images and seeds: the
    point estimate, and a 95 % CI from resampling test images (the same resample for both
    models, the seeds averaged within each resample)."""
    from medssl.metrics.detection import coco_metrics

    base = cells[(cells["arm"] == "baseline") & (cells["p"] == 0)].set_index("seed")
    if base.empty:
        return pd.DataFrame()
    tables = {path: pd.read_parquet(path) for path in cells["predictions"]}
    first = tables[base.iloc[0]["predictions"]]
    test = first[first["split"] == "test"]
    images = np.array(sorted(test.loc[test["source"] == "truth", "image"].unique()))
    # every label a cell's table holds (a class no test box has is left out of COCO's mean)
    classes = sorted({str(c) for t in tables.values() for c in t["label"].dropna().unique()})
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(images), len(images)) for _ in range(resamples)]

    def per_draw(path: str) -> np.ndarray:
        t = tables[path]
        t = t[t["split"] == "test"]
        truth, found = t[t["source"] == "truth"], t[t["source"] == "model"]
        out = []
        for draw in draws:
            # a resampled image appears once per draw; rename duplicates so COCO counts each
            picked = images[draw]
            names = [f"{im}#{k}" for k, im in enumerate(picked)]
            mapping = pd.DataFrame({"image": picked, "new": names})
            tr = truth.merge(mapping, on="image").assign(image=lambda f: f["new"])
            fo = found.merge(mapping, on="image").assign(image=lambda f: f["new"])
            out.append(coco_metrics(tr, fo, classes, names)["map"])
        return np.asarray(out, dtype=np.float64)

    base_draws = {s: per_draw(base.loc[s, "predictions"]) for s in base.index}
    rows = []
    for (arm, p), part in cells.groupby(["arm", "p"], sort=False):
        if (arm, p) == ("baseline", 0):
            continue
        part = part.set_index("seed")
        seeds = [s for s in part.index if s in base.index]
        if not seeds:
            continue
        point = float(np.mean([part.loc[s, "map"] - base.loc[s, "map"] for s in seeds]))
        diffs = np.mean(
            [per_draw(part.loc[s, "predictions"]) - base_draws[s] for s in seeds], axis=0
        )
        low, high = np.nanpercentile(diffs, [2.5, 97.5])
        paper = PAPER_TABLE_I.get(p) if arm == "ssl" else None
        rows.append(
            {
                "model": _name(arm, p),
                "Δ mAP vs baseline": round(point, 4),
                "ci_low": round(float(low), 4),
                "ci_high": round(float(high), 4),
                "share of baseline mAP": _share(part.loc[seeds, "map"], base.loc[seeds, "map"]),
                "seeds": len(seeds),
                "paper Δ": round(paper[0] - PAPER_TABLE_I["baseline"][0], 3) if paper else None,
            }
        )
    return pd.DataFrame(rows)


def _share(values: pd.Series, baseline: pd.Series) -> float | None:
    """mean(values) / mean(baseline), None when the baseline's is 0."""
    b = float(baseline.mean())
    return round(float(values.mean()) / b, 3) if b > 0 else None


def write_report(out_dir: Path, resamples: int = BOOTSTRAP) -> SplitStudyResult:
    """study.md, study.json and fig4.png from the finished cells of both sweeps."""
    cells = study_cells(out_dir)
    table = summary_table(cells)
    effects = paired_effects(cells, resamples)
    readers = reader_rows(cells)
    test_images = None
    if len(cells):
        t = pd.read_parquet(cells.iloc[0]["predictions"])
        test_images = int(
            t.loc[(t["split"] == "test") & (t["source"] == "truth"), "image"].nunique()
        )
    lines = [
        "# Pre-training split study (paper 003 Table I-II, Fig. 4)",
        "",
        f"Test metrics against the readers' fused boxes on {test_images} test images, mean over "
        "seeds; the paper's numbers in brackets (its baseline is COCO-initialised, ours random).",
        "",
        "## Table I and the model rows of Table II",
        "",
        markdown_table(table),
        "",
        "## Table II: the readers",
        "",
        markdown_table(
            pd.DataFrame(
                [
                    {
                        **r,
                        "paper": " / ".join(
                            f"{k}: {v[0]:.3f} ± {v[1]:.3f}" for k, v in PAPER_READERS.items()
                        ),
                    }
                    for r in readers
                ]
            ),
            "(no reader pair)",
        ),
        "",
        "## Each row against the baseline",
        "",
        f"Δ test mAP, paired over the same test images and seeds; 95 % CI from {resamples} "
        "image resamples (the same resample for both models).",
        "",
        markdown_table(effects, "(no baseline cell)"),
        "",
        f"![mAP per class]({PLOT_FILE})",
        "",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out_dir / REPORT_FILE,
        "json": out_dir / REPORT_JSON,
        "plot": out_dir / PLOT_FILE,
    }
    atomic_write_text(paths["report"], "\n".join(lines))
    payload = {
        "cells": cells.drop(columns=["predictions"]).to_dict(orient="records"),
        "table": table.to_dict(orient="records"),
        "readers": readers,
        "effects": effects.to_dict(orient="records"),
        "test_images": test_images,
        "paper": {
            "table_i": {str(k): v for k, v in PAPER_TABLE_I.items()},
            "readers": PAPER_READERS,
        },
    }
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=_json) + "\n")
    plot_class_map_by_labels(cells, paths["plot"])
    return SplitStudyResult(out_dir, cells, table, effects, paths=paths)


def _json(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(type(value).__name__)
