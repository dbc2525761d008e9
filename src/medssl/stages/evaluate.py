"""Evaluate stage (paper 000 §3.2, Table 2): class-specific thresholds that maximise each class's
F1 on the validation split, then per-class precision / recall / F1 on the test split and their
support-weighted average, with an exam-level bootstrap CI of the weighted F1 and the
label-prevalence baseline for context.

Input: `model_dir/predictions.parquet` only (written by the train stage): one row per val/test
image with `exam_id`, `split`, `label_<class>` (0/1) and `score_<class>` (probability).

Output folder: metrics.json (flat numbers first, for `dvc metrics show`; then per_class),
thresholds.csv, pr_curves.csv (for `dvc plots`: x=recall, y=precision), pr_curves.png, report.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medssl.config import EvaluateConfig
from medssl.data.contract import LABEL_PREFIX, PREDICTIONS_FILE, SCORE_PREFIX, lesion_keys
from medssl.errors import DataContractError
from medssl.fileio import sha256_file, staged_dir
from medssl.metrics.binary import binary_report
from medssl.metrics.bootstrap import bootstrap_weighted_f1
from medssl.metrics.multilabel import (
    best_thresholds,
    constant_score_thresholds,
    multilabel_report,
    weighted_f1,
)
from medssl.stages.evaluate_detection import (
    evaluate_detection,
    format_detection_table,
    is_detection,
    is_detection_metrics,
)

if TYPE_CHECKING:
    from medssl.tracking.base import Tracker

EVAL_DIR = "eval"
INPUTS_KEY = "inputs"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
THRESHOLDS_FILE = "thresholds.csv"
PR_CURVES_FILE = "pr_curves.csv"
PR_PLOT_FILE = "pr_curves.png"
PR_DIR = "pr"
REPORT_FILE = "report.md"
TABLE_FILE = "table.txt"

FILES = {
    "metrics": METRICS_FILE,
    "thresholds": THRESHOLDS_FILE,
    "pr_curves": PR_CURVES_FILE,
    "pr_dir": PR_DIR,
    "pr_plot": PR_PLOT_FILE,
    "report": REPORT_FILE,
    "table": TABLE_FILE,
}
DEFAULT_THRESHOLD = 0.5  # without val rows to tune on
# paper 004 Table 1's columns (metrics.json: test_<key>), in its order
BINARY_COLUMNS = {
    "auc": "AUC",
    "accuracy": "ACC",
    "sensitivity": "Sensitivity",
    "precision": "Precision",
    "specificity": "Specificity",
    "f1": "F1",
    "mcr": "MCR",
}
ROW_NAMES = {"f1": "F1-score", "precision": "Precision", "recall": "Recall"}
AVG_NAME = "weighted avg"


@dataclass
class EvaluateResult:
    """metrics: the content of metrics.json; paths: every file written, by name."""

    out_dir: Path
    metrics: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    bootstrap: int = 0
    ci: float = 0.95
    roc: dict[str, list[float]] = field(default_factory=dict)  # micro-averaged, test
    confusion: list[list[int]] = field(default_factory=list)  # [[TN, FP], [FN, TP]], test

    @property
    def classes(self) -> list[str]:
        return list(self.metrics["per_class"])


@dataclass
class _Split:
    y: np.ndarray  # [n, C] bool
    scores: np.ndarray  # [n, C] float
    exams: np.ndarray  # [n] exam ids
    lesions: np.ndarray | None = None  # [n] lesion ids, when every row has one


def evaluate(
    model_dir: Path,
    out_dir: Path | None,
    cfg: EvaluateConfig,
    *,
    tracker: Tracker | None = None,
) -> EvaluateResult:
    """Thresholds on val, metrics on test; write the report folder (all of it or none of it;
    default: MODEL_DIR/eval) and return its numbers. metrics.json records which predictions (and
    model) it scored, by sha256, so `register` can refuse another model's numbers."""
    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_eval_dir(model_dir)
    table = read_predictions_table(model_dir / PREDICTIONS_FILE)
    if is_detection(table):  # a detector's boxes (paper 003)
        metrics, paths = evaluate_detection(
            table, out_dir, scored_inputs(model_dir), classes=model_classes(model_dir, table),
            tracker=tracker,
        )  # fmt: skip
        return EvaluateResult(out_dir, metrics, paths)
    classes, splits = predictions_splits(table, str(model_dir / PREDICTIONS_FILE))
    val, test = splits["val"], splits["test"]
    scored = score(classes, val, test, cfg)
    metrics = {**scored.metrics, INPUTS_KEY: scored_inputs(model_dir)}
    thresholds, test_pred = scored.thresholds, scored.test_pred
    curves = pr_curves(test.y, test.scores, classes)
    result = EvaluateResult(out_dir, metrics, bootstrap=cfg.bootstrap, ci=cfg.ci)
    result.roc = roc_micro(test.y, test.scores)
    result.confusion = confusion_micro(test.y, test_pred)
    paths = result.paths
    with staged_dir(out_dir) as tmp:  # the report folder is complete or absent
        for key, name in FILES.items():
            paths[key] = out_dir / name
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        pd.DataFrame({"class": classes, "threshold": thresholds, "val_f1": scored.val_f1}).to_csv(
            tmp / THRESHOLDS_FILE, index=False
        )
        curves.to_csv(tmp / PR_CURVES_FILE, index=False)
        # one file per class, so `dvc plots show` draws one precision-recall curve per class
        (tmp / PR_DIR).mkdir()
        for name, rows in curves.groupby("class", sort=False):
            rows.drop(columns="class").to_csv(tmp / PR_DIR / f"{name}.csv", index=False)
        _plot_pr_curves(curves, result, test.y.mean(axis=0), tmp / PR_PLOT_FILE)
        (tmp / REPORT_FILE).write_text(format_markdown(result))
        # the terminal table, for `make demo` and CI logs
        (tmp / TABLE_FILE).write_text(format_table(result) + "\n")

    if tracker is not None:
        tracker.log_metrics(flat_metrics(metrics))
        tracker.log_artifacts(str(out_dir))
    return result


