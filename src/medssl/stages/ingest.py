"""The ingest stage: a PACS/DICOM export → a de-identified dataset in the data contract.

    files ──headers (parallel)──► records ──scope, duplicates──► to convert
          ──frames (parallel, in commits of `commit_every` files)──► images/ + manifest

Every row is `unlabeled` (ingest never takes labels from DICOM metadata: paper 001 finds it often
wrong). The dataset folder also holds ``ingest_report.json`` (counts at each step, quarantined
files with reasons), ``ingest_flowchart.png`` (paper 000 Fig. 4 layout) and ``.ingest/`` (the
state of every file seen: a re-run only reads new or changed files and adds only new SOP
instances; an interrupted run resumes from the last commit). See docs/ingest.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medssl import __version__
from medssl.config import IngestConfig
from medssl.data.contract import (
    MANIFEST_FILE,
    REPORT_COLUMNS,
    REPORTS_FILE,
    DatasetInfo,
    coerce,
    manifest_dtypes,
    read_table,
    write_info,
    write_table,
)
from medssl.dicom import flowchart, reader
from medssl.dicom.deid import Pseudonymizer, load_salt
from medssl.dicom.reports import RawReports, read_reports_csv, reports_table
from medssl.dicom.scope import DopplerRule, title_scope
from medssl.dicom.walk import walk
from medssl.errors import ConfigError, DataContractError
from medssl.fileio import atomic_write, atomic_write_text
from medssl.parallel import map_chunks, resolve_workers

log = logging.getLogger(__name__)

STATE_DIR = ".ingest"
STATE_FILE = "files.parquet"
PARTS_DIR = "parts"
MANIFEST_PART, STATE_PART = "manifest", "files"
META_FILE = "meta.json"
REPORT_FILE = "ingest_report.json"
FLOWCHART_FILE = "ingest_flowchart.png"
HEADER_CHUNK, CONVERT_CHUNK = 128, 16

# settings that change what a file becomes: a re-run into the same dataset must keep them
OUTPUT_SETTINGS = (
    "task", "classes", "modalities", "scope_keywords", "title_tags", "keep_untitled",
    "exclude_doppler", "doppler_chroma", "doppler_fraction", "doppler_margin", "mask_top_band",
    "frame_step", "max_frames", "keep_16bit", "date_policy", "date_shift_days",
)  # fmt: skip

# statuses a file record ends with (reader.OK records are resolved into one of the last ones)
DUPLICATE, OUT_OF_MODALITY, OUT_OF_SCOPE = "duplicate", "out_of_modality", "out_of_scope"
UNTITLED, INGESTED, DOPPLER, PENDING = "untitled_dropped", "ingested", "doppler_only", "pending"
# reader statuses of a file that is no image instance (every other record is one)
NOT_IMAGES = (reader.QUARANTINED, reader.NON_IMAGE, reader.DICOMDIR)

STATE_COLUMNS = {
    "file_key": "string", "size": "int64", "mtime_ns": "int64", "status": "string",
    "reason": "string", "instance_id": "string", "exam_id": "string", "patient_id": "string",
    "patient_id_source": "string", "series_id": "string", "series_number": "Int64",
    "instance_number": "Int64", "modality": "string", "n_frames": "Int64", "lossy": "boolean",
    "transfer_syntax": "string", "title_present": "boolean", "title_match": "string",
    "exam_date": "string", "accession_key": "string", "n_frames_sampled": "Int64",
    "n_doppler": "Int64", "images": "Int64",
}  # fmt: skip
# manifest columns after the contract's (named in dataset.yaml `attributes`)
ATTRIBUTE_DTYPES = {
    "instance_id": "string", "series_id": "string", "series_number": "Int32",
    "instance_number": "Int32", "frame": "Int32", "frames_in_file": "Int32", "modality": "string",
    "exam_date": "string", "doppler": "boolean", "colour_fraction": "float32",
    "masked_rows": "Int32", "height": "Int32", "width": "Int32", "channels": "Int8",
    "bit_depth": "Int8", "transfer_syntax": "string", "patient_id_source": "string",
    "scope_match": "string",
}  # fmt: skip
ATTRIBUTES = tuple(ATTRIBUTE_DTYPES)


@dataclass
class IngestResult:
    """What one ingest run did; the cumulative counts are in `report_path`."""

    out_dir: Path
    counts: dict[str, Any]
    this_run: dict[str, int]
    quarantined: list[dict[str, str]]
    report_path: Path
    flowchart_path: Path
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        d, r, f = self.counts["dataset"], self.this_run, self.counts["files"]
        lines = [
            f"ingest → {self.out_dir}: {d['images']:,} images, {d['exams']:,} exams, "
            f"{d['patients']:,} patients ({r['images_added']:,} images of "
            f"{r['instances_added']:,} new instances added in {self.seconds:.1f}s)",
            f"  files {f['found']:,} · read {r['files_read']:,} · quarantined "
            f"{f['quarantined']:,} · duplicates {f['duplicate']:,} · Doppler frames excluded "
            f"{self.counts['frames']['excluded_doppler']:,}",
            f"report: {self.report_path}",
            f"flowchart: {self.flowchart_path}",
        ]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


# ------------------------------------------------------------------------------------- state


def _settings_of(cfg: IngestConfig) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    return {k: dumped[k] for k in OUTPUT_SETTINGS}


def _check_meta(out: Path, cfg: IngestConfig, pseudo: Pseudonymizer) -> None:
    """Refuse a re-run with another salt or other output settings (the dataset would mix)."""
    path = out / STATE_DIR / META_FILE
    if not path.is_file():
        if (out / MANIFEST_FILE).exists():
            raise DataContractError(f"{out}: a dataset not written by ingest (no {STATE_DIR}/)")
        return
    meta = json.loads(path.read_text())
    if meta.get("salt_fingerprint") != pseudo.fingerprint():
        raise ConfigError(
            f"{out} was ingested with another salt: pseudonyms would not match (use the same "
            "salt or a new --out folder)"
        )
    now = _settings_of(cfg)
    changed = [k for k in OUTPUT_SETTINGS if meta.get("settings", {}).get(k) != now[k]]
    if changed:
        raise ConfigError(
            f"{out} was ingested with other ingest.{', ingest.'.join(changed)}: write a new "
            "--out folder (or restore the settings)"
        )


def _write_meta(out: Path, cfg: IngestConfig, pseudo: Pseudonymizer) -> None:
    meta = {
        "format": "medssl-ingest-state/1",
        "salt_fingerprint": pseudo.fingerprint(),
        "settings": _settings_of(cfg),
        "medssl": __version__,
    }
    atomic_write_text(out / STATE_DIR / META_FILE, json.dumps(meta, indent=2) + "\n")


def _load_state(out: Path) -> pd.DataFrame:
    """The consolidated state, then the state parts of an unfinished run (newest record wins)."""
    path = out / STATE_DIR / STATE_FILE
    tables = [pd.read_parquet(path)] if path.is_file() else []
    tables += [pd.read_parquet(p) for p in Parts(out).files(STATE_PART)]
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in STATE_COLUMNS.items()}).assign(
            tokens=pd.Series(dtype=object)
        )
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    return table.drop_duplicates("file_key", keep="last").reset_index(drop=True)


def _load_manifest(out: Path, empty: DatasetInfo) -> pd.DataFrame:
    """The consolidated manifest, then the manifest parts of an unfinished run."""
    tables = [read_table(out / MANIFEST_FILE)] if (out / MANIFEST_FILE).is_file() else []
    tables += [pd.read_parquet(p) for p in Parts(out).files(MANIFEST_PART)]
    if not tables:
        return _empty_manifest(empty)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    return table.drop_duplicates("image", keep="last").reset_index(drop=True)


class Parts:
    """A run's commits, appended as numbered parquet parts under .ingest/parts/ (the new manifest
    rows, then the file records they changed): the cost of a commit does not grow with the
    dataset. The run ends (also on Ctrl-C) by consolidating them into manifest.parquet and
    files.parquet; a killed run's parts are picked up by the next run."""

    def __init__(self, out: Path) -> None:
        self.dir = out / STATE_DIR / PARTS_DIR
        done = [int(p.name.split("-")[0]) for p in self.files(STATE_PART)]
        done += [int(p.name.split("-")[0]) for p in self.files(MANIFEST_PART)]
        self.seq = max(done, default=0)

    def files(self, kind: str) -> list[Path]:
        return sorted(self.dir.glob(f"*-{kind}.parquet")) if self.dir.is_dir() else []

    def commit(self, rows: pd.DataFrame | None, records: list[dict[str, Any]]) -> None:
        """Append one commit: its manifest rows (if any), then its records (atomically each)."""
        self.seq += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        if rows is not None and len(rows):
            path = self.dir / f"{self.seq:06d}-{MANIFEST_PART}.parquet"
            atomic_write(path, lambda p: write_table(rows, p))
        if records:
            table = _state_table({r["file_key"]: r for r in records})
            atomic_write(
                self.dir / f"{self.seq:06d}-{STATE_PART}.parquet", lambda p: write_table(table, p)
            )

    def clear(self) -> None:
        for path in self.files(MANIFEST_PART) + self.files(STATE_PART):
            path.unlink(missing_ok=True)


