"""Evaluate a detector (paper 003 §IV): COCO mAP@[.5:.95], mAP50, mAP-small, AR@100 and AR-small
on the test images against the readers' fused boxes (Table I), mAP per class (Fig. 4), and the
IoU table (Table II): the agreement of the two reader pairs that read the most test images
together, and the model's best-overlapping detection of each fused box.

Input: the detector's predictions.parquet (methods.faster_rcnn: reader, truth and model boxes of
every val/test image). Output folder, like a classifier's: metrics.json (flat numbers first,
then per_class), per_class.csv (for `dvc plots`), per_class.png, report.md, table.txt.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medssl.errors import DataContractError
from medssl.fileio import staged_dir
from medssl.metrics.detection import coco_metrics, model_iou, reader_agreement
from medssl.plots import plot_class_map

if TYPE_CHECKING:
    from medssl.tracking.base import Tracker

SOURCE_COLUMN = "source"  # a detector's predictions table has it; a classifier's does not
PER_CLASS_FILE = "per_class.csv"
PER_CLASS_PLOT = "per_class.png"
# Table I's columns: metrics.json key → the paper's name
TABLE_I = {
    "map": "mAP",
    "map50": "mAP50",
    "map_small": "mAP small",
    "ar100": "AR",
    "ar_small": "AR small",
}


def is_detection(table: pd.DataFrame) -> bool:
    return SOURCE_COLUMN in table.columns


def is_detection_metrics(metrics: dict[str, Any]) -> bool:
    """Whether a metrics.json is a detector's."""
    return "test_map" in metrics


