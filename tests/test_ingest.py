"""The ingest stage end to end on a pydicom-data corpus with planted PHI and corrupt files:
grouping by study, Doppler flagged, PHI absent from every output, quarantine with reasons,
incremental re-runs, resume after an interruption, and `medssl validate` on the result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from dicom_corpus import Corpus, build_corpus, export_paths, move_aside, move_back
from medssl.config import IngestConfig, ValidateConfig
from medssl.data.contract import MANIFEST_FILE, REPORTS_FILE, Dataset
from medssl.dicom import reader
from medssl.errors import ConfigError
from medssl.stages import ingest as ingest_stage
from medssl.stages.ingest import REPORT_FILE, STATE_DIR, IngestResult, ingest
from medssl.stages.validate import summary, validate

SALT = "test-salt-9f8e7d6c5b4a39281706"
NO_ENV = "MEDSSL_TEST_UNSET_SALT_VAR"
MEDSSL = str(Path(sys.executable).parent / "medssl")


class RecordingTracker:
    """A Tracker (medssl.tracking.base protocol) that keeps what a stage would send to MLflow."""

    run_id = "recording"

    def __init__(self) -> None:
        self.logged: list[Any] = []
        self.files: list[Path] = []

    def log_params(self, params: Any) -> None:
        self.logged.append(dict(params))

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.logged.append(dict(metrics))

    def log_artifact(self, path: Any) -> None:
        self.files.append(Path(path))

    def log_artifacts(self, path: Any, artifact_path: str | None = None) -> None:
        self.files += [p for p in Path(path).rglob("*") if p.is_file()]

    def set_tags(self, tags: Any) -> None:
        self.logged.append(dict(tags))


@contextmanager
def captured_output() -> Iterator[list[str]]:
    """Everything written to fd 1/2 (this process and spawned workers) and every log record."""
    import logging

    out: list[str] = []
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            root.removeHandler(handler)
            root.setLevel(old_level)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))
            out.extend(records)


def config(tmp: Path, **kw: Any) -> IngestConfig:
    salt_file = tmp / "salt.txt"
    salt_file.write_text(SALT)
    base = {
        "modalities": ["US", "MR", "CT", "CR"],
        "max_frames": 4,
        "workers": 1,
        "salt_env": NO_ENV,
        "salt_file": str(salt_file),
    }
    return IngestConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Corpus; ingest of a subset (2 workers), of the full export (tracked), a re-run."""
    tmp = tmp_path_factory.mktemp("ingest")
    corpus = build_corpus(tmp / "export")
    out = tmp / "dataset"
    later = export_paths(corpus, "cine") + export_paths(corpus, "aloka/IM0001")
    tracker = RecordingTracker()
    with captured_output() as output:
        move_aside(corpus, later, tmp / "later")
        first = ingest(corpus.root, out, config(tmp, workers=2), reports=corpus.reports_csv,
                       progress=False)  # fmt: skip
        manifest_first = pd.read_parquet(out / MANIFEST_FILE)
        move_back(corpus, later, tmp / "later")
        full = ingest(corpus.root, out, config(tmp), reports=corpus.reports_csv,
                      progress=True, tracker=tracker)  # fmt: skip
        manifest_full = (out / MANIFEST_FILE).read_bytes()
        again = ingest(corpus.root, out, config(tmp), reports=corpus.reports_csv, progress=False)
    return {
        "tmp": tmp,
        "corpus": corpus,
        "out": out,
        "first": first,
        "manifest_first": manifest_first,
        "full": full,
        "manifest_full": manifest_full,
        "again": again,
        "tracker": tracker,
        "output": output,
    }


def state(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / STATE_DIR / "files.parquet")


def test_grouping_by_study(run: dict[str, Any]) -> None:
    corpus: Corpus = run["corpus"]
    full: IngestResult = run["full"]
    files = state(run["out"])
    us1 = files[files["exam_id"] == files.loc[files["status"] == "doppler_only", "exam_id"].iloc[0]]
    # the four US1 encodings: one exam, one patient, three SOP instances, one duplicate
    assert len(us1) == 4
    assert us1["patient_id"].nunique() == 1 and us1["exam_id"].nunique() == 1
    assert us1["instance_id"].nunique() == 3
    assert (us1["status"] == "duplicate").sum() == 1
    assert full.counts["files"]["duplicate"] == 1
    assert full.counts["exams"]["all"] == len(set(corpus.study_of.values()))
    m = Dataset.open(run["out"]).manifest
    # the cine: one exam, one instance, frames 0..119 sampled to 4, kept as columns
    cine = m[m["frames_in_file"] == 120]
    assert sorted(cine["frame"]) == [0, 40, 79, 119]
    assert cine["exam_id"].nunique() == 1 and cine["instance_id"].nunique() == 1
    assert m["series_number"].notna().any() and m["instance_number"].notna().all()
    # ids are pseudonyms; every row unlabeled; images exist where the manifest says
    assert m["patient_id"].str.fullmatch(r"p[0-9a-f]{20}").all()
    assert m["exam_id"].str.fullmatch(r"e[0-9a-f]{20}").all()
    assert (m["split"] == "unlabeled").all() and m["lesion_id"].isna().all()
    assert all((run["out"] / p).is_file() for p in m["image"])
    # one exam always belongs to one patient
    assert m.groupby("exam_id")["patient_id"].nunique().max() == 1


