"""Benchmark: table validation (great-expectations suites, no image files) of a large manifest.

Builds a synthetic valid dataset (default 1,000,000 images: 4 images per exam, 2 exams per
patient, 7 multilabel classes, 94.6 % unlabeled patients as in paper 000) plus one report per
exam in a temp dir, times `medssl.stages.validate.validate` with image checks disabled, times a
plain-pandas implementation of the same checks in the same run, and prints one JSON object:

    python benchmarks/validate_tables.py [--rows N] [--keep DIR]

"seconds" is the wall time of the validate call (reading the parquet files, building the views,
the GX checkpoints, data docs and report.json); the one-time import of great-expectations is
reported apart as "gx_import_seconds". The target is 30 s for 1M rows on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.config import ValidateConfig
from medssl.data.contract import (
    LABELED_SPLITS,
    MANIFEST_FILE,
    MANIFEST_ID_COLUMNS,
    REPORT_COLUMNS,
    REPORTS_FILE,
    SPLITS,
    DatasetInfo,
    read_info,
    read_table,
    write_dataset,
)
from medssl.validation.suites import NOT_RELATIVE, isin

CLASSES = ["liver", "gallbladder", "other", "kidney", "pancreas", "spleen", "bladder"]
TARGET_SECONDS = 30.0


def make_dataset(root: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    image = np.arange(rows)
    exam = image // 4
    patient = exam // 2
    n_patients = int(patient[-1]) + 1 if rows else 0
    patient_split = rng.choice(
        np.array(SPLITS), size=n_patients, p=[0.946, 0.030, 0.010, 0.014]
    ).astype(object)
    split = patient_split[patient]
    pid = pd.Series(patient).map("p{:07d}".format)
    eid = pd.Series(exam).map("e{:08d}".format)
    manifest = pd.DataFrame(
        {
            "image": "images/" + pid + "/" + eid + "/" + pd.Series(image).map("{:09d}.png".format),
            "patient_id": pid,
            "exam_id": eid,
            "lesion_id": None,
            "split": split,
        }
    )
    labeled = manifest["split"].ne("unlabeled").to_numpy()
    first = rng.integers(0, len(CLASSES), rows)
    for k, c in enumerate(CLASSES):
        values = pd.array((rng.random(rows) < 0.2) | (first == k), dtype="Int8")
        values[~labeled] = pd.NA
        manifest[f"label_{c}"] = values
    exams = manifest["exam_id"].drop_duplicates()
    reports = pd.DataFrame(
        {
            "exam_id": exams.to_numpy(),
            "title": "echographie abdominale",
            "text": "foie de taille normale, vesicule alithiasique",
            "language": "fr",
        }
    )
    info = DatasetInfo(
        name="bench", task="multilabel", classes=CLASSES, modality="US", image_size=256
    )
    write_dataset(root, info, manifest, reports)


def pandas_baseline(root: Path) -> dict[str, int]:
    """The same checks as the GX suites in plain pandas: number of offending rows per check."""
    info = read_info(root)
    m = read_table(root / MANIFEST_FILE)
    r = read_table(root / REPORTS_FILE)
    labels = info.label_columns()
    bad: dict[str, int] = {}
    for c in [*MANIFEST_ID_COLUMNS, *labels]:
        bad[f"has {c}"] = int(c not in m.columns)
    bad["not empty"] = int(len(m) == 0)
    for c in ("image", "patient_id", "exam_id"):
        bad[f"{c} not null"] = int(m[c].isna().sum())
        bad[f"{c} not empty"] = int((~m[c].dropna().astype(str).str.contains(r"\S")).sum())
    bad["split not null"] = int(m["split"].isna().sum())
    bad["split values"] = int((~m["split"].dropna().isin(SPLITS)).sum())
    bad["unique images"] = int(m["image"].duplicated(keep=False).sum())
    bad["relative images"] = int(m["image"].astype(str).str.contains(NOT_RELATIVE).sum())
    string_ok = [isinstance(m[c].dtype, pd.StringDtype) for c in MANIFEST_ID_COLUMNS]
    numeric_ok = [pd.api.types.is_numeric_dtype(m[c].dtype) for c in labels]
    string_ok += [isinstance(r[c].dtype, pd.StringDtype) for c in REPORT_COLUMNS]
    bad["types"] = string_ok.count(False) + numeric_ok.count(False)
    lab = m[m["split"].isin(LABELED_SPLITS)]
    unl = m[m["split"].eq("unlabeled")]
    for c in labels:
        bad[f"{c} set"] = int(lab[c].isna().sum())
        bad[f"{c} 0/1"] = int((~lab[c].dropna().isin([0, 1])).sum())
        bad[f"{c} empty"] = int(unl[c].notna().sum())
    n_labels = lab[labels].eq(1).sum(axis=1)
    bad["n_labels"] = int(((n_labels < 1) | (n_labels > len(labels))).sum())
    exam_patients = m[["exam_id", "patient_id"]].drop_duplicates()
    bad["exam one patient"] = int(exam_patients["exam_id"].duplicated(keep=False).sum())
    patient_splits = m[["patient_id", "split"]].drop_duplicates()
    bad["patient-disjoint"] = int(patient_splits["patient_id"].duplicated(keep=False).sum())
    for c in REPORT_COLUMNS:
        bad[f"reports has {c}"] = int(c not in r.columns)
    bad["report exam not null"] = int(r["exam_id"].isna().sum())
    bad["report exam in manifest"] = int((~isin(r["exam_id"], m["exam_id"])).sum())
    bad["one report per exam"] = int(r["exam_id"].duplicated(keep=False).sum())
    bad["text"] = int(r["text"].isna().sum())
    bad["language"] = int(r["language"].isna().sum())
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="manifest rows (images)")
    parser.add_argument("--keep", type=Path, default=None, help="build the dataset here, keep it")
    args = parser.parse_args(argv)

    t = time.perf_counter()
    import great_expectations  # noqa: F401  (one-time cost, reported apart)

    from medssl.stages.validate import validate

    gx_import = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="medssl-bench-") as tmp:
        root = args.keep or Path(tmp) / "dataset"
        t = time.perf_counter()
        make_dataset(root, args.rows)
        build = time.perf_counter() - t

        t = time.perf_counter()
        result = validate(root, Path(tmp) / "out", ValidateConfig(check_images=False))
        seconds = time.perf_counter() - t

        t = time.perf_counter()
        baseline = pandas_baseline(root)
        baseline_seconds = time.perf_counter() - t
        report = json.loads(result.report_path.read_text())

    if not result.success or any(baseline.values()):
        print(f"synthetic dataset did not validate: {result.failed_names}", file=sys.stderr)
        return 1
    timings = report["timings_seconds"]
    out = {
        "rows": args.rows,
        "seconds": round(seconds, 2),
        "target_seconds": TARGET_SECONDS,
        "baseline_seconds": round(baseline_seconds, 2),
        "ratio": round(seconds / baseline_seconds, 2) if baseline_seconds else None,
        "passed_target": seconds <= TARGET_SECONDS,
        "expectations": result.n_expectations,
        "gx_import_seconds": round(gx_import, 2),
        "build_dataset_seconds": round(build, 2),
        "timings": {k: v for k, v in timings.items() if not re.match(r"gx_(?!total|import)", k)},
        "gx_views": {k[3:]: v for k, v in timings.items() if re.match(r"gx_(?!total|import)", k)},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0 if out["passed_target"] else 2


if __name__ == "__main__":
    raise SystemExit(main())