@dataclass
class Scored:
    """metrics: metrics.json's numbers and per_class; the val-tuned thresholds, the test
    decisions and each class's val F1 at its threshold."""

    metrics: dict[str, Any]
    thresholds: np.ndarray
    test_pred: np.ndarray
    val_f1: np.ndarray


def score(classes: list[str], val: _Split, test: _Split, cfg: EvaluateConfig) -> Scored:
    """Paper 000 §3.2: per-class thresholds maximising val F1, then test P/R/F1 (per class and
    support-weighted), the exam-bootstrap CI and the label-prevalence baseline. Without val rows
    (a cross-validation round) every threshold is 0.5 (paper 004: the classifier's decision).
    One class (a binary task) adds paper 004's Table 1 columns (test_auc … test_mcr)."""
    has_val = len(val.y) > 0
    if has_val:
        thresholds = best_thresholds(val.y, val.scores)
    else:
        thresholds = np.full(len(classes), DEFAULT_THRESHOLD)
    val_report = multilabel_report(val.y, val.scores >= thresholds, classes) if has_val else None
    test_pred = test.scores >= thresholds
    report = multilabel_report(test.y, test_pred, classes)
    ci = bootstrap_weighted_f1(test.y, test_pred, test.exams, cfg.bootstrap, cfg.ci, cfg.seed)
    # label-prevalence baseline: a constant score, thresholds tuned on val like the model's
    # (without val: predict every class that has a positive, the F1-optimal constant)
    constant = constant_score_thresholds(val.y if has_val else test.y)
    baseline_pred = np.broadcast_to(constant < 0, test.y.shape)
    baseline = weighted_f1(test.y, baseline_pred)

    metrics: dict[str, Any] = {
        "test_f1_weighted": report.weighted["f1"],
        "test_precision_weighted": report.weighted["precision"],
        "test_recall_weighted": report.weighted["recall"],
        "test_f1_weighted_ci_low": _finite(ci.low),
        "test_f1_weighted_ci_high": _finite(ci.high),
        "test_prevalence_f1_weighted": baseline,
        "test_images": len(test.y),
        "test_exams": int(pd.unique(test.exams).size),
        "test_labels": int(test.y.sum()),
        "val_images": len(val.y),
        "val_exams": int(pd.unique(val.exams).size),
        "per_class": {
            c: {
                "precision": float(report.precision[i]),
                "recall": float(report.recall[i]),
                "f1": float(report.f1[i]),
                "support": int(report.support[i]),
                "threshold": _finite(thresholds[i]),
            }
            for i, c in enumerate(classes)
        },
    }
    if len(classes) == 1:
        binary = binary_report(test.y[:, 0], test.scores[:, 0], test_pred[:, 0], test.lesions)
        metrics.update({f"test_{k}": _finite(v) for k, v in binary.items()})
    val_f1 = val_report.f1.astype(float) if val_report else np.full(len(classes), np.nan)
    return Scored(metrics, thresholds, test_pred, val_f1)


