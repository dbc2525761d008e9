"""Split stage: patient-disjoint splits (when the manifest has none) and the nested label-fraction
subsets of the labeled train split (paper 000 §3.3.2: 10/20/50/100 %, sampled by exam).

Output: a dataset folder in the contract whose `image_root` points back at the input's images
(nothing is copied), with a `label_fraction` column, plus `splits.json` and `splits.png`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from medssl.config import SplitConfig
from medssl.data.contract import (
    LABEL_PREFIX,
    LABELED_SPLITS,
    SPLITS,
    Dataset,
    DatasetInfo,
    write_dataset,
)
from medssl.data.splitting import LABEL_FRACTION_COLUMN, assign_splits, label_fraction_column
from medssl.errors import DataContractError
from medssl.fileio import staged_dir

SUMMARY_FILE = "splits.json"
PLOT_FILE = "splits.png"


@dataclass
class SplitResult:
    out_dir: Path
    resplit: bool
    images: dict[str, int] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)
    exams: dict[str, int] = field(default_factory=dict)
    label_fractions: dict[str, dict[str, int]] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        return out


def split(dataset_dir: Path, out_dir: Path, cfg: SplitConfig) -> SplitResult:
    """Write `out_dir` = the dataset with splits and label fractions; return their counts."""
    ds = Dataset.open(dataset_dir)
    manifest = ds.manifest.copy()
    label_cols = ds.info.label_columns()
    needs_split = bool(cfg.resplit or manifest["split"].isna().all())
    if needs_split:
        manifest = _make_splits(manifest, label_cols, cfg)
    elif manifest["split"].isna().any():
        raise DataContractError(
            f"{dataset_dir}: some rows have a split and some do not; "
            "fill them all or set split.resplit=true"
        )
    _check_disjoint(manifest)
    manifest[LABEL_FRACTION_COLUMN] = label_fraction_column(manifest, cfg.label_fractions, cfg.seed)

    out_dir = Path(out_dir)
    # the staging folder is a sibling: the relative image_root holds for both
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    info = ds.info.model_copy(
        update={
            "image_root": os.path.relpath(
                ds.image_dir.resolve(), out_dir.parent.resolve() / out_dir.name
            ),
            "attributes": [*ds.info.attributes, LABEL_FRACTION_COLUMN],
        }
    )
    result = _summarise(manifest, info, out_dir, needs_split, cfg.label_fractions)
    with staged_dir(out_dir) as tmp:  # all of it or none of it
        write_dataset(tmp, info, manifest, ds.reports, ds.boxes)
        (tmp / SUMMARY_FILE).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        _plot(result, info, tmp / PLOT_FILE)
    return result


def _make_splits(manifest: pd.DataFrame, label_cols: list[str], cfg: SplitConfig) -> pd.DataFrame:
    """Assign splits. Only patients whose every row is labeled can enter a labeled split; when all
    rows are labeled, rows sent to `unlabeled` have their labels hidden (label-fraction studies)."""
    if not label_cols:
        manifest["split"] = assign_splits(manifest, cfg.fractions, cfg.seed)
        return manifest
    row_labeled = manifest[label_cols].notna().all(axis=1)
    patient_labeled = row_labeled.groupby(manifest["patient_id"]).transform("all")
    if patient_labeled.all():
        manifest["split"] = assign_splits(manifest, cfg.fractions, cfg.seed)
    else:
        labeled_share = {s: cfg.fractions.get(s, 0.0) for s in LABELED_SPLITS}
        total = sum(labeled_share.values())
        if not patient_labeled.any() or total == 0:
            manifest["split"] = "unlabeled"
        else:
            manifest["split"] = pd.Series("unlabeled", index=manifest.index, dtype="string")
            sub = manifest[patient_labeled]
            shares = {s: v / total for s, v in labeled_share.items()}
            manifest.loc[sub.index, "split"] = assign_splits(sub, shares, cfg.seed)
    unlabeled = manifest["split"] == "unlabeled"
    for col in label_cols:
        manifest.loc[unlabeled, col] = pd.NA
    return manifest


def _check_disjoint(manifest: pd.DataFrame) -> None:
    per_patient = manifest.groupby("patient_id")["split"].nunique()
    shared = per_patient[per_patient > 1]
    if len(shared):
        raise DataContractError(
            f"{len(shared)} patient(s) appear in several splits (e.g. {shared.index[0]}); "
            "run `medssl validate`, or set split.resplit=true"
        )


def _summarise(
    manifest: pd.DataFrame,
    info: DatasetInfo,
    out_dir: Path,
    resplit: bool,
    fractions: list[float],
) -> SplitResult:
    result = SplitResult(out_dir=out_dir, resplit=resplit)
    groups = manifest.groupby("split", observed=True)
    for split_name in SPLITS:
        if split_name not in groups.groups:
            continue
        rows = groups.get_group(split_name)
        result.images[split_name] = len(rows)
        result.patients[split_name] = int(rows["patient_id"].nunique())
        result.exams[split_name] = int(rows["exam_id"].nunique())
        if split_name != "unlabeled":
            result.class_counts[split_name] = {
                col.removeprefix(LABEL_PREFIX): int(rows[col].fillna(0).sum())
                for col in info.label_columns()
            }
    column = manifest[LABEL_FRACTION_COLUMN]
    for f in sorted(set(fractions)):
        subset = manifest[column.notna() & (column <= f)]
        result.label_fractions[f"{f:g}"] = {
            "images": len(subset),
            "exams": int(subset["exam_id"].nunique()),
        }
    return result


def _plot(result: SplitResult, info: DatasetInfo, path: Path) -> None:
    """Images per split and labels per class in each labeled split."""
    fig, (ax_split, ax_class) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(result.images)
    ax_split.bar(names, [result.images[n] for n in names], color="#4c72b0")
    ax_split.set_yscale("log")
    ax_split.set_title("images per split (log)")
    for i, n in enumerate(names):
        ax_split.annotate(
            f"{result.images[n]:,}\n{result.patients[n]:,} pat.",
            (i, result.images[n]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    classes = list(next(iter(result.class_counts.values()), {}))
    width = 0.8 / max(1, len(result.class_counts))
    for k, (split_name, counts) in enumerate(result.class_counts.items()):
        xs = [i + k * width for i in range(len(classes))]
        ax_class.bar(xs, [counts[c] for c in classes], width=width, label=split_name)
    ax_class.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))], classes, rotation=30)
    ax_class.set_title("labels per class")
    if result.class_counts:
        ax_class.legend(fontsize=8)
    fig.suptitle(f"{info.name}: splits")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
