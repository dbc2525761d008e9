"""The dataset contract of docs/data-contract.md: dataset.yaml, manifest, reports and boxes tables.

Readers come in two strengths. `read_*_table` returns the raw table (the validate stage checks it
and reports every defect); `Dataset.open` / `read_manifest` coerce it to the contract's dtypes and
raise a one-line `DataContractError` on anything they cannot coerce, for the stages that come after
validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medssl.errors import DataContractError
from medssl.fileio import atomic_write_text

Task = Literal["multilabel", "binary", "detection", "image-text"]
SPLITS: tuple[str, ...] = ("unlabeled", "train", "val", "test")
LABELED_SPLITS: tuple[str, ...] = ("train", "val", "test")

INFO_FILE = "dataset.yaml"
MANIFEST_FILE = "manifest.parquet"
REPORTS_FILE = "reports.parquet"
BOXES_FILE = "boxes.parquet"
IMAGES_DIR = "images"

# Required manifest columns and their dtypes; label columns (`label_<class>`) or `target` are added
# per task. Extra columns (e.g. `kidney_abnormal`, `series_number`) are allowed and kept.
MANIFEST_ID_COLUMNS: dict[str, str] = {
    "image": "string",
    "patient_id": "string",
    "exam_id": "string",
    "lesion_id": "string",
    "split": "string",
}
LABEL_DTYPE = "Int8"  # nullable 0/1: <NA> on unlabeled rows
LABEL_PREFIX = "label_"  # multilabel label columns: label_<class>
# A model folder's predictions (the train stage writes them, the evaluate stage reads them): one
# row per labeled val/test image with the manifest's ids and split, label_<class> and
# score_<class> (probability)
PREDICTIONS_FILE = "predictions.parquet"
SCORE_PREFIX = "score_"
REPORT_COLUMNS: dict[str, str] = {
    "exam_id": "string",
    "title": "string",
    "text": "string",
    "language": "string",
}
BOX_COLUMNS: dict[str, str] = {
    "image": "string",
    "reader_id": "string",
    "label": "string",
    "x1": "float64",
    "y1": "float64",
    "x2": "float64",
    "y2": "float64",
}


class DatasetInfo(BaseModel):
    """`dataset.yaml`: what the dataset is. Unknown keys are refused so typos surface."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    task: Task
    classes: list[str] = Field(default_factory=list)
    modality: str = Field(min_length=1, description="US, MR, CR/DX, CT …")
    image_size: int = Field(gt=0, description="nominal side length in pixels")
    channels: Literal[1, 3] = 1
    bit_depth: Literal[8, 16] = 8
    version: str = "1"
    description: str = ""
    attributes: list[str] = Field(
        default_factory=list, description="extra per-image manifest columns with a meaning"
    )
    image_root: str = Field(
        ".",
        description="folder the manifest's image paths are relative to, relative to this file; "
        "lets a derived dataset (e.g. the split stage's output) reuse images without copying",
    )

    @model_validator(mode="after")
    def _one_positive_class(self) -> DatasetInfo:
        if self.task == "binary" and len(self.classes) != 1:
            raise ValueError(
                "a binary task names exactly one class, the positive one (its labels are the "
                f"`target` column); got {len(self.classes)}"
            )
        return self

    def label_columns(self) -> list[str]:
        """Manifest columns that hold the labels of this task."""
        if self.task == "binary":
            return ["target"]
        if self.task == "multilabel":
            return [label_column(c) for c in self.classes]
        return []

    def class_columns(self, classes: list[str] | None = None) -> list[str]:
        """The manifest label column of each class (default: all of them): `label_<c>`, or
        `target` for the one (positive) class of a binary dataset."""
        classes = list(self.classes) if classes is None else classes
        if self.task == "binary":
            return ["target" for _ in classes]
        return [label_column(c) for c in classes]


def label_column(class_name: str) -> str:
    return f"{LABEL_PREFIX}{class_name}"


def lesion_keys(table: pd.DataFrame) -> pd.Series:
    """A lesion's key: patient_id/lesion_id (a lesion id is only unique within its patient); NA
    where the lesion id is."""
    lesion = table["lesion_id"].astype("string")
    return (table["patient_id"].astype("string") + "/" + lesion).where(lesion.notna())


TEXT_COLUMN = "text"  # an image-text dataset's description of each image (paper 002 §3.4)