def test_doppler_frames_flagged_and_excluded(run: dict[str, Any], tmp_path: Path) -> None:
    full: IngestResult = run["full"]
    # US1 (3 power-Doppler instances) and the TEE colour-Doppler frame: 4 frames, all excluded
    assert full.counts["frames"]["doppler"] == 4
    assert full.counts["frames"]["excluded_doppler"] == 4
    m = Dataset.open(run["out"]).manifest
    assert not m["doppler"].any()
    # B-mode (Aloka pelvis, SonoSite cine, grey US) is kept and not flagged
    us = m[m["modality"] == "US"]
    assert len(us) == 6 and (us["colour_fraction"] < 0.01).all()
    # with exclusion off the Doppler frames are kept, flagged, in one exam per study
    corpus: Corpus = run["corpus"]
    flagged = ingest(corpus.root, tmp_path / "keep", config(tmp_path, exclude_doppler=False),
                     reports=corpus.reports_csv, progress=False)  # fmt: skip
    k = Dataset.open(flagged.out_dir).manifest
    dop = k[k["doppler"]]
    assert len(dop) == 4 and (dop["colour_fraction"] > 0.05).all()
    assert dop["exam_id"].nunique() == 2  # US1 (3 encodings' instances) + TEE
    assert len(k) == len(m) + 4


def test_scope_counts_like_fig4(run: dict[str, Any]) -> None:
    c = run["full"].counts
    e = c["exams"]
    # NM is another modality; OB (report: obstetric) and CT pancreas (DICOM title) are out of
    # scope; every other exam is titled by its report and in scope
    assert e["out_of_modality"] == 1
    assert e["out_of_scope"] == 2 and e["titled"] == 10 and e["in_scope"] == 8
    assert c["dataset"]["exams"] == 6  # in scope minus the two Doppler-only exams
    report = json.loads((run["out"] / REPORT_FILE).read_text())
    assert report["counts"] == c
    assert (run["out"] / "ingest_flowchart.png").stat().st_size > 10_000
    assert c["reports"] == {
        "csv_rows": 10,
        "matched_exams": 5,
        "without_key": 1,
        "unmatched_accession": 0,
        "merged_duplicates": 0,
    }


def test_corrupt_files_quarantined_with_reasons(run: dict[str, Any]) -> None:
    corpus: Corpus = run["corpus"]
    full: IngestResult = run["full"]
    assert full.counts["files"]["quarantined"] == len(corpus.corrupt) == 5
    assert full.counts["files"]["skipped"] == 2  # DICOMDIR and .DS_Store, not quarantined
    reasons = sorted(q["reason"] for q in full.quarantined)
    assert sum(r.startswith("cannot decode") for r in reasons) == 3
    assert sum(r.startswith("not readable as DICOM") for r in reasons) == 1
    assert sum(r.startswith("missing") for r in reasons) == 1
    assert "pixel data is less than expected" in " ".join(reasons)
    # quarantined files are named by a keyed hash of their path, which --locate resolves
    files = state(run["out"])
    keys = set(files.loc[files["status"] == "quarantined", "file_key"])
    assert keys == {q["file_key"] for q in full.quarantined}
    cfg = config(run["tmp"])
    found = {ingest_stage.locate(corpus.root, k, cfg) for k in keys}
    assert found == set(corpus.corrupt)


