"""great-expectations suites over the dataset tables.

The data contract's invariants are checked with built-in expectations only (no custom expectation
classes: GX drops a custom class that is not imported before its suite loads, and the checkpoint
then passes on bad data). Cross-row and cross-table invariants are turned into column checks on
derived pandas *views*:

* ``manifest``        the manifest as read: required columns, ids non-null and non-empty, split
                      values, unique and relative image paths;
* ``schema``          one row per contract column: its dtype is the contract's type;
* ``labeled``         rows of the train/val/test splits: each label is 0 or 1, and (multilabel)
                      ``n_labels`` — labels set per image — is at least 1;
* ``unlabeled``       rows of the unlabeled split: every label column is null;
* ``exam_patients``   distinct (exam_id, patient_id) pairs: exam_id unique → one patient per exam;
* ``patient_splits``  distinct (patient_id, split) pairs: patient_id unique → patient-disjoint;
* ``reports``         reports.parquet with ``exam_in_manifest``;
* ``boxes``           boxes.parquet with ``image_in_manifest``;
* ``tables``          (detection datasets) one row per table the task needs: whether it is there;
* ``image_files``     one row per image file checked by `medssl.validation.images`.

Each expectation carries its human name (``meta.name``, also its ``notes`` in the data docs) and a
stable id (``meta.medssl_id``); the results are matched back by id, and an expectation without a
result counts as a failure, so nothing is silently dropped. An expectation whose column is missing
from its view is not run: the missing column is reported by the "has column" check instead.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medssl.data.contract import (
    BOX_COLUMNS,
    BOXES_FILE,
    LABELED_SPLITS,
    MANIFEST_ID_COLUMNS,
    REPORT_COLUMNS,
    SPLITS,
    TEXT_COLUMN,
    DatasetInfo,
    manifest_dtypes,
)

log = logging.getLogger(__name__)

ID_COLUMNS: tuple[str, ...] = ("image", "patient_id", "exam_id")
# An image path must be relative and must not climb out of the dataset folder.
NOT_RELATIVE = r"^(?:/|\\|[A-Za-z]:)|(?:^|[/\\])\.\.(?:[/\\]|$)"
DOCS_DIR = "data_docs"


# --------------------------------------------------------------------------------------- views


@dataclass
class View:
    """A table the expectations run on; `ids` are the columns shown for an offending row."""

    name: str
    frame: pd.DataFrame
    ids: list[str]
    about: str

    def __post_init__(self) -> None:
        # row positions are what GX reports cheaply (see `_offending_rows`)
        index = self.frame.index
        if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1):
            self.frame = self.frame.reset_index(drop=True)


def isin(values: pd.Series, pool: pd.Series) -> np.ndarray:
    """`values.isin(pool)` through a hash index: pandas 3's ArrowStringArray.isin loops in
    Python (≈ 5 s for 250k values against a 1M-row column); this takes ≈ 0.05 s."""
    try:
        return pd.Index(pool.dropna().unique()).get_indexer(values) >= 0
    except (TypeError, ValueError):  # pragma: no cover - exotic dtypes
        return values.isin(pool.dropna()).to_numpy(dtype=bool)


def _string_like(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.StringDtype):
        return True
    if s.dtype == object:
        return pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty")
    return False


def _numeric_like(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        return True
    if s.dtype == object:
        return pd.api.types.infer_dtype(s, skipna=True) in (
            "integer",
            "floating",
            "mixed-integer-float",
            "boolean",
            "empty",
        )
    return False


KIND = {"string": ("text", _string_like), "Int8": ("0/1 integer", _numeric_like)}
KIND["float64"] = ("number", _numeric_like)


def schema_view(tables: dict[str, tuple[pd.DataFrame, dict[str, str]]]) -> View:
    """One row per (table, contract column present in it): dtype and whether it fits."""
    rows = []
    for table, (frame, dtypes) in tables.items():
        for col, dtype in dtypes.items():
            if col not in frame.columns:
                continue
            expected, fits = KIND[dtype]
            rows.append(
                {
                    "table": table,
                    "column": col,
                    "dtype": str(frame[col].dtype),
                    "expected": expected,
                    "type_ok": bool(fits(frame[col])),
                }
            )
    frame = pd.DataFrame(rows, columns=["table", "column", "dtype", "expected", "type_ok"])
    return View("schema", frame, ["table", "column", "dtype", "expected"], "contract column types")


def build_views(
    info: DatasetInfo,
    manifest: pd.DataFrame,
    reports: pd.DataFrame | None = None,
    boxes: pd.DataFrame | None = None,
    image_files: pd.DataFrame | None = None,
) -> tuple[dict[str, View], dict[str, str]]:
    """The views of a dataset's tables, and why any view could not be built."""
    views: dict[str, View] = {}
    missing: dict[str, str] = {}
    cols = set(manifest.columns)
    views["manifest"] = View("manifest", manifest, ["image"], "manifest.parquet, one row per image")

    schema_tables = {"manifest": (manifest, manifest_dtypes(info))}
    if reports is not None:
        schema_tables["reports"] = (reports, REPORT_COLUMNS)
    if boxes is not None:
        schema_tables["boxes"] = (boxes, BOX_COLUMNS)
    views["schema"] = schema_view(schema_tables)

    labels = [c for c in info.label_columns() if c in cols]
    if "split" in cols:
        split = manifest["split"]
        keep = ["image"] if "image" in cols else []
        labeled = manifest.loc[split.isin(LABELED_SPLITS).to_numpy(dtype=bool), keep + labels]
        labeled = labeled.reset_index(drop=True)
        if info.task == "multilabel":
            labeled["n_labels"] = labeled[labels].eq(1).sum(axis=1).astype("int64")
        views["labeled"] = View("labeled", labeled, keep, "manifest rows of train/val/test")
        unlabeled = manifest.loc[split.isin(["unlabeled"]).to_numpy(dtype=bool), keep + labels]
        views["unlabeled"] = View(
            "unlabeled", unlabeled.reset_index(drop=True), keep, "manifest rows of unlabeled"
        )
    else:
        missing["labeled"] = missing["unlabeled"] = "manifest has no column 'split'"

    # one key column must map to one value: exam → patient, patient → split
    for name, key, value in (
        ("exam_patients", "exam_id", "patient_id"),
        ("patient_splits", "patient_id", "split"),
    ):
        if {key, value} <= cols:
            pairs = manifest[[key, value]].dropna().drop_duplicates()
            pairs = pairs.sort_values([key, value], kind="stable").reset_index(drop=True)
            views[name] = View(name, pairs, [value], f"distinct non-null ({key}, {value}) pairs")
        else:
            missing[name] = f"manifest lacks {key} or {value}"

    if reports is not None:
        frame = reports
        if "exam_id" in reports.columns and "exam_id" in cols:
            frame = reports.copy(deep=False)
            frame["exam_in_manifest"] = isin(reports["exam_id"], manifest["exam_id"])
        views["reports"] = View("reports", frame, ["exam_id"], "reports.parquet, one row per exam")
    if boxes is not None:
        frame = boxes
        if "image" in boxes.columns and "image" in cols:
            frame = boxes.copy(deep=False)
            frame["image_in_manifest"] = isin(boxes["image"], manifest["image"])
        views["boxes"] = View("boxes", frame, ["image", "reader_id"], "boxes.parquet, one per box")
    if info.task == "detection":  # a detection dataset's labels are its boxes
        tables = pd.DataFrame({"table": [BOXES_FILE], "present": [boxes is not None]})
        views["tables"] = View("tables", tables, ["table"], "the tables the task needs")
    if image_files is not None:
        views["image_files"] = View(
            "image_files", image_files, ["image", "reason"], "one row per image file checked"
        )
    return views, missing