def _state_table(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = [{c: r.get(c) for c in (*STATE_COLUMNS, "tokens")} for r in records.values()]
    table = pd.DataFrame(rows, columns=[*STATE_COLUMNS, "tokens"])
    table = coerce(table, STATE_COLUMNS, STATE_FILE)
    table["tokens"] = [
        list(t) if isinstance(t, list | tuple | np.ndarray) else [] for t in table["tokens"]
    ]
    return table.sort_values("file_key", kind="stable").reset_index(drop=True)


def _records_from_state(state: pd.DataFrame) -> dict[str, dict[str, Any]]:
    out = {}
    for rec in state.to_dict("records"):
        rec = {k: (None if _isna(v) else v) for k, v in rec.items()}
        tokens = rec.get("tokens")
        rec["tokens"] = [] if tokens is None else list(tokens)
        out[rec["file_key"]] = rec
    return out


def _isna(v: Any) -> bool:
    if isinstance(v, list | tuple | np.ndarray):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------- helpers


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _split(items: Sequence[Any], most: int, cfg: IngestConfig) -> list[list[Any]]:
    """Chunks of at most `most` items, small enough to give every worker a share."""
    share = -(-len(items) // (resolve_workers(cfg.workers) * 4)) if items else 1
    return list(_chunks(items, max(1, min(most, share))))


def _run(fn: Any, jobs: list[tuple], sizes: list[int], cfg: IngestConfig, desc: str, progress):
    return map_chunks(
        fn, jobs, sizes, workers=cfg.workers, desc=desc, progress=progress, unit="file"
    )


def _empty_manifest(info: DatasetInfo) -> pd.DataFrame:
    cols = {**manifest_dtypes(info), **ATTRIBUTE_DTYPES}
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})