def test_incremental_and_rerun_adds_nothing(run: dict[str, Any]) -> None:
    first, full, again = run["first"], run["full"], run["again"]
    # the subset lacked the cine (4 frames) and the Aloka B-mode frame
    assert full.this_run["images_added"] == 5 and full.this_run["instances_added"] == 2
    assert full.this_run["files_read"] == 2  # only the new files' headers were read
    assert full.counts["dataset"]["images"] == first.counts["dataset"]["images"] + 5
    m = pd.read_parquet(run["out"] / MANIFEST_FILE)
    assert m["image"].is_unique
    # one file per SOP instance, and the state's ingested instances are the manifest's
    ingested = state(run["out"]).query("status == 'ingested'")
    assert ingested["instance_id"].is_unique
    assert set(ingested["instance_id"]) == set(m["instance_id"])
    assert ingested["images"].sum() == len(m)
    first_rows = run["manifest_first"]
    assert set(first_rows["image"]) < set(m["image"])
    # a re-run reads nothing, adds nothing and leaves the manifest byte-identical
    assert again.this_run == {
        "files_read": 0,
        "files_converted": 0,
        "instances_added": 0,
        "images_added": 0,
        "quarantined_new": 0,
    }
    assert (run["out"] / MANIFEST_FILE).read_bytes() == run["manifest_full"]
    assert again.counts == full.counts