# -------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """One expectation with its human name, the view it runs on and the columns it reads."""

    id: str
    name: str
    view: str
    make: Callable[..., Any]  # a great_expectations.expectations class
    kwargs: dict[str, Any]
    columns: tuple[str, ...] = ()
    groups: bool = False  # examples grouped by the duplicated value (uniqueness checks)

    def expectation(self) -> Any:
        meta = {"medssl_id": self.id, "name": self.name}
        return self.make(**self.kwargs, meta=meta, notes=self.name, description=self.name)


def build_checks(
    info: DatasetInfo, *, reports: bool = False, boxes: bool = False, image_files: bool = False
) -> list[Check]:
    """Every expectation of the data contract for a dataset with this info and these tables."""
    import great_expectations.expectations as gxe

    out: list[Check] = []

    def add(
        view: str, name: str, make: Any, columns: Iterable[str] | None = None, **kw: Any
    ) -> None:
        """`columns`: what the check reads (default: its `column`); it is skipped without them."""
        groups = kw.pop("groups", False)
        if columns is None:
            columns = [kw["column"]] if "column" in kw else []
        out.append(
            Check(f"{view}.{len(out):03d}", name, view, make, kw, tuple(columns), groups=groups)
        )

    def exists(view: str, table: str, cols: Iterable[str]) -> None:
        for c in cols:  # reads no column: it must run (and fail) when the column is missing
            add(view, f"{table} has column {c!r}", gxe.ExpectColumnToExist, (), column=c)

    manifest_cols = list(MANIFEST_ID_COLUMNS) + info.label_columns()
    exists("manifest", "manifest", manifest_cols)
    add("manifest", "manifest is not empty", gxe.ExpectTableRowCountToBeBetween, min_value=1)
    for c in ID_COLUMNS:
        add("manifest", f"{c} is never null", gxe.ExpectColumnValuesToNotBeNull, column=c)
        add(
            "manifest",
            f"{c} is never empty",
            gxe.ExpectColumnValuesToMatchRegex,
            column=c,
            regex=r"\S",
        )
    add("manifest", "split is never null", gxe.ExpectColumnValuesToNotBeNull, column="split")
    add(
        "manifest",
        f"split is one of {', '.join(SPLITS)}",
        gxe.ExpectColumnValuesToBeInSet,
        column="split",
        value_set=list(SPLITS),
    )
    add(
        "manifest",
        "image paths are unique",
        gxe.ExpectColumnValuesToBeUnique,
        column="image",
        groups=True,
    )
    add(
        "manifest",
        "image paths are relative and inside the dataset",
        gxe.ExpectColumnValuesToNotMatchRegex,
        column="image",
        regex=NOT_RELATIVE,
    )
    add(
        "schema",
        "columns have the contract's types",
        gxe.ExpectColumnValuesToBeInSet,
        column="type_ok",
        value_set=[True],
    )

    if info.task == "image-text":  # paper 002 §3.4: every image has its description
        add("manifest", "text is set", gxe.ExpectColumnValuesToNotBeNull, column=TEXT_COLUMN)
        add(
            "manifest",
            "text is not empty",
            gxe.ExpectColumnValueLengthsToBeBetween,
            column=TEXT_COLUMN,
            min_value=1,
        )
    labels = info.label_columns()
    for c in labels:
        add("labeled", f"{c} is set on labeled rows", gxe.ExpectColumnValuesToNotBeNull, column=c)
        add(
            "labeled",
            f"{c} is 0 or 1 on labeled rows",
            gxe.ExpectColumnValuesToBeInSet,
            column=c,
            value_set=[0, 1],
        )
    if info.task == "multilabel" and labels:
        add(
            "labeled",
            "every labeled image has at least one label",
            gxe.ExpectColumnValuesToBeBetween,
            column="n_labels",
            min_value=1,
            max_value=len(labels),
        )
    for c in labels:
        add(
            "unlabeled", f"{c} is empty on unlabeled rows", gxe.ExpectColumnValuesToBeNull, column=c
        )

    add(
        "exam_patients",
        "each exam belongs to one patient",
        gxe.ExpectColumnValuesToBeUnique,
        column="exam_id",
        groups=True,
    )
    add(
        "patient_splits",
        "splits are patient-disjoint",
        gxe.ExpectColumnValuesToBeUnique,
        column="patient_id",
        groups=True,
    )

    if reports:
        exists("reports", "reports", REPORT_COLUMNS)
        add(
            "reports",
            "report exam_id is never null",
            gxe.ExpectColumnValuesToNotBeNull,
            column="exam_id",
        )
        add(
            "reports",
            "every report's exam is in the manifest",
            gxe.ExpectColumnValuesToBeInSet,
            column="exam_in_manifest",
            value_set=[True],
        )
        add(
            "reports",
            "one report per exam",
            gxe.ExpectColumnValuesToBeUnique,
            column="exam_id",
            groups=True,
        )
        add(
            "reports", "report text is never null", gxe.ExpectColumnValuesToNotBeNull, column="text"
        )
        add(
            "reports",
            "report language is never null",
            gxe.ExpectColumnValuesToNotBeNull,
            column="language",
        )

    if info.task == "detection":
        add(
            "tables",
            f"a detection dataset has {BOXES_FILE}",
            gxe.ExpectColumnValuesToBeInSet,
            column="present",
            value_set=[True],
        )
    if boxes:
        exists("boxes", "boxes", BOX_COLUMNS)
        for c in BOX_COLUMNS:
            add("boxes", f"box {c} is never null", gxe.ExpectColumnValuesToNotBeNull, column=c)
        add(
            "boxes",
            "every box's image is in the manifest",
            gxe.ExpectColumnValuesToBeInSet,
            column="image_in_manifest",
            value_set=[True],
        )
        add(
            "boxes",
            "box labels are classes of dataset.yaml",
            gxe.ExpectColumnValuesToBeInSet,
            column="label",
            value_set=list(info.classes),
        )
        n = info.image_size
        for c in ("x1", "y1", "x2", "y2"):
            add(
                "boxes",
                f"box {c} lies in the image: 0 <= {c} <= {n} (images square at image_size)",
                gxe.ExpectColumnValuesToBeBetween,
                column=c,
                min_value=0,
                max_value=n,
            )
        for lo, hi in (("x1", "x2"), ("y1", "y2")):
            add(
                "boxes",
                f"boxes have {hi} > {lo}",
                gxe.ExpectColumnPairValuesAToBeGreaterThanB,
                [lo, hi],
                column_A=hi,
                column_B=lo,
                ignore_row_if="neither",
            )

    if image_files:
        for col, name in (
            ("exists", "image files exist"),
            ("decodes", "image files decode"),
            ("size_ok", "image sizes are plausible"),
        ):
            add("image_files", name, gxe.ExpectColumnValuesToBeInSet, column=col, value_set=[True])
    return out