def _info(cfg: IngestConfig, manifest: pd.DataFrame) -> DatasetInfo:
    modalities = sorted(manifest["modality"].dropna().unique()) if len(manifest) else []
    side = int(np.median(np.maximum(manifest["height"], manifest["width"]))) if len(manifest) else 1
    return DatasetInfo(
        name=cfg.name,
        task=cfg.task,
        classes=list(cfg.classes),
        modality="/".join(modalities) or "/".join(cfg.modalities) or "OT",
        image_size=max(side, 1),
        channels=3 if len(manifest) and (manifest["channels"] == 3).any() else 1,
        bit_depth=16 if len(manifest) and (manifest["bit_depth"] == 16).any() else 8,
        description="De-identified DICOM export ingested by `medssl ingest` (every row unlabeled; "
        "see ingest_report.json).",
        attributes=list(ATTRIBUTES),
    )


def _consolidate(
    out: Path,
    cfg: IngestConfig,
    manifest: pd.DataFrame,
    reports: pd.DataFrame | None,
    records: dict[str, dict[str, Any]],
) -> DatasetInfo:
    """Write dataset.yaml, manifest, reports, then the state — each atomically, in this order, so
    the manifest lists only written images — and drop the run's parts (see Parts)."""
    info = _info(cfg, manifest)
    write_info(out, info)
    dtypes = {**manifest_dtypes(info), **ATTRIBUTE_DTYPES}
    typed = coerce(manifest, dtypes, MANIFEST_FILE)
    atomic_write(out / MANIFEST_FILE, lambda p: write_table(typed[list(dtypes)], p))
    if reports is not None:
        kept = reports[reports["exam_id"].isin(set(manifest["exam_id"]))]
        typed_reports = coerce(kept, REPORT_COLUMNS, REPORTS_FILE)
        atomic_write(out / REPORTS_FILE, lambda p: write_table(typed_reports, p))
    state = _state_table(records)
    atomic_write(out / STATE_DIR / STATE_FILE, lambda p: write_table(state, p))
    Parts(out).clear()
    return info


