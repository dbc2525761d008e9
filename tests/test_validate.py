"""The validate stage: a tiny valid dataset passes; every planted defect fails by name."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medssl.config import DataConfig, SplitConfig, ValidateConfig
from medssl.data.contract import (
    BOXES_FILE,
    MANIFEST_FILE,
    REPORTS_FILE,
    DatasetInfo,
    read_info,
    read_table,
    write_dataset,
    write_info,
    write_table,
)
from medssl.errors import DataContractError
from medssl.stages.synth import synth
from medssl.stages.validate import ValidationResult, summary, validate
from medssl.validation import images as image_checks
from medssl.validation import suites

CLASSES = ["liver", "gallbladder", "other", "kidney", "pancreas", "spleen", "bladder"]
SPLIT_OF = {"p0": "unlabeled", "p1": "train", "p2": "test"}
TABLES_ONLY = ValidateConfig(check_images=False, workers=1)
WITH_IMAGES = ValidateConfig(check_images=True, workers=1)


def _make_dataset(root: Path) -> None:
    """3 patients x 2 exams x 2 images of 32 px, 7 organ classes; p0 is unlabeled."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(3):
        pid = f"p{p}"
        for e in range(2):
            for i in range(2):
                rel = f"images/{pid}/e{e}/{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (32, 32), dtype=np.uint8)
                Image.fromarray(pixels).save(root / rel)
                row = {
                    "image": rel,
                    "patient_id": pid,
                    "exam_id": f"{pid}e{e}",
                    "lesion_id": None,
                    "split": SPLIT_OF[pid],
                }
                for k, c in enumerate(CLASSES):
                    labeled = SPLIT_OF[pid] != "unlabeled"
                    row[f"label_{c}"] = int(k == (2 * e + i) % 7) if labeled else None
                rows.append(row)
    manifest = pd.DataFrame(rows)
    reports = pd.DataFrame(
        {
            "exam_id": manifest["exam_id"].unique(),
            "title": "abdominal ultrasound",
            "text": "foie normal",
            "language": "fr",
        }
    )
    info = DatasetInfo(
        name="tiny-abdominal", task="multilabel", classes=CLASSES, modality="US", image_size=32
    )
    write_dataset(root, info, manifest, reports)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "dataset"
    _make_dataset(root)
    return root