def default_eval_dir(model_dir: Path) -> Path:
    """Where `evaluate` writes and `register` reads by default: MODEL_DIR/eval."""
    return Path(model_dir) / EVAL_DIR


def scored_inputs(model_dir: Path) -> dict[str, str | None]:
    """What an evaluation scored: the sha256 of the model folder's predictions and model.pt
    (None when it has no model.pt)."""
    model_dir = Path(model_dir)
    model = model_dir / MODEL_FILE
    return {
        "predictions_sha256": sha256_file(model_dir / PREDICTIONS_FILE),
        "model_sha256": sha256_file(model) if model.is_file() else None,
    }


def score_predictions(path: Path, cfg: EvaluateConfig) -> tuple[_Split, Scored]:
    """A predictions file's test rows and their scoring as `evaluate` does it (thresholds from
    val; `Scored.test_pred` holds the test decisions), without writing anything."""
    classes, splits = read_predictions(path)
    return splits["test"], score(classes, splits["val"], splits["test"], cfg)


def read_predictions(path: Path) -> tuple[list[str], dict[str, _Split]]:
    """Classes (in label-column order) and the val and test rows of a predictions file;
    a one-line DataContractError for anything the evaluation cannot use."""
    return predictions_splits(read_predictions_table(path), str(path))


def read_predictions_table(path: Path) -> pd.DataFrame:
    """A model folder's predictions.parquet as written (one-line error when unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise DataContractError(f"{path}: predictions file not found (run `medssl train` first)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataContractError(f"{path}: not a readable parquet file ({reason})") from None


def model_classes(model_dir: Path, table: pd.DataFrame) -> list[str]:
    """The classes of a detector: its model.pt's, else the labels its predictions hold."""
    model = Path(model_dir) / MODEL_FILE
    if model.is_file():
        from medssl.models.classifier import _read_model_file

        return [str(c) for c in _read_model_file(model)[1]["classes"]]
    return sorted(table["label"].dropna().astype(str).unique())