# ------------------------------------------------------------------------------------- scope


def _resolve(
    records: dict[str, dict[str, Any]],
    cfg: IngestConfig,
    report_titles: dict[str, str | None],
    in_manifest: set[str],
) -> dict[str, dict[str, Any]]:
    """Give every readable image record its final status (or PENDING: to convert); returns the
    per-exam scope decisions."""
    modalities = {m.upper() for m in cfg.modalities}
    exams: dict[str, dict[str, Any]] = {}
    for rec in records.values():
        if rec["status"] in NOT_IMAGES:
            continue
        ex = exams.setdefault(
            rec["exam_id"],
            {"modality_ok": False, "titled": False, "match": None, "patient": rec["patient_id"]},
        )
        ex["modality_ok"] |= (rec["modality"] or "").upper() in modalities
        ex["titled"] |= bool(rec.get("title_present"))
        ex["match"] = ex["match"] or rec.get("title_match")
    for exam, ex in exams.items():
        title = report_titles.get(exam)
        if title:  # the report title wins over the DICOM title tags
            ex["titled"], ex["match"] = title_scope([title], cfg.scope_keywords)
        ex["in_scope"] = ex["modality_ok"] and (
            ex["match"] is not None if ex["titled"] else cfg.keep_untitled
        )
    # one file per SOP instance: the one already ingested, else lossless first, then path order
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records.values():
        if rec["status"] in NOT_IMAGES:
            continue
        groups.setdefault(rec["instance_id"], []).append(rec)
    for iid, group in groups.items():
        group.sort(key=lambda r: (r["status"] not in (INGESTED, DOPPLER), *_order(r)))
        keeper, *others = group
        for rec in others:
            rec["status"] = DUPLICATE
        ex = exams[keeper["exam_id"]]
        if keeper["status"] in (INGESTED, DOPPLER):
            continue
        if iid in in_manifest:  # written by an interrupted run before its state was committed
            keeper["status"] = INGESTED
        elif not keeper.get("file"):  # no longer in the export: keeps its last status
            continue
        elif (keeper["modality"] or "").upper() not in modalities:
            keeper["status"] = OUT_OF_MODALITY
        elif not ex["in_scope"]:
            keeper["status"] = OUT_OF_SCOPE if ex["titled"] else UNTITLED
        else:
            keeper["status"] = PENDING
    return exams


# ------------------------------------------------------------------------------------ counts


def _counts(
    walked: Any,
    records: dict[str, dict[str, Any]],
    exams: dict[str, dict[str, Any]],
    manifest: pd.DataFrame,
    frames_excluded: int,
) -> dict[str, Any]:
    recs = list(records.values())
    status = pd.Series([r["status"] for r in recs], dtype="string")
    n = status.value_counts().to_dict()
    images = [r for r in recs if r["status"] not in NOT_IMAGES]
    in_mod = {e for e, x in exams.items() if x["modality_ok"]}
    titled = {e for e in in_mod if exams[e]["titled"]}
    in_scope = {e for e in in_mod if exams[e]["in_scope"]}
    reasons: dict[str, int] = {}
    for r in recs:
        if r["status"] == reader.QUARANTINED:
            kind = (r["reason"] or "unknown").split(" (")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    by_modality: dict[str, int] = {}
    for r in images:
        if r["status"] != DUPLICATE:
            by_modality[r["modality"]] = by_modality.get(r["modality"], 0) + 1
    sampled = sum(int(r.get("n_frames_sampled") or 0) for r in recs)
    return {
        "files": {
            "found": len(walked.files) + walked.hidden + walked.dicomdir,
            "known": len(recs),
            "skipped": walked.hidden + walked.dicomdir + int(n.get(reader.DICOMDIR, 0)),
            "quarantined": int(n.get(reader.QUARANTINED, 0)),
            "quarantine_reasons": reasons,
            "non_image": int(n.get(reader.NON_IMAGE, 0)),
            "duplicate": int(n.get(DUPLICATE, 0)),
        },
        "instances": len({r["instance_id"] for r in images}),
        "instances_by_modality": dict(sorted(by_modality.items())),
        "patients": {"all": len({r["patient_id"] for r in images})},
        "exams": {
            "all": len(exams),
            "out_of_modality": len(exams) - len(in_mod),
            "titled": len(titled),
            "untitled": len(in_mod) - len(titled),
            "out_of_scope": len(titled - in_scope),
            "untitled_dropped": len(in_mod - titled - in_scope),
            "in_scope": len(in_scope),
        },
        "frames": {
            "sampled": sampled,
            "doppler": sum(int(r.get("n_doppler") or 0) for r in recs),
            "excluded_doppler": frames_excluded,
        },
        "dataset": {
            "images": len(manifest),
            "instances": int(manifest["instance_id"].nunique()) if len(manifest) else 0,
            "exams": int(manifest["exam_id"].nunique()) if len(manifest) else 0,
            "patients": int(manifest["patient_id"].nunique()) if len(manifest) else 0,
            "doppler_flagged_kept": int(manifest["doppler"].sum()) if len(manifest) else 0,
        },
    }