@pytest.fixture(scope="module")
def valid_result(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> ValidationResult:
    return validate(pristine, tmp_path_factory.mktemp("valid-out"), WITH_IMAGES, progress=False)


@pytest.fixture
def dataset(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the valid dataset for one test to break."""
    root = tmp_path / "dataset"
    shutil.copytree(pristine, root)
    return root


def _edit(root: Path, file: str, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    """Rewrite a table raw (no contract coercion, so a broken table stays broken)."""
    table = read_table(root / file)
    changed = change(table)
    write_table(table if changed is None else changed, root / file)


def _failure(result: ValidationResult, name: str):
    assert not result.success
    found = [f for f in result.failures if f.name == name]
    assert found, f"{name!r} not among failures {result.failed_names}"
    assert name in summary(result)
    return found[0]


# ------------------------------------------------------------------------------ valid dataset


def test_valid_dataset_passes(valid_result: ValidationResult) -> None:
    r = valid_result
    assert r.success, summary(r)
    assert r.failures == [] and r.skipped == []
    assert r.counts["manifest_rows"] == 12
    assert r.counts["patients"] == 3 and r.counts["exams"] == 6
    assert r.counts["labeled_rows"] == 8 and r.counts["unlabeled_rows"] == 4
    assert r.counts["images_checked"] == 12
    assert summary(r).startswith("validate: OK")


def test_report_and_data_docs_are_written(valid_result: ValidationResult) -> None:
    report = json.loads(valid_result.report_path.read_text())
    assert report["success"] is True
    assert report["counts"]["reports_rows"] == 6
    assert len(report["expectations"]) == valid_result.n_expectations > 40
    assert all(e["success"] is True for e in report["expectations"])
    assert report["image_checks"] == report["image_checks"] | {"enabled": True, "failed": 0}
    assert "total" in report["timings_seconds"]
    names = {e["name"] for e in report["expectations"]}
    assert {"splits are patient-disjoint", "each exam belongs to one patient"} <= names
    index = valid_result.docs_index
    assert index is not None and index.name == "index.html" and index.is_file()
    assert report["data_docs"] == "data_docs/index.html"
    pages = list(index.parent.glob("validations/**/*.html"))
    assert {p.parent.parent.parent.name for p in pages} >= {"manifest", "patient_splits"}


def test_synthetic_archive_passes(tiny_archive: Path, tmp_path: Path) -> None:
    r = validate(tiny_archive, tmp_path / "out", WITH_IMAGES, progress=False)
    assert r.success, summary(r)
    assert r.counts["images_checked"] == r.counts["manifest_rows"] > 0


def test_images_are_found_through_image_root(pristine: Path, tmp_path: Path) -> None:
    """A derived dataset (the split stage's output) points at the source images."""
    derived = tmp_path / "derived"
    derived.mkdir()
    shutil.copy(pristine / MANIFEST_FILE, derived / MANIFEST_FILE)
    info = read_info(pristine).model_copy(update={"image_root": os.path.relpath(pristine, derived)})
    write_info(derived, info)
    r = validate(derived, tmp_path / "out", WITH_IMAGES, progress=False)
    assert r.success, summary(r)
    assert r.counts["images_checked"] == 12


# ---------------------------------------------------------------------------- planted defects


def test_missing_column_is_reported_not_crashing(dataset: Path, tmp_path: Path) -> None:
    _edit(dataset, MANIFEST_FILE, lambda m: m.drop(columns=["split", "label_kidney"]))
    r = validate(dataset, tmp_path / "out", TABLES_ONLY)
    _failure(r, "manifest has column 'split'")
    _failure(r, "manifest has column 'label_kidney'")
    assert not any(f.error for f in r.failures), summary(r)
    assert any("splits are patient-disjoint" in s for s in r.skipped)
    assert r.report_path.is_file()


def test_patient_in_two_splits(dataset: Path, tmp_path: Path) -> None:
    def move(m: pd.DataFrame) -> None:
        m.loc[m.index[(m["patient_id"] == "p1").to_numpy()][-1], "split"] = "test"

    _edit(dataset, MANIFEST_FILE, move)
    r = validate(dataset, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "splits are patient-disjoint")
    assert f.examples == ["patient_id=p1: split=test, train"]
    assert f.view == "patient_splits"


def test_corrupt_png(dataset: Path, tmp_path: Path) -> None:
    bad = dataset / "images/p1/e0/1.png"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated PNG: header ok, pixels missing
    r = validate(dataset, tmp_path / "out", WITH_IMAGES, progress=False)
    f = _failure(r, "image files decode")
    assert len(f.examples) == 1 and "images/p1/e0/1.png" in f.examples[0]
    assert r.image_failures == 1
    report = json.loads(r.report_path.read_text())
    assert report["image_checks"]["failures"][0]["image"] == "images/p1/e0/1.png"


def test_missing_file(dataset: Path, tmp_path: Path) -> None:
    (dataset / "images/p2/e1/0.png").unlink()
    r = validate(dataset, tmp_path / "out", WITH_IMAGES, progress=False)
    f = _failure(r, "image files exist")
    assert f.examples == ["image=images/p2/e1/0.png, reason=file not found: exists=False"]
    assert [x.name for x in r.failures] == ["image files exist"]  # not also "does not decode"


def test_label_on_unlabeled_row(dataset: Path, tmp_path: Path) -> None:
    def label(m: pd.DataFrame) -> None:
        m.loc[m.index[(m["split"] == "unlabeled").to_numpy()][0], "label_spleen"] = 1

    _edit(dataset, MANIFEST_FILE, label)
    r = validate(dataset, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "label_spleen is empty on unlabeled rows")
    assert f.examples == ["image=images/p0/e0/0.png: label_spleen=1"]
    assert f.view == "unlabeled"


def test_duplicate_image_path(dataset: Path, tmp_path: Path) -> None:
    def dup(m: pd.DataFrame) -> None:
        m.loc[3, "image"] = m.loc[2, "image"]

    _edit(dataset, MANIFEST_FILE, dup)
    r = validate(dataset, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "image paths are unique")
    assert f.examples == ["image=images/p0/e1/0.png"]


def test_report_for_unknown_exam(dataset: Path, tmp_path: Path) -> None:
    def add(t: pd.DataFrame) -> pd.DataFrame:
        extra = t.iloc[:1].assign(exam_id="ghost-exam")
        return pd.concat([t, extra], ignore_index=True)

    _edit(dataset, REPORTS_FILE, add)
    r = validate(dataset, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "every report's exam is in the manifest")
    assert f.examples == ["exam_id=ghost-exam: exam_in_manifest=False"]


def test_exam_in_two_patients(dataset: Path, tmp_path: Path) -> None:
    def steal(m: pd.DataFrame) -> None:
        m.loc[m.index[(m["exam_id"] == "p2e0").to_numpy()][0], "patient_id"] = "p2b"

    _edit(dataset, MANIFEST_FILE, steal)
    r = validate(dataset, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "each exam belongs to one patient")
    assert f.examples == ["exam_id=p2e0: patient_id=p2, p2b"]


def test_labeled_image_without_label(dataset: Path, tmp_path: Path) -> None:
    def clear(m: pd.DataFrame) -> None:
        row = m.index[(m["split"] == "train").to_numpy()][0]
        m.loc[row, [f"label_{c}" for c in CLASSES]] = 0

    _edit(dataset, MANIFEST_FILE, clear)
    r = validate(dataset, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "every labeled image has at least one label")
    assert f.examples == ["image=images/p1/e0/0.png: n_labels=0"]
    assert [x.name for x in r.failures] == ["every labeled image has at least one label"]


def test_wrong_types_and_values(dataset: Path, tmp_path: Path) -> None:
    def spoil(m: pd.DataFrame) -> pd.DataFrame:
        m = m.astype({"label_liver": "float64"})
        m.loc[m.index[(m["split"] == "train").to_numpy()][0], "label_liver"] = 0.5
        m["patient_id"] = m["patient_id"].str.slice(1).astype("int64")
        m.loc[0, "split"] = "holdout"
        m.loc[1, "exam_id"] = "  "
        return m

    _edit(dataset, MANIFEST_FILE, spoil)
    r = validate(dataset, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "columns have the contract's types")
    assert [e.split(",")[1] for e in f.examples] == [" column=patient_id"]
    assert _failure(r, "label_liver is 0 or 1 on labeled rows").examples == [
        "image=images/p1/e0/0.png: label_liver=0.5"
    ]
    assert _failure(r, "split is one of unlabeled, train, val, test").unexpected_count == 1
    empty = _failure(r, "exam_id is never empty")
    assert empty.examples == ["image=images/p0/e0/1.png: exam_id=  "]


def test_boxes_of_a_detection_dataset(pristine: Path, tmp_path: Path) -> None:
    manifest = read_table(pristine / MANIFEST_FILE).drop(columns=[f"label_{c}" for c in CLASSES])
    boxes = pd.DataFrame(
        {
            "image": ["images/p1/e0/0.png", "images/p1/e0/1.png", "images/nowhere.png"],
            "reader_id": ["r1", "r2", "r1"],
            "label": ["cyst", "cyst", "cyst"],
            "x1": [1.0, 10.0, 1.0],
            "y1": [1.0, 1.0, 1.0],
            "x2": [5.0, 4.0, 5.0],
            "y2": [5.0, 5.0, 5.0],
        }
    )
    info = DatasetInfo(name="det", task="detection", classes=["cyst"], modality="US", image_size=32)
    write_dataset(tmp_path / "det", info, manifest, boxes=boxes)
    r = validate(tmp_path / "det", tmp_path / "out", TABLES_ONLY)
    assert r.counts["boxes_rows"] == 3
    assert _failure(r, "boxes have x2 > x1").examples == [
        "image=images/p1/e0/1.png, reader_id=r2: x1=10.0, x2=4.0"
    ]
    assert _failure(r, "every box's image is in the manifest").unexpected_count == 1
    assert len(r.failures) == 2, summary(r)


# ------------------------------------------------------------------- a detection dataset's boxes


@pytest.fixture(scope="module")
def chest_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic chest X-ray detection archive (read-only: copy it to break it)."""
    out = tmp_path_factory.mktemp("chest") / "chest-xray"
    synth(out, DataConfig(kind="chest-xray", size="tiny", workers=1), SplitConfig(), False)
    return out


def test_synthetic_chest_xray_passes(chest_tiny: Path, tmp_path: Path) -> None:
    r = validate(chest_tiny, tmp_path / "out", WITH_IMAGES, progress=False)
    assert r.success, summary(r)
    assert r.counts["boxes_rows"] > 40 and r.counts["images_checked"] == 120
    names = {e["name"] for e in json.loads(r.report_path.read_text())["expectations"]}
    assert {
        "a detection dataset has boxes.parquet",
        "box labels are classes of dataset.yaml",
        "box x2 lies in the image: 0 <= x2 <= 64 (images square at image_size)",
        "every box's image is in the manifest",
        "boxes have y2 > y1",
    } <= names


def test_bad_boxes_fail_by_name(chest_tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "chest"
    shutil.copytree(chest_tiny, root)

    def spoil(b: pd.DataFrame) -> None:
        b.loc[0, "x2"] = 70.5  # outside the 64-px image
        b.loc[1, "label"] = "pneumothorax"  # not a class of dataset.yaml
        b.loc[2, "image"] = "images/ghost.png"  # not in the manifest
        b.loc[3, "x2"] = b.loc[3, "x1"]  # an empty box
        b.loc[4, "y1"] = -2.0  # above the image

    boxes = read_table(root / BOXES_FILE)
    ids = [
        f"image={boxes.loc[k, 'image']}, reader_id={boxes.loc[k, 'reader_id']}" for k in range(5)
    ]
    _edit(root, BOXES_FILE, spoil)
    r = validate(root, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "box x2 lies in the image: 0 <= x2 <= 64 (images square at image_size)")
    assert f.examples == [f"{ids[0]}: x2=70.5"]
    f = _failure(r, "box labels are classes of dataset.yaml")
    assert f.examples == [f"{ids[1]}: label=pneumothorax"]
    f = _failure(r, "every box's image is in the manifest")
    assert f.examples == [
        f"image=images/ghost.png, {ids[2].split(', ')[1]}: image_in_manifest=False"
    ]
    x1 = boxes.loc[3, "x1"]
    assert _failure(r, "boxes have x2 > x1").examples == [f"{ids[3]}: x1={x1}, x2={x1}"]
    f = _failure(r, "box y1 lies in the image: 0 <= y1 <= 64 (images square at image_size)")
    assert f.examples == [f"{ids[4]}: y1=-2.0"]
    assert len(r.failures) == 5, summary(r)
    assert f"  x {f.line()}" in summary(r) and f.unexpected_count == 1


def test_detection_dataset_without_boxes(chest_tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "chest"
    shutil.copytree(chest_tiny, root)
    (root / BOXES_FILE).unlink()
    r = validate(root, tmp_path / "out", TABLES_ONLY)
    f = _failure(r, "a detection dataset has boxes.parquet")
    assert f.examples == ["table=boxes.parquet: present=False"]
    assert [x.name for x in r.failures] == ["a detection dataset has boxes.parquet"]


# ------------------------------------------------------------------------------ not a dataset


def test_not_a_dataset_raises_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match="not a dataset folder"):
        validate(tmp_path, tmp_path / "out", TABLES_ONLY)


def test_unreadable_manifest_raises(dataset: Path, tmp_path: Path) -> None:
    (dataset / MANIFEST_FILE).write_text("this is not parquet\n")
    with pytest.raises(DataContractError, match="not a readable parquet file") as err:
        validate(dataset, tmp_path / "out", TABLES_ONLY)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ GX really fails on defects


def test_gx_checkpoint_fails_on_a_defect() -> None:
    """Every expectation reaches GX and a defect fails the checkpoint itself (none dropped)."""
    info = DatasetInfo(name="x", task="multilabel", classes=["a"], modality="US", image_size=8)
    manifest = pd.DataFrame(
        {
            "image": ["a.png", "b.png"],
            "patient_id": ["p1", "p1"],
            "exam_id": ["e1", "e2"],
            "lesion_id": pd.array([None, None], dtype="str"),
            "split": ["train", "test"],
            "label_a": pd.array([1, 1], dtype="Int8"),
        }
    )
    views, unavailable = suites.build_views(info, manifest)
    checks = suites.build_checks(info)
    run = suites.run_checks(views, checks, unavailable=unavailable, docs_dir=None)
    assert run.checkpoint_success["patient_splits"] is False
    assert all(v for k, v in run.checkpoint_success.items() if k != "patient_splits")
    assert all(o.success is not None for o in run.outcomes)  # every check ran
    assert [o.name for o in run.outcomes if o.failed] == ["splits are patient-disjoint"]
    assert not run.success


# ------------------------------------------------------------------------------- image checks


def test_image_checks_in_a_process_pool(pristine: Path, tmp_path: Path) -> None:
    shutil.copytree(pristine / "images", tmp_path / "images")
    Image.new("L", (4, 4)).save(tmp_path / "images/tiny.png")  # decodes, implausibly small
    (tmp_path / "images/empty.png").write_bytes(b"")
    images = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("images/**/*.png"))
    images += ["images/none.png", "../outside.png", None]
    limits = image_checks.Limits(min_side=16, max_side=64, min_bytes=1)
    table = image_checks.check_images(
        tmp_path, images, limits, workers=2, chunk_size=4, parallel_from=8, progress=False
    )
    got = dict(zip(table["image"], table["check"], strict=True))
    assert got == {
        "../outside.png": "exists",
        "images/empty.png": "size_ok",
        "images/none.png": "exists",
        "images/tiny.png": "size_ok",
    }
    assert list(table.columns) == ["image", "check", "reason"]