def interrupt_at_chunk(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C when the n-th one-file chunk is about to be converted."""
    real, calls = reader.convert_files, {"n": 0}

    def interrupted(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(reader, "convert_files", interrupted)
    monkeypatch.setattr(ingest_stage, "CONVERT_CHUNK", 1)


def test_interrupted_run_resumes(run: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    corpus: Corpus = run["corpus"]
    out = tmp_path / "killed"
    real = reader.convert_files
    interrupt_at_chunk(monkeypatch, 6)
    cfg = config(tmp_path, commit_every=1)
    with pytest.raises(KeyboardInterrupt):
        ingest(corpus.root, out, cfg, reports=corpus.reports_csv, progress=False)
    # what the killed run left is a consistent dataset: the five committed files
    part = Dataset.open(out)
    assert 0 < len(part.manifest) < len(pd.read_parquet(run["out"] / MANIFEST_FILE))
    assert all((out / p).is_file() for p in part.manifest["image"])
    assert set(part.reports["exam_id"]) <= set(part.manifest["exam_id"])
    monkeypatch.setattr(reader, "convert_files", real)
    resumed = ingest(corpus.root, out, cfg, reports=corpus.reports_csv, progress=False)
    assert resumed.this_run["files_read"] < resumed.counts["files"]["known"]
    whole = pd.read_parquet(run["out"] / MANIFEST_FILE)
    done = pd.read_parquet(out / MANIFEST_FILE)
    assert sorted(done["image"]) == sorted(whole["image"])  # same salt → same names
    assert resumed.counts == run["full"].counts


def test_a_hard_kill_leaves_parts_that_the_next_run_consolidates(
    run: dict[str, Any], tmp_path: Path, monkeypatch
) -> None:
    """Commits are appended parts; a run killed without any cleanup (no consolidation) leaves
    them, and the next run picks them up: nothing converted twice, the same dataset."""
    corpus: Corpus = run["corpus"]
    out = tmp_path / "hard-killed"
    interrupt_at_chunk(monkeypatch, 4)
    monkeypatch.setattr(ingest_stage, "_consolidate", lambda *a, **k: None)  # SIGKILL: no cleanup
    cfg = config(tmp_path, commit_every=1)
    with pytest.raises(KeyboardInterrupt):
        ingest(corpus.root, out, cfg, reports=corpus.reports_csv, progress=False)
    parts = sorted(p.name for p in (out / STATE_DIR / "parts").iterdir())
    assert parts[0] == "000001-files.parquet"  # the header pass and scope decisions
    assert "000004-files.parquet" in parts  # three commits of one file each, then the kill
    assert any(p.endswith("-manifest.parquet") for p in parts)
    assert not (out / MANIFEST_FILE).exists()  # nothing consolidated yet
    monkeypatch.undo()
    monkeypatch.setattr(ingest_stage, "CONVERT_CHUNK", 1)
    resumed = ingest(corpus.root, out, cfg, reports=corpus.reports_csv, progress=False)
    assert resumed.this_run["files_read"] < resumed.counts["files"]["known"]
    # nothing converted twice: the killed run's 3 files plus the rest, as many as the two runs
    # that built the full dataset converted
    converted = run["first"].this_run["files_converted"] + run["full"].this_run["files_converted"]
    assert 3 + resumed.this_run["files_converted"] == converted
    assert resumed.counts == run["full"].counts
    assert not list((out / STATE_DIR / "parts").iterdir())


def _texts_of(path: Path) -> list[str]:
    """What a file says: its bytes, plus the decoded contents of parquet tables and PNG chunks."""
    data = path.read_bytes()
    texts = [data.decode("latin-1")]
    if path.suffix == ".parquet":
        texts.append(pd.read_parquet(path).to_csv(index=False))
    if path.suffix == ".png":
        with Image.open(path) as im:
            texts.append(repr(im.info) + repr(getattr(im, "text", {})))
    return texts


def test_phi_absent_from_every_output(run: dict[str, Any]) -> None:
    corpus: Corpus = run["corpus"]
    assert len(corpus.planted_keywords) >= 80  # every PHI attribute of deid.PHI_KEYWORDS
    needles = corpus.markers | corpus.original_uids | {SALT}
    binary_safe = {n for n in needles if len(n) >= 7}
    assert binary_safe == needles
    # the search itself works: the export it came from is full of them
    source = corpus.root / next(iter(corpus.study_of))
    assert sum(n in t for n in needles for t in _texts_of(source)) > 50
    outputs = [p for p in run["out"].rglob("*") if p.is_file()]
    assert len(outputs) > 15
    documents: dict[str, list[str]] = {
        str(p.relative_to(run["out"])): _texts_of(p) for p in outputs
    }
    documents["<file names>"] = [" ".join(str(p) for p in run["out"].rglob("*"))]
    documents["<stdout, stderr, logs>"] = run["output"]
    tracker: RecordingTracker = run["tracker"]
    assert tracker.logged and tracker.files
    documents["<MLflow>"] = [repr(tracker.logged)] + [
        t for f in tracker.files for t in _texts_of(f)
    ]
    hits = [
        (name, n) for name, texts in documents.items() for n in needles for t in texts if n in t
    ]
    assert not hits, hits[:10]
    # short planted values (age, size, weight) in the text outputs
    text_docs = {k: v for k, v in documents.items() if not k.endswith(".png")}
    short = [
        (name, n)
        for name, texts in text_docs.items()
        for n in corpus.text_markers
        for t in texts
        if re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", t)
    ]
    assert not short, short[:10]
    # the report texts quoted names, ids, accession numbers and dates: all scrubbed
    reports = pd.read_parquet(run["out"] / REPORTS_FILE)
    assert len(reports) == 5
    assert reports["text"].str.contains(r"\[REDACTED\]").all()
    assert reports["text"].str.contains(r"\[DATE\]").all()
    # exam dates are shifted (the planted StudyDates never appear, checked above), not dropped
    m = pd.read_parquet(run["out"] / MANIFEST_FILE)
    assert m["exam_date"].str.fullmatch(r"\d{4}-\d\d-\d\d").all()


def test_result_passes_validate(run: dict[str, Any], tmp_path: Path) -> None:
    result = validate(run["out"], tmp_path / "validation", ValidateConfig(workers=1))
    assert result.success, summary(result)
    assert result.counts["manifest_rows"] == run["full"].counts["dataset"]["images"]


def test_changed_salt_or_settings_refused(run: dict[str, Any], tmp_path: Path) -> None:
    corpus: Corpus = run["corpus"]
    other = tmp_path / "other.txt"
    other.write_text("another-salt-0123456789")
    with pytest.raises(ConfigError, match="another salt"):
        ingest(
            corpus.root, run["out"], config(tmp_path).model_copy(update={"salt_file": str(other)})
        )
    with pytest.raises(ConfigError, match=r"ingest\.frame_step"):
        ingest(corpus.root, run["out"], config(tmp_path, frame_step=2))


def test_cli_missing_salt_and_ingest(run: dict[str, Any], tmp_path: Path) -> None:
    corpus: Corpus = run["corpus"]
    env = {k: v for k, v in os.environ.items() if k != "MEDSSL_INGEST_SALT"}
    args = [MEDSSL, "ingest", str(corpus.root), "--out", str(tmp_path / "ds"), "--params",
            str(tmp_path / "none.yaml")]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: no pseudonymisation salt: set MEDSSL_INGEST_SALT")
    assert not (tmp_path / "ds").exists()
    sets = ["-S", "ingest.modalities=[US]", "-S", "ingest.max_frames=1", "-S", "ingest.workers=1"]
    proc = subprocess.run(
        [*args, *sets, "--reports", str(corpus.reports_csv)],
        capture_output=True,
        text=True,
        env={**env, "MEDSSL_INGEST_SALT": SALT},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "images" in proc.stdout and "quarantined 4" in proc.stdout
    for needle in corpus.markers | corpus.original_uids | {SALT}:
        assert needle not in proc.stdout + proc.stderr