def manifest_dtypes(info: DatasetInfo) -> dict[str, str]:
    """The contract's dtype for every required manifest column of this dataset."""
    text = {TEXT_COLUMN: "string"} if info.task == "image-text" else {}
    return {**MANIFEST_ID_COLUMNS, **{c: LABEL_DTYPE for c in info.label_columns()}, **text}


def image_dir(root: Path, info: DatasetInfo) -> Path:
    """The folder a dataset's manifest image paths are relative to."""
    return (Path(root) / info.image_root).resolve() if info.image_root != "." else Path(root)


def read_info(root: Path) -> DatasetInfo:
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise DataContractError(f"{root}: not a dataset folder (no {INFO_FILE})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return DatasetInfo.model_validate(raw)
    except yaml.YAMLError as exc:
        raise DataContractError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise DataContractError(f"{path}: {where}: {err['msg']}") from None


def write_info(root: Path, info: DatasetInfo) -> None:
    text = yaml.safe_dump(info.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    atomic_write_text(Path(root) / INFO_FILE, text)


def read_table(path: Path) -> pd.DataFrame:
    """A parquet table as written, without coercion (what the validate stage inspects)."""
    if not Path(path).is_file():
        raise DataContractError(f"{path}: file not found")
    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataContractError(f"{path}: not a readable parquet file ({exc})") from None


def coerce(table: pd.DataFrame, dtypes: dict[str, str], what: str) -> pd.DataFrame:
    """Cast the contract's columns to their dtypes; one-line error naming the first bad column."""
    missing = [c for c in dtypes if c not in table.columns]
    if missing:
        raise DataContractError(f"{what}: missing column(s) {', '.join(missing)}")
    out = table.copy()
    for col, dtype in dtypes.items():
        try:
            out[col] = out[col].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise DataContractError(f"{what}: column {col!r} is not {dtype} ({exc})") from None
    return out


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write a table as parquet, byte-identical for identical input (no index, fixed options)."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    pq.write_table(arrow, path, compression="zstd", write_statistics=True)


@dataclass
class Dataset:
    """An opened dataset folder: its info and its coerced tables (reports/boxes may be absent)."""

    root: Path
    info: DatasetInfo
    manifest: pd.DataFrame
    reports: pd.DataFrame | None = None
    boxes: pd.DataFrame | None = field(default=None, repr=False)

    @classmethod
    def open(cls, root: Path | str) -> Dataset:
        root = Path(root)
        info = read_info(root)
        manifest = coerce(
            read_table(root / MANIFEST_FILE), manifest_dtypes(info), str(root / MANIFEST_FILE)
        )
        reports = boxes = None
        if (root / REPORTS_FILE).is_file():
            reports = coerce(read_table(root / REPORTS_FILE), REPORT_COLUMNS, REPORTS_FILE)
        if (root / BOXES_FILE).is_file():
            boxes = coerce(read_table(root / BOXES_FILE), BOX_COLUMNS, BOXES_FILE)
        return cls(root=root, info=info, manifest=manifest, reports=reports, boxes=boxes)

    @property
    def image_dir(self) -> Path:
        return image_dir(self.root, self.info)

    def image_path(self, relative: str) -> Path:
        return self.image_dir / relative

    def save(self) -> None:
        """Write info and tables to `root` (images are written by whoever made them)."""
        write_dataset(self.root, self.info, self.manifest, self.reports, self.boxes)


def write_dataset(
    root: Path,
    info: DatasetInfo,
    manifest: pd.DataFrame,
    reports: pd.DataFrame | None = None,
    boxes: pd.DataFrame | None = None,
) -> None:
    """Write dataset.yaml and the tables in the contract's dtypes and column order."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_info(root, info)
    dtypes = manifest_dtypes(info)
    manifest = coerce(manifest, dtypes, MANIFEST_FILE)
    ordered = list(dtypes) + [c for c in manifest.columns if c not in dtypes]
    write_table(manifest[ordered], root / MANIFEST_FILE)
    if reports is not None:
        write_table(coerce(reports, REPORT_COLUMNS, REPORTS_FILE), root / REPORTS_FILE)
    if boxes is not None:
        write_table(coerce(boxes, BOX_COLUMNS, BOXES_FILE), root / BOXES_FILE)
