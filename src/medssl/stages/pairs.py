"""Paper 002 §3: image-text pairs of one organ from an archive whose reports describe whole exams.

`make_pairs` (`medssl data pairs DATASET --clusters PRETRAIN_DIR --out PAIRS`):

1. images (§3.2): a row shows the organ when its deep cluster's Algorithm-1 soft label for the
   organ exceeds `pairs.threshold` (the pretrain stage's assignments.parquet and clusters.json),
   or, where the row has an expert label, when the label says so;
2. text (§3.3): every report is split into sentences and organ concepts are tagged
   (medssl.text.concepts); the mention table is kept as mentions.parquet;
3. pairs (§3.4): every organ image of an exam whose report mentions the organ gets all of the
   exam's organ sentences; images of exams that never mention it are dropped.

The output is an `image-text` dataset (manifest `text` column, images shared with the input
through `image_root`), its WordPiece tokenizer retrained on the reports of the pre-training
exams (§4.1, tokenizer/), the Fig. 2 flow counts (flow.json, flow.png) and the mention table.

`organ_task` (`medssl data organ-task DATASET --out TASK`): the labeled images of the organ as a
binary dataset whose target is an attribute (`kidney_abnormal`: paper 002 §3.1's normal/abnormal
kidney labels), for fine-tuning (§4.3). Both write all of their folder or none of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medssl.config import PairsConfig
from medssl.data.contract import (
    LABELED_SPLITS,
    TEXT_COLUMN,
    Dataset,
    DatasetInfo,
    label_column,
    write_dataset,
    write_table,
)
from medssl.errors import DataContractError
from medssl.fileio import staged_dir
from medssl.methods.clustering import ASSIGNMENTS_FILE, CLUSTERS_FILE
from medssl.plots import plot_flowchart
from medssl.text.tokens import TOKENIZER_DIR

MENTIONS_FILE = "mentions.parquet"
FLOW_FILE = "flow.json"
FLOW_PLOT = "flow.png"
SCORE_COLUMN = "organ_score"  # the organ's soft label of the row's cluster (1/0 from a label)


@dataclass
class PairsResult:
    out_dir: Path
    organ: str
    clusters: list[int]
    flow: dict[str, dict[str, int]] = field(default_factory=dict)

    def describe(self) -> str:
        f = self.flow
        return (
            f"{self.organ} pairs: {f['pairs']['images']:,} images of {f['pairs']['exams']:,} "
            f"exams (clusters {', '.join(map(str, self.clusters))}); "
            f"{f['organ_images']['images']:,} {self.organ} images, "
            f"{f['reports_mention']['exams']:,} of {f['rows']['exams']:,} reports mention it, "
            f"{f['unpaired']['images']:,} images without a description\nwrote {self.out_dir}/"
        )


def _derived_info(source: Dataset, out_dir: Path, **fields: Any) -> DatasetInfo:
    """dataset.yaml of a dataset derived from `source` at out_dir: the source's imaging fields,
    its images reused through image_root (a relative path: the staging folder is a sibling)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    root = os.path.relpath(source.image_dir.resolve(), out_dir.parent.resolve() / out_dir.name)
    keep = ("modality", "image_size", "channels", "bit_depth", "version")
    return DatasetInfo(**{k: getattr(source.info, k) for k in keep}, image_root=root, **fields)


def _counts(table: pd.DataFrame) -> dict[str, int]:
    return {"images": len(table), "exams": int(table["exam_id"].nunique())}


def organ_threshold(clusters_json: dict[str, Any], organ: str, threshold: float | str) -> float:
    """The soft-label share above which a cluster is the organ's: `threshold`, or for "auto" the
    organ's share of the dev images Algorithm 1 labelled the clusters with (its base rate; a
    cluster at the base rate counts, so a collapsed clustering pairs every image)."""
    if threshold != "auto":
        return float(threshold)
    labelled = [c for c in clusters_json["clusters"] if c.get("soft_label")]
    dev = sum(int(c.get("dev_images", 0)) for c in labelled)
    if not dev:
        raise DataContractError(f"{CLUSTERS_FILE}: no dev images, pairs.threshold=auto needs them")
    base = sum(c["soft_label"][organ] * int(c.get("dev_images", 0)) for c in labelled) / dev
    return base - 1e-9


def organ_clusters(clusters_json: dict[str, Any], organ: str, threshold: float) -> list[int]:
    """Paper 002 §3.2: the clusters whose Algorithm-1 soft label gives `organ` more than
    `threshold` (clusters without dev images — their soft label is only the prior — are never the
    organ's)."""
    return [
        int(c["cluster"])
        for c in clusters_json["clusters"]
        if c.get("soft_label")
        and int(c.get("dev_images", 1)) > 0
        and c["soft_label"][organ] > threshold
    ]