def predictions_splits(table: pd.DataFrame, path: str) -> tuple[list[str], dict[str, _Split]]:
    """Classes and the val and test rows of a predictions table (`path` names it in errors)."""
    missing = [c for c in ("split", "exam_id") if c not in table.columns]
    if missing:
        raise DataContractError(f"{path}: missing column(s) {', '.join(missing)}")
    classes = [c.removeprefix(LABEL_PREFIX) for c in table.columns if c.startswith(LABEL_PREFIX)]
    scored = [c.removeprefix(SCORE_PREFIX) for c in table.columns if c.startswith(SCORE_PREFIX)]
    if not classes:
        raise DataContractError(f"{path}: no {LABEL_PREFIX}<class> columns")
    if set(classes) != set(scored):
        no_score = [c for c in classes if c not in scored]
        no_label = [c for c in scored if c not in classes]
        parts = []
        if no_score:
            parts.append(f"label(s) without a score column: {', '.join(no_score)}")
        if no_label:
            parts.append(f"score(s) without a label column: {', '.join(no_label)}")
        raise DataContractError(f"{path}: {'; '.join(parts)}")

    label_cols = [LABEL_PREFIX + c for c in classes]
    score_cols = [SCORE_PREFIX + c for c in classes]
    splits: dict[str, _Split] = {}
    split_col = table["split"].astype("string")
    for name in ("val", "test"):
        rows = table[(split_col == name).fillna(False).to_numpy(dtype=bool)]
        if rows.empty and name == "val":  # cross-validation: thresholds at 0.5
            splits[name] = _Split(np.zeros((0, len(classes)), bool), np.zeros((0, len(classes))),
                                  np.zeros(0, dtype=object))  # fmt: skip
            continue
        if rows.empty:
            found = sorted(str(s) for s in split_col.dropna().unique())
            raise DataContractError(
                f"{path}: no {name!r} rows (splits present: {', '.join(found) or 'none'})"
            )
        labels = rows[label_cols]
        if labels.isna().any().any():
            col = labels.columns[labels.isna().any()][0]
            raise DataContractError(f"{path}: missing labels in {col!r} on {name} rows")
        try:
            y = labels.to_numpy(dtype=float)
            scores = rows[score_cols].to_numpy(dtype=float)
        except (TypeError, ValueError) as exc:
            raise DataContractError(f"{path}: non-numeric label or score column ({exc})") from None
        bad = ~np.isin(y, (0.0, 1.0)).all(axis=0)
        if bad.any():
            col = label_cols[int(np.flatnonzero(bad)[0])]
            raise DataContractError(f"{path}: column {col!r} has values other than 0/1")
        bad = ~np.isfinite(scores).all(axis=0)
        if bad.any():
            col = score_cols[int(np.flatnonzero(bad)[0])]
            raise DataContractError(f"{path}: column {col!r} has missing or non-finite scores")
        exams = rows["exam_id"]
        if exams.isna().any():
            raise DataContractError(f"{path}: missing exam_id on {name} rows")
        lesions = None
        if {"lesion_id", "patient_id"} <= set(rows.columns):
            lesions = lesion_keys(rows)
            lesions = None if lesions.isna().any() else lesions
        splits[name] = _Split(
            y.astype(bool),
            scores,
            exams.astype(str).to_numpy(),
            None if lesions is None else lesions.astype(str).to_numpy(),
        )
    return classes, splits