# ------------------------------------------------------------------------------------- stage


def ingest(
    dicom_dir: Path | str,
    out_dir: Path | str,
    cfg: IngestConfig | None = None,
    *,
    reports: Path | str | None = None,
    progress: bool | None = None,
    tracker: Any = None,
) -> IngestResult:
    """Ingest the DICOM export at `dicom_dir` into the dataset folder `out_dir` (created, or
    grown when it holds an earlier ingest of the same export)."""
    cfg = cfg or IngestConfig()
    t0 = time.perf_counter()
    root, out = Path(dicom_dir), Path(out_dir)
    salt = load_salt(cfg.salt_env, cfg.salt_file)
    pseudo = Pseudonymizer(salt, cfg.date_shift_days)
    walked = walk(root)
    out.mkdir(parents=True, exist_ok=True)
    _check_meta(out, cfg, pseudo)
    _write_meta(out, cfg, pseudo)
    settings = reader.Settings(
        salt=salt,
        date_shift_days=cfg.date_shift_days,
        date_policy=cfg.date_policy,
        title_tags=tuple(cfg.title_tags),
        scope_keywords=tuple(cfg.scope_keywords),
        collect_tokens=True,
        frame_step=cfg.frame_step,
        max_frames=cfg.max_frames,
        keep_16bit=cfg.keep_16bit,
        mask_top_band=cfg.mask_top_band,
        doppler=DopplerRule(cfg.doppler_chroma, cfg.doppler_fraction, cfg.doppler_margin),
        png_compress_level=cfg.png_compress_level,
    )

    # the dataset so far
    records = _records_from_state(_load_state(out))
    empty_info = _info(cfg, pd.DataFrame())
    manifest = _load_manifest(out, empty_info)
    old_reports = read_table(out / REPORTS_FILE) if (out / REPORTS_FILE).is_file() else None
    in_manifest = set(manifest["instance_id"].dropna()) if "instance_id" in manifest else set()

    # pass 1: headers of new or changed files (unchanged ones keep their record)
    todo = []
    for rel in walked.files:
        key = pseudo.file_key(rel)
        st = (root / rel).stat()
        old = records.get(key)
        if old is not None and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
            old["file"] = rel
            continue
        todo.append(rel)
    jobs = [(str(root), chunk, settings) for chunk in _split(todo, HEADER_CHUNK, cfg)]
    for chunk in _run(
        reader.read_headers, jobs, [len(j[1]) for j in jobs], cfg, "headers", progress
    ):
        for rec in chunk:
            records[rec["file_key"]] = rec
    read_now = set(todo)
    run = {
        "files_read": len(todo),
        "files_converted": 0,
        "instances_added": 0,
        "images_added": 0,
        "quarantined_new": sum(
            r.get("file") in read_now and r["status"] == reader.QUARANTINED
            for r in records.values()
        ),
    }

    # reports: raw titles decide the scope; scrubbed text is written
    raw_reports = RawReports()
    if reports is not None:
        acc = {r["accession_key"]: r["exam_id"] for r in records.values() if r.get("accession_key")}
        raw_reports = read_reports_csv(Path(reports), pseudo, acc, cfg.report_language)
    titles = {e: v["title"] for e, v in raw_reports.by_exam.items()}
    exams = _resolve(records, cfg, titles, in_manifest)

    # the reports of every exam that can reach the manifest, scrubbed once; each commit writes
    # those of the exams in its manifest (_commit)
    all_reports = old_reports
    if reports is not None:
        tokens: dict[str, set[str]] = {}
        for r in records.values():
            if r.get("exam_id"):
                tokens.setdefault(r["exam_id"], set()).update(r.get("tokens") or [])
        reachable = set(exams) | set(manifest["exam_id"])
        fresh, _ = reports_table(raw_reports, reachable, tokens, pseudo)
        if old_reports is not None and len(old_reports):
            fresh = pd.concat(
                [old_reports[~old_reports["exam_id"].isin(set(fresh["exam_id"]))], fresh]
            ).sort_values("exam_id", kind="stable")
        all_reports = fresh.reset_index(drop=True)

    # pass 2: decode and write, committing every `commit_every` files as a part (the header pass
    # and the scope decisions first); when the chosen file of an instance cannot be decoded, its
    # next duplicate (if any) is tried in a later batch. The parts are consolidated at the end,
    # also when interrupted.
    queue = sorted((r for r in records.values() if r["status"] == PENDING), key=_order)
    label_cols = empty_info.label_columns()
    dtypes = {**manifest_dtypes(empty_info), **ATTRIBUTE_DTYPES}
    parts = Parts(out)
    parts.commit(None, list(records.values()))
    frames = [manifest]
    try:
        while queue:
            queue = _convert_batch(
                queue, cfg, root, out, settings, records, exams, run, parts, frames, dtypes,
                label_cols, progress,
            )  # fmt: skip
    except BaseException:  # Ctrl-C, a failure: the committed files become the dataset
        with contextlib.suppress(Exception):
            _consolidate(out, cfg, pd.concat(frames, ignore_index=True), all_reports, records)
        raise
    manifest = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    _consolidate(out, cfg, manifest, all_reports, records)

    done = (INGESTED, DOPPLER)
    excluded = sum(int(r.get("n_doppler") or 0) for r in records.values() if r["status"] in done)
    excluded = excluded if cfg.exclude_doppler else 0
    counts = _counts(walked, records, exams, manifest, excluded)
    quarantined = sorted(
        (
            {"file_key": r["file_key"], "reason": r["reason"] or "unknown"}
            for r in records.values()
            if r["status"] == reader.QUARANTINED
        ),
        key=lambda q: q["file_key"],
    )
    warnings = []
    if not len(manifest):
        warnings.append("the dataset has no images: check ingest.modalities and scope_keywords")
    if reports is not None:
        counts["reports"] = {
            "csv_rows": raw_reports.rows,
            "matched_exams": len(set(raw_reports.by_exam) & set(manifest["exam_id"])),
            "without_key": raw_reports.without_key,
            "unmatched_accession": raw_reports.unmatched_accession,
            "merged_duplicates": raw_reports.duplicates,
        }
    seconds = round(time.perf_counter() - t0, 3)
    report = {
        "format": "medssl-ingest-report/1",
        "medssl": __version__,
        "counts": counts,
        "this_run": run,
        "quarantined": quarantined,
        "settings": _settings_of(cfg),
        "seconds": seconds,
        "files_per_second": round(run["files_read"] / seconds, 2) if seconds else None,
        "workers": resolve_workers(cfg.workers),
        "warnings": warnings,
        "notes": "file_key = keyed hash of the file's path in the export (paths may hold names); "
        "`medssl ingest DICOM_DIR --locate KEY` prints the path on the terminal",
    }
    report_path = out / REPORT_FILE
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    chart = flowchart.draw(counts, out / FLOWCHART_FILE)
    if tracker is not None:
        tracker.log_metrics(_flat_metrics(counts, run))
        tracker.log_artifact(report_path)
        tracker.log_artifact(chart)
    return IngestResult(out, counts, run, quarantined, report_path, chart, seconds, warnings)