def split_sources(
    table: pd.DataFrame, split: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """(readers' boxes, fused truth, detections, images) of one split of a predictions table."""
    part = table[table["split"] == split]
    by = part[SOURCE_COLUMN].astype(str)
    images = sorted(part.loc[by == "truth", "image"].astype(str).unique())
    return part[by == "reader"], part[by == "truth"], part[by == "model"], images


def reader_pairs(readers: pd.DataFrame, top: int = 2) -> list[tuple[str, str]]:
    """The `top` reader pairs that read the most images together (paper 003 Table II: R09 with
    R10 and with R11, who read ~85 % of its test images), most shared images first."""
    per_image = readers.groupby(readers["image"].astype(str))["reader_id"].agg(
        lambda s: sorted(set(s.astype(str)))
    )
    counts: dict[tuple[str, str], int] = {}
    for ids in per_image:
        for pair in itertools.combinations(ids, 2):
            counts[pair] = counts.get(pair, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [pair for pair, _ in ranked[:top]]


def detection_metrics(table: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """metrics.json's content for a detector's predictions table."""
    out: dict[str, Any] = {}
    per_class: dict[str, dict[str, Any]] = {c: {} for c in classes}
    for split in ("val", "test"):
        readers, truth, found, images = split_sources(table, split)
        if not images:
            if split == "test":
                raise DataContractError("the predictions table has no test images with boxes")
            continue
        coco = coco_metrics(truth, found, classes, images)
        for key in TABLE_I:
            out[f"{split}_{key}"] = _finite(coco[key])
        out[f"{split}_images"] = len(images)
        out[f"{split}_boxes"] = len(truth)
        if split == "test":
            for c in classes:
                per_class[c]["map"] = _finite(coco["map_per_class"].get(c, float("nan")))
                per_class[c]["boxes"] = int((truth["label"].astype(str) == c).sum())
            iou = model_iou(truth, found)
            out["test_model_iou"] = _finite(iou["mean"])
            out["test_model_iou_std"] = _finite(iou["std"])
            out["readers"] = [
                {"first": a, "second": b, **_clean(reader_agreement(readers, a, b))}
                for a, b in reader_pairs(readers)
            ]
    out["per_class"] = per_class
    return out


def evaluate_detection(
    table: pd.DataFrame,
    out_dir: Path,
    inputs: dict[str, Any],
    *,
    classes: list[str],
    tracker: Tracker | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Score a detector's predictions and write the report folder (all of it or none)."""
    metrics = {**detection_metrics(table, classes), "inputs": inputs}
    files = {
        "metrics": "metrics.json",
        "per_class": PER_CLASS_FILE,
        "per_class_plot": PER_CLASS_PLOT,
        "report": "report.md",
        "table": "table.txt",
    }
    per = pd.DataFrame(
        [{"class": c, **v} for c, v in metrics["per_class"].items()],
        columns=["class", "map", "boxes"],
    )
    with staged_dir(out_dir) as tmp:
        (tmp / files["metrics"]).write_text(json.dumps(metrics, indent=2) + "\n")
        per.to_csv(tmp / PER_CLASS_FILE, index=False)
        plot_class_map(per, tmp / PER_CLASS_PLOT, metrics.get("test_map"))
        (tmp / files["table"]).write_text(format_detection_table(metrics) + "\n")
        (tmp / files["report"]).write_text(format_detection_markdown(metrics))
    if tracker is not None:
        from medssl.stages.evaluate import flat_metrics

        tracker.log_metrics(flat_metrics(metrics))
        tracker.log_artifacts(str(out_dir))
    return metrics, {k: Path(out_dir) / v for k, v in files.items()}


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def table_rows(metrics: dict[str, Any]) -> tuple[list[str], list[str], list[tuple[str, str, str]]]:
    """(Table I header, Table I cells, Table II rows (name, mean IoU, σ))."""
    header = [*TABLE_I.values(), "Test images"]
    cells = [_num(metrics.get(f"test_{k}")) for k in TABLE_I] + [
        str(metrics.get("test_images", ""))
    ]
    rows = [
        (f"{r['first']} vs {r['second']} ({r['n']} boxes)", _num(r.get("mean")), _num(r.get("std")))
        for r in metrics.get("readers", [])
    ]
    rows.append(
        (
            "model vs fused truth",
            _num(metrics.get("test_model_iou")),
            _num(metrics.get("test_model_iou_std")),
        )
    )
    return header, cells, rows


def format_detection_table(metrics: dict[str, Any]) -> str:
    """The terminal table: paper 003 Table I's row, per-class mAP, Table II."""
    header, cells, rows = table_rows(metrics)
    widths = [max(len(h), len(c)) for h, c in zip(header, cells, strict=True)]
    lines = [
        "paper 003 Table I layout (test, against the readers' fused boxes):",
        "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)),
        "",
        "mAP@[.5:.95] per class (Fig. 4): "
        + ", ".join(
            f"{c} {_num(v.get('map'))}" for c, v in metrics["per_class"].items() if v.get("boxes")
        ),
        "",
        "paper 003 Table II layout (IoU, mean and σ):",
    ]
    name_w = max(len(r[0]) for r in rows)
    lines += [f"{n.ljust(name_w)}  {m:>6}  {s:>6}" for n, m, s in rows]
    return "\n".join(lines)


def format_detection_markdown(metrics: dict[str, Any]) -> str:
    header, cells, rows = table_rows(metrics)
    md = [
        "# Detection evaluation",
        "",
        "COCO metrics on the test images against the readers' fused boxes (paper 003 §IV, "
        "Table I layout); mAP small / AR small: objects under 32² px.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
        "| " + " | ".join(cells) + " |",
        "",
        "| class | boxes | mAP@[.5:.95] |",
        "|---|---:|---:|",
        *(
            f"| {c} | {v.get('boxes', 0)} | {_num(v.get('map'))} |"
            for c, v in metrics["per_class"].items()
        ),
        "",
        "IoU agreement (Table II layout): reader pairs matched by class with IoU > 0.2; the "
        "model's best-overlapping detection of each fused box (0 where it has none of the class).",
        "",
        "| | mean IoU | σ |",
        "|---|---:|---:|",
        *(f"| {n} | {m} | {s} |" for n, m, s in rows),
        "",
        f"![mAP per class]({PER_CLASS_PLOT})",
        "",
    ]
    return "\n".join(md)


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in d.items()}