def pr_curves(y: np.ndarray, scores: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Precision-recall curve points per class on the given (test) rows, recall ascending.
    The end point (recall 0, precision 1) has no threshold (NaN). Classes without a positive
    have no curve."""
    from sklearn.metrics import precision_recall_curve

    frames = []
    for i, c in enumerate(classes):
        if not y[:, i].any():
            continue
        precision, recall, thr = precision_recall_curve(y[:, i], scores[:, i])
        frame = pd.DataFrame(
            {
                "class": c,
                "recall": recall,
                "precision": precision,
                "threshold": np.r_[thr, np.nan],
            }
        )
        frames.append(frame.iloc[::-1])
    if not frames:
        return pd.DataFrame(columns=["class", "recall", "precision", "threshold"])
    return pd.concat(frames, ignore_index=True)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of metrics.json under the one naming scheme every consumer uses (MLflow run
    metrics, KFP Metrics, registry version tags): <split>_<metric> as in metrics.json, plus
    test_<f1|precision|recall>_<class> from per_class."""
    out = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    for c, m in (metrics.get("per_class") or {}).items():
        for k in ("f1", "precision", "recall"):
            if isinstance((m or {}).get(k), int | float):
                out[f"test_{k}_{c}"] = float(m[k])
    return out


def roc_micro(y: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """Micro-averaged ROC curve over every (image, class) pair of the test rows (for KFP's
    ClassificationMetrics); empty when the test rows have no positive or no negative."""
    from sklearn.metrics import roc_curve

    flat_y, flat_s = y.ravel(), scores.ravel()
    if flat_y.all() or not flat_y.any():
        return {"fpr": [], "tpr": [], "threshold": []}
    fpr, tpr, thr = roc_curve(flat_y, flat_s, drop_intermediate=True)
    thr = np.where(np.isfinite(thr), thr, 1.0)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thr.tolist()}


def confusion_micro(y: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    """[[TN, FP], [FN, TP]] summed over classes at the per-class thresholds."""
    y, pred = y.astype(bool), pred.astype(bool)
    return [
        [int((~y & ~pred).sum()), int((~y & pred).sum())],
        [int((y & ~pred).sum()), int((y & pred).sum())],
    ]


# ---------------------------------------------------------------------------------- formatting


def _rows(result: EvaluateResult) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Header and rows (name, cells) of the paper's Table 2 layout."""
    m, per = result.metrics, result.metrics["per_class"]
    header = [*per, AVG_NAME]
    rows = [
        (label, [f"{per[c][key]:.2f}" for c in per] + [f"{m[f'test_{key}_weighted']:.2f}"])
        for key, label in ROW_NAMES.items()
    ]
    rows.append(("nlabels", [str(per[c]["support"]) for c in per] + [str(m["test_labels"])]))
    return header, rows


def _summary_lines(result: EvaluateResult) -> list[str]:
    m = result.metrics
    if m["test_f1_weighted_ci_low"] is None:
        ci = "no bootstrap CI (evaluate.bootstrap = 0)"
    else:
        ci = (
            f"{result.ci:.0%} CI {m['test_f1_weighted_ci_low']:.3f}–"
            f"{m['test_f1_weighted_ci_high']:.3f} "
            f"({result.bootstrap} exam resamples)"
        )
    if m["val_images"]:
        source = f"thresholds from val: {m['val_images']:,} images, {m['val_exams']:,} exams"
    else:
        source = f"no val rows: threshold {DEFAULT_THRESHOLD:g}"
    lines = [
        f"weighted F1 {m['test_f1_weighted']:.3f}, {ci}",
        f"label-prevalence baseline: weighted F1 {m['test_prevalence_f1_weighted']:.3f}",
        f"test: {m['test_images']:,} images, {m['test_exams']:,} exams, "
        f"{m['test_labels']:,} labels; {source}",
    ]
    if "test_auc" in m:  # binary (paper 004 Table 1)
        cells = [f"{name} {_pct(m.get(f'test_{key}'))}" for key, name in BINARY_COLUMNS.items()]
        erring = m.get("test_mcr_lesions") or 0
        lines.append(f"binary: {', '.join(cells)} (MCR over {erring:.0f} lesions with an error)")
    return lines


def two_class_rows(
    m: dict[str, Any], positive: str
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Paper 002 Table 1's layout of a binary test set: the negative and the positive class's
    precision (the negative's is the NPV), recall (specificity, sensitivity), F1 and support;
    accuracy; macro and support-weighted averages."""
    n_pos = int(m["per_class"][positive]["support"])
    n = int(m["test_images"])
    n_neg = n - n_pos

    def f(key: str) -> str:
        v = m.get(f"test_{key}")
        return "n/a" if v is None else f"{v:.2f}"

    def weighted(neg: str, pos: str) -> str:
        a, b = m.get(f"test_{neg}"), m.get(f"test_{pos}")
        return "n/a" if a is None or b is None or not n else f"{(n_neg * a + n_pos * b) / n:.2f}"

    rows = [
        (f"no {positive}", [f("npv"), f("specificity"), f("f1_negative"), str(n_neg)]),
        (positive, [f("precision"), f("sensitivity"), f("f1"), str(n_pos)]),
        ("accuracy", ["", "", f("accuracy"), str(n)]),
        ("macro avg", [f("precision_macro"), f("balanced_accuracy"), f("f1_macro"), str(n)]),
        (
            "weighted avg",
            [
                weighted("npv", "precision"),
                weighted("specificity", "sensitivity"),
                weighted("f1_negative", "f1"),
                str(n),
            ],
        ),
    ]
    return ["Precision", "Recall", "F1-score", "support"], rows


def _aligned(header: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    first = max(len(name) for name, _ in rows)
    widths = [max(len(h), 5) for h in header]
    lines = [" " * first + "".join(f"  {h:>{w}}" for h, w in zip(header, widths, strict=True))]
    for name, cells in rows:
        lines.append(
            f"{name:<{first}}" + "".join(f"  {v:>{w}}" for v, w in zip(cells, widths, strict=True))
        )
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def format_table(result: EvaluateResult) -> str:
    """The per-class table in the layout of paper 000 Table 2, then the CI and baseline; a binary
    model adds both classes' rows in the layout of paper 002 Table 1; a detector's are paper 003's
    Tables I-II."""
    if is_detection_metrics(result.metrics):
        return format_detection_table(result.metrics)
    lines = _aligned(*_rows(result))
    m = result.metrics
    if "test_npv" in m:
        lines += ["", *_aligned(*two_class_rows(m, next(iter(m["per_class"]))))]
    return "\n".join([*lines, "", *_summary_lines(result)])


def format_markdown(result: EvaluateResult) -> str:
    """report.md: the Table 2 layout, thresholds, CI, baseline and counts."""
    header, rows = _rows(result)
    per = result.metrics["per_class"]
    md = [
        "# Evaluation",
        "",
        "Class-specific thresholds maximise each class's F1 on the validation split; precision, "
        "recall and F1 are measured on the test split (paper 000 §3.2, Table 2 layout).",
        "",
        "| | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(header),
    ]
    md += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    m = result.metrics
    if "test_npv" in m:  # paper 002 Table 1: both classes
        header2, rows2 = two_class_rows(m, next(iter(per)))
        md += ["", "| | " + " | ".join(header2) + " |", "|---|" + "---:|" * len(header2)]
        md += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows2]
    thr = ["never" if per[c]["threshold"] is None else f"{per[c]['threshold']:.3g}" for c in per]
    md += [
        "",
        "| threshold (val) | " + " | ".join(per) + " |",
        "|---|" + "---:|" * len(per),
        "| | " + " | ".join(thr) + " |",
        "",
        *(f"- {line}" for line in _summary_lines(result)),
        "",
        f"![precision-recall curves on test]({PR_PLOT_FILE})",
        "",
    ]
    return "\n".join(md)


def _plot_pr_curves(
    curves: pd.DataFrame, result: EvaluateResult, prevalence: np.ndarray, path: Path
) -> None:
    """One panel per class: the test PR curve, the chosen threshold's operating point, and the
    class prevalence (a constant score's precision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result.metrics["per_class"]
    n = len(per)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for i, (c, m) in enumerate(per.items()):
        ax = axes.ravel()[i]
        part = curves[curves["class"] == c]
        if len(part):
            ax.plot(part["recall"], part["precision"], color="#4c72b0", lw=1.5, drawstyle="steps")
        ax.axhline(prevalence[i], color="grey", ls=":", lw=1, label="prevalence")
        ax.plot(m["recall"], m["precision"], "o", color="#c44e52", ms=6, label="val-F1 threshold")
        thr = "never" if m["threshold"] is None else f"{m['threshold']:.2f}"
        ax.set_title(f"{c}  F1 {m['f1']:.2f}  t={thr}  n={m['support']}", fontsize=8)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    m = result.metrics
    fig.suptitle(f"test precision-recall; weighted F1 {m['test_f1_weighted']:.3f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finite(x: float) -> float | None:
    """A JSON-safe number: None for ±inf / NaN (a class never predicted, no CI)."""
    x = float(x)
    return x if math.isfinite(x) else None