def _convert_batch(
    queue: list[dict[str, Any]],
    cfg: IngestConfig,
    root: Path,
    out: Path,
    settings: reader.Settings,
    records: dict[str, dict[str, Any]],
    exams: dict[str, dict[str, Any]],
    run: dict[str, int],
    parts: Parts,
    frames: list[pd.DataFrame],
    dtypes: dict[str, str],
    label_cols: list[str],
    progress: bool | None,
) -> list[dict[str, Any]]:
    """Convert the next `commit_every` files of the queue and commit them as one part; the rest
    of the queue (with the fallbacks of files that failed)."""
    batch, queue = queue[: cfg.commit_every], queue[cfg.commit_every :]
    jobs = [
        (str(root), str(out), [_job(r) for r in chunk], settings, cfg.exclude_doppler)
        for chunk in _split(batch, CONVERT_CHUNK, cfg)
    ]
    new_rows, changed = [], []
    for chunk in _run(
        reader.convert_files, jobs, [len(j[2]) for j in jobs], cfg, "frames", progress
    ):
        for res in chunk:
            rec = records[res["file_key"]]
            changed.append(rec)
            run["files_converted"] += 1
            if res["status"] == reader.QUARANTINED:
                rec.update(status=reader.QUARANTINED, reason=res["reason"])
                run["quarantined_new"] += 1
                fallback = _fallback(records, rec)
                changed += fallback
                queue += fallback
                continue
            kept = [row for row in res["rows"] if row.pop("kept")]
            rec.update(
                status=INGESTED if kept else DOPPLER,
                n_frames_sampled=res["n_frames_sampled"],
                n_doppler=res["n_doppler"],
                images=len(kept),
            )
            run["instances_added"] += 1
            run["images_added"] += len(kept)
            ex = exams[rec["exam_id"]]
            new_rows += [_manifest_row(rec, row, ex, label_cols) for row in kept]
    rows = coerce(pd.DataFrame(new_rows), dtypes, MANIFEST_FILE)[list(dtypes)] if new_rows else None
    parts.commit(rows, changed)
    if rows is not None:
        frames.append(rows)
    log.info("ingest: committed %d images", len(new_rows))
    return queue