def read_clusters(pretrain_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The pretrain stage's assignments and clusters.json (one-line errors when missing)."""
    pretrain_dir = Path(pretrain_dir)
    paths = [pretrain_dir / ASSIGNMENTS_FILE, pretrain_dir / CLUSTERS_FILE]
    for path in paths:
        if not path.is_file():
            raise DataContractError(
                f"{path}: not found (--clusters is a `medssl pretrain` folder of a clustering "
                "method: lsd, pica, deepcluster)"
            )
    assignments = pd.read_parquet(paths[0])
    return assignments, json.loads(paths[1].read_text())


def make_pairs(
    dataset_dir: Path, pretrain_dir: Path, out_dir: Path, cfg: PairsConfig, progress: bool = True
) -> PairsResult:
    """Build the organ's image-text dataset (see the module doc)."""
    from medssl.text.concepts import organ_text, tag_reports
    from medssl.text.tokens import train_tokenizer

    ds = Dataset.open(dataset_dir)
    out_dir = Path(out_dir)
    m = ds.manifest
    if ds.reports is None or ds.reports.empty:
        raise DataContractError(f"{dataset_dir}: no reports.parquet to take descriptions from")
    label = label_column(cfg.organ)
    if label not in m.columns:
        raise DataContractError(f"{dataset_dir}: no {label} column (pairs.organ={cfg.organ!r})")
    assignments, clusters_json = read_clusters(pretrain_dir)
    if cfg.organ not in clusters_json.get("classes", []):
        raise DataContractError(
            f"{pretrain_dir}/{CLUSTERS_FILE}: no class {cfg.organ!r} "
            f"(classes: {clusters_json.get('classes')})"
        )
    threshold = organ_threshold(clusters_json, cfg.organ, cfg.threshold)
    chosen = organ_clusters(clusters_json, cfg.organ, threshold)
    if not chosen:
        best = max(
            (c["soft_label"][cfg.organ] for c in clusters_json["clusters"] if c.get("soft_label")),
            default=float("nan"),
        )
        raise DataContractError(
            f"{pretrain_dir}: no cluster's soft label gives {cfg.organ} more than "
            f"pairs.threshold={cfg.threshold} ({threshold:.2f}; highest {best:.2f}): pre-train "
            "longer or lower the threshold"
        )
    soft = {int(c["cluster"]): c["soft_label"] for c in clusters_json["clusters"]}
    cluster = m["image"].map(dict(zip(assignments["image"], assignments["cluster"], strict=True)))
    if cluster.isna().any():
        raise DataContractError(
            f"{pretrain_dir}: {int(cluster.isna().sum())} images of {dataset_dir} have no cluster "
            "(was it pre-trained on this dataset?)"
        )
    wanted = ["unlabeled"] if cfg.rows == "unlabeled" else ["unlabeled", "train"]
    rows = m[m["split"].isin(wanted).to_numpy(dtype=bool)].copy()
    rows["cluster"] = cluster.loc[rows.index].astype("int32")
    score = rows["cluster"].map(lambda k: float((soft.get(k) or {}).get(cfg.organ, 0.0)))
    # an expert label, where a row has one, decides instead of the cluster
    labeled = rows[label].notna()
    score = score.where(~labeled, rows[label].astype("Float64").fillna(0))
    rows[SCORE_COLUMN] = score.astype("float32")
    is_organ = np.where(labeled, rows[label].fillna(0).astype(bool), rows["cluster"].isin(chosen))
    organ_rows = rows[is_organ]

    exams = pd.Index(rows["exam_id"].unique())
    reports = ds.reports[ds.reports["exam_id"].isin(exams)].reset_index(drop=True)
    mentions = tag_reports(reports)
    texts = organ_text(mentions, cfg.organ)
    paired = organ_rows[organ_rows["exam_id"].isin(texts.index)].copy()
    paired[TEXT_COLUMN] = paired["exam_id"].map(texts).astype("string")
    if paired.empty:
        raise DataContractError(
            f"{dataset_dir}: no {cfg.organ} image belongs to an exam whose report mentions it"
        )
    flow = {
        "rows": _counts(rows),
        "organ_images": _counts(organ_rows),
        "reports_mention": {"exams": int(texts.index.isin(exams).sum())},
        "pairs": _counts(paired),
        "unpaired": _counts(organ_rows[~organ_rows["exam_id"].isin(texts.index)]),
    }
    # drop the source's labels: the pairs are for pre-training (labels are never read)
    keep = [c for c in paired.columns if not c.startswith("label_") and c != "split"]
    manifest = paired[keep].assign(split="unlabeled").reset_index(drop=True)
    info = _derived_info(
        ds,
        out_dir,
        name=f"{ds.info.name}-{cfg.organ}-pairs",
        task="image-text",
        classes=[],
        description=(
            f"Paper 002 §3: {cfg.organ} images of {ds.info.name} (deep clusters "
            f"{chosen} of {Path(pretrain_dir).name}, threshold {threshold:.3g}) paired with "
            f"their exam's {cfg.organ} sentences."
        ),
        attributes=[TEXT_COLUMN, "cluster", SCORE_COLUMN],
    )
    result = PairsResult(out_dir=out_dir, organ=cfg.organ, clusters=chosen, flow=flow)
    with staged_dir(out_dir) as tmp:
        paired_reports = reports[reports["exam_id"].isin(manifest["exam_id"])]
        write_dataset(tmp, info, manifest, paired_reports.reset_index(drop=True))
        write_table(mentions, tmp / MENTIONS_FILE)
        train_tokenizer(
            reports["text"].dropna().tolist(),
            tmp / TOKENIZER_DIR,
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
        )
        summary = {"organ": cfg.organ, "clusters": chosen, "threshold": threshold, **flow}
        (tmp / FLOW_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        plot_flow(flow, cfg.organ, tmp / FLOW_PLOT)
    return result


def plot_flow(flow: dict[str, dict[str, int]], organ: str, path: Path) -> None:
    """The counts of each step drawn like paper 002 Fig. 2 (kept sets, what each step drops)."""
    f = flow
    rows = [
        (
            f"Pre-training set\n{f['rows']['exams']:,} exams, {f['rows']['images']:,} images",
            f"other clusters\n{f['rows']['images'] - f['organ_images']['images']:,} images",
        ),
        (
            f"{organ} images (deep clusters)\n{f['organ_images']['images']:,} images, "
            f"{f['organ_images']['exams']:,} exams",
            f"no {organ} sentence\n{f['unpaired']['images']:,} images, "
            f"{f['unpaired']['exams']:,} exams",
        ),
        (
            f"image-text pairs (reports mentioning {organ}: "
            f"{f['reports_mention']['exams']:,} exams)\n{f['pairs']['images']:,} images, "
            f"{f['pairs']['exams']:,} exams",
            None,
        ),
    ]
    plot_flowchart(rows, f"medssl data pairs — {organ} (cf. paper 002 Fig. 2)", path)


@dataclass
class OrganTaskResult:
    out_dir: Path
    counts: dict[str, dict[str, int]]

    def one_class(self) -> list[str]:
        """The val/test splits whose images are all one class (their metrics are degenerate)."""
        return [
            s for s, c in self.counts.items()
            if s != "train" and c["positive"] in (0, c["images"])
        ]  # fmt: skip

    def describe(self) -> str:
        parts = [
            f"{s}: {c['images']:,} images ({c['positive']:,} positive), {c['exams']:,} exams"
            for s, c in self.counts.items()
        ]
        warn = [
            f"warning: {s} holds one class only: its sensitivity/specificity are undefined "
            "(label more exams: split.fractions)"
            for s in self.one_class()
        ]
        return "\n".join(["; ".join(parts), *warn, f"wrote {self.out_dir}/"])


def organ_task(dataset_dir: Path, out_dir: Path, cfg: PairsConfig) -> OrganTaskResult:
    """Paper 002 §3.1/§4.3: the labeled rows that show `cfg.organ`, as a binary dataset whose
    target is the attribute `cfg.target` (class `cfg.positive`); splits kept."""
    ds = Dataset.open(dataset_dir)
    m = ds.manifest
    out_dir = Path(out_dir)
    label = label_column(cfg.organ)
    for column in (label, cfg.target):
        if column not in m.columns:
            raise DataContractError(f"{dataset_dir}: no {column} column")
    keep = m["split"].isin(LABELED_SPLITS) & (m[label] == 1).fillna(False) & m[cfg.target].notna()
    rows = m[keep.to_numpy(dtype=bool)].copy()
    values = rows[cfg.target]
    binary = values.isin([0, 1])  # also True/False; anything else is not a binary target
    if not binary.all():
        raise DataContractError(
            f"{dataset_dir}: {cfg.target} is not 0/1 (e.g. {values[~binary].iloc[0]!r}); "
            "organ-task needs a binary attribute"
        )
    rows["target"] = values.astype("Int8")
    rows = rows[[c for c in rows.columns if not c.startswith("label_")]].reset_index(drop=True)
    counts = {
        s: {**_counts(g), "positive": int(g["target"].sum())}
        for s, g in rows.groupby("split", sort=False, observed=True)
    }
    counts = {s: counts[s] for s in LABELED_SPLITS if s in counts}
    train = counts.get("train", {"images": 0, "positive": 0})
    if train["positive"] in (0, train["images"]):
        raise DataContractError(
            f"{dataset_dir}: the labeled train {cfg.organ} images ({train['images']}) are all one "
            f"class of {cfg.target}; label more exams (split.fractions) for a binary task"
        )
    info = _derived_info(
        ds,
        out_dir,
        name=f"{ds.info.name}-{cfg.organ}-{cfg.positive}",
        task="binary",
        classes=[cfg.positive],
        description=(
            f"Paper 002 §4.3: the labeled {cfg.organ} images of {ds.info.name}, "
            f"target {cfg.target} ({cfg.positive} vs not)."
        ),
        attributes=[a for a in ds.info.attributes if a in rows.columns],
    )
    reports = None
    if ds.reports is not None:
        reports = ds.reports[ds.reports["exam_id"].isin(rows["exam_id"])].reset_index(drop=True)
    with staged_dir(out_dir) as tmp:
        write_dataset(tmp, info, rows, reports)
        (tmp / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    return OrganTaskResult(out_dir=out_dir, counts=counts)