# ------------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """The result of one check: `success` is None when it was skipped (see `skipped`)."""

    id: str
    name: str
    view: str
    expectation: str
    success: bool | None
    element_count: int | None = None
    unexpected_count: int | None = None
    examples: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.success is False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SuiteRun:
    outcomes: list[Outcome]
    checkpoint_success: dict[str, bool]  # view -> GX checkpoint success
    docs_index: Path | None
    seconds: dict[str, float]

    @property
    def success(self) -> bool:
        return all(o.success is not False for o in self.outcomes) and all(
            self.checkpoint_success.values()
        )


def _type_name(make: Any) -> str:
    name = make.__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    try:
        if pd.isna(value):
            return "null"
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        value = value.item()
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _offending_rows(view: View, check: Check, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The id and checked columns of the first unexpected rows GX reported.

    GX reports row *positions* here because every view has a default RangeIndex. (Asking GX for
    the id values itself — a named index or `unexpected_index_column_names` — makes it look up
    every unexpected row one by one: ~20 µs a row, minutes for a broken 1M-row manifest.)
    """
    entries = result.get("partial_unexpected_index_list") or []
    wanted = list(dict.fromkeys([*view.ids, *check.columns]))
    wanted = [c for c in wanted if c in view.frame.columns]
    positions = [e for e in entries if isinstance(e, int | np.integer)]
    rows = [e for e in entries if isinstance(e, dict)]
    if positions:
        frame = view.frame.iloc[[int(p) for p in positions if 0 <= p < len(view.frame)]]
        rows += frame[wanted].to_dict("records")
    return rows


def _examples(check: Check, view: View, result: dict[str, Any], limit: int) -> list[str]:
    """A few offending rows of a failed expectation, as `id=value: column=value` strings."""
    if "observed_value" in result and "partial_unexpected_list" not in result:
        return [f"observed {_plain(result['observed_value'])}"]
    rows = _offending_rows(view, check, result)
    out: list[str] = []
    if check.groups:  # uniqueness: one example per duplicated value, with what tells them apart
        col = check.columns[0]
        others = [i for i in view.ids if i != col]
        grouped: dict[str, list[str]] = {}
        for row in rows:
            vals = grouped.setdefault(_plain(row.get(col)), [])
            for o in others:
                if (v := _plain(row.get(o))) not in vals:
                    vals.append(v)
        if not grouped:
            for item in result.get("partial_unexpected_counts") or []:
                grouped.setdefault(_plain(item.get("value")), [])
        for key, vals in list(grouped.items())[:limit]:
            label = f"{col}={key}"
            out.append(f"{label}: {'/'.join(others)}={', '.join(vals)}" if vals else label)
        return out
    checked = [c for c in check.columns if c not in view.ids]
    for row in rows:
        ids = ", ".join(f"{i}={_plain(row[i])}" for i in view.ids if i in row)
        vals = ", ".join(f"{c}={_plain(row[c])}" for c in checked if c in row)
        text = f"{ids}: {vals}" if ids and vals else ids or vals
        if text and text not in out:
            out.append(text)
        if len(out) >= limit:
            break
    if not out:
        out = [_plain(v) for v in (result.get("partial_unexpected_list") or [])[:limit]]
    return out


def gx_context(docs_dir: Path | None) -> Any:
    """An in-memory GX context without analytics or progress bars, with one data docs site."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    if docs_dir is not None:
        context.add_data_docs_site(
            "medssl",
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),  # GX: must be absolute
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return context


def run_checks(
    views: dict[str, View],
    checks: list[Check],
    *,
    unavailable: dict[str, str] | None = None,
    docs_dir: Path | None = None,
    examples: int = 5,
) -> SuiteRun:
    """Run each view's suite through its own GX checkpoint, then build the data docs once."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    unavailable = unavailable or {}
    # one run id for all checkpoints: the data docs list the views as one validation run
    run_id = RunIdentifier(run_name="medssl-validate")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    context = gx_context(docs_dir)
    source = context.data_sources.add_pandas("medssl")
    outcomes: dict[str, Outcome] = {}
    checkpoint_success: dict[str, bool] = {}
    by_view: dict[str, list[Check]] = {}
    for check in checks:
        by_view.setdefault(check.view, []).append(check)

    for view_name, view_checks in by_view.items():
        view = views.get(view_name)
        runnable: dict[str, Check] = {}
        for check in view_checks:
            base = Outcome(check.id, check.name, view_name, _type_name(check.make), None)
            if view is None:
                base.skipped = unavailable.get(view_name, f"view {view_name!r} not built")
            elif lacking := [c for c in check.columns if c not in view.frame.columns]:
                base.skipped = f"column {', '.join(map(repr, lacking))} missing"
            else:
                runnable[check.id] = check
            outcomes[check.id] = base
        if view is None or not runnable:
            continue

        ts = time.perf_counter()
        batch = source.add_dataframe_asset(view_name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=view_name))
        for check in runnable.values():
            suite.add_expectation(check.expectation())
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=view_name, data=batch, suite=suite)
        )
        result_format = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": max(examples * 4, 20),
        }
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=view_name,
                validation_definitions=[definition],
                actions=[],
                result_format=result_format,
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": view.frame}, run_id=run_id)
        checkpoint_success[view_name] = bool(run.success)
        seen: set[str] = set()
        for suite_result in run.run_results.values():
            for r in suite_result.results:
                cid = (r.expectation_config.meta or {}).get("medssl_id")
                check = runnable.get(cid)
                if check is None:
                    continue
                seen.add(cid)
                out = outcomes[cid]
                res = dict(r.result or {})
                out.success = bool(r.success)
                out.element_count = res.get("element_count")
                out.unexpected_count = res.get("unexpected_count")
                info = r.exception_info or {}
                if info.get("raised_exception"):
                    out.success = False
                    out.error = str(info.get("exception_message") or "expectation raised")
                elif not out.success:
                    out.examples = _examples(check, view, res, examples)
        for check in runnable.values():
            if check.id not in seen:  # never silently pass an expectation GX did not run
                outcomes[check.id].success = False
                outcomes[check.id].error = "great-expectations returned no result for it"
        seconds[f"gx_{view_name}"] = round(time.perf_counter() - ts, 3)

    docs_index = None
    if docs_dir is not None:
        ts = time.perf_counter()
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        built = context.build_data_docs(site_names=["medssl"])
        docs_index = docs_dir / "index.html"
        if not docs_index.is_file():  # pragma: no cover - GX layout change
            log.warning("data docs index not found (GX said %s)", built)
            docs_index = None
        seconds["data_docs"] = round(time.perf_counter() - ts, 3)
    seconds["gx_total"] = round(time.perf_counter() - t0, 3)
    ordered = [outcomes[c.id] for c in checks]
    return SuiteRun(ordered, checkpoint_success, docs_index, seconds)