def _order(rec: dict[str, Any]) -> tuple:
    """Preference among the files of one SOP instance: lossless first, then path order."""
    return (bool(rec.get("lossy")), rec.get("file") or "~", rec["file_key"])


def _fallback(records: dict[str, dict[str, Any]], failed: dict[str, Any]) -> list[dict[str, Any]]:
    """The next duplicate (still in the export) of an instance whose chosen file failed."""
    others = [
        r
        for r in records.values()
        if r["status"] == DUPLICATE and r["instance_id"] == failed["instance_id"] and r.get("file")
    ]
    if not others:
        return []
    nxt = min(others, key=_order)
    nxt["status"] = PENDING
    return [nxt]


def _job(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("file", "file_key", "modality", "patient_id", "exam_id", "instance_id")
    return {k: rec[k] for k in keys}


def _manifest_row(
    rec: dict[str, Any], row: dict[str, Any], ex: dict[str, Any], label_cols: list[str]
) -> dict[str, Any]:
    out = {
        "image": row["image"],
        "patient_id": rec["patient_id"],
        "exam_id": rec["exam_id"],
        "lesion_id": None,
        "split": "unlabeled",
        **{c: None for c in label_cols},
        "instance_id": rec["instance_id"],
        "series_id": rec["series_id"],
        "series_number": rec["series_number"],
        "instance_number": rec["instance_number"],
        "frame": row["frame"],
        "frames_in_file": row["frames_in_file"],
        "modality": rec["modality"],
        "exam_date": rec["exam_date"],
        "doppler": row["doppler"],
        "colour_fraction": row["colour_fraction"],
        "masked_rows": row["masked_rows"],
        "height": row["height"],
        "width": row["width"],
        "channels": row["channels"],
        "bit_depth": row["bit_depth"],
        "transfer_syntax": rec["transfer_syntax"],
        "patient_id_source": rec["patient_id_source"],
        "scope_match": ex["match"],
    }
    return out


def _flat_metrics(counts: dict[str, Any], run: dict[str, int]) -> dict[str, float]:
    flat: dict[str, float] = {}

    def walk_(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk_(f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}", v)
        elif isinstance(node, int | float) and not isinstance(node, bool):
            flat[f"ingest.{prefix}"] = float(node)

    for key in ("files", "exams", "frames", "dataset"):
        walk_(f"{key}.", counts[key])
    walk_("run.", run)
    return {k.rstrip("."): v for k, v in flat.items() if "reasons" not in k}


def locate(dicom_dir: Path | str, file_key: str, cfg: IngestConfig | None = None) -> str | None:
    """The export path whose key is `file_key` (for the operator, who holds salt and export)."""
    cfg = cfg or IngestConfig()
    pseudo = Pseudonymizer(load_salt(cfg.salt_env, cfg.salt_file), cfg.date_shift_days)
    for rel in walk(dicom_dir).files:
        if pseudo.file_key(rel) == file_key:
            return rel
    return None
