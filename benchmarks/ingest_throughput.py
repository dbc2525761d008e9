"""Benchmark: `medssl ingest` throughput on uncompressed DICOM files, per core.

Writes N small uncompressed ultrasound files (Explicit VR Little Endian, RGB, 256 × 256 px;
10 instances per study) into a temp dir, then times

* `ingest` with one worker process (the per-core figure: walk, header pass, de-identification,
  Doppler check, top-band mask, PNG writing, manifest/state commits, report and flowchart);
* a plain baseline in the same run: ``dcmread`` + ``pixel_array`` + PNG write per file;
* `ingest` with every core (a fresh output folder).

and prints one JSON object (also written to benchmarks/results/ingest_throughput.json):

    python benchmarks/ingest_throughput.py [--files N] [--size PX] [--keep DIR]

The target is at least 50 uncompressed files/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medssl.config import IngestConfig
from medssl.parallel import resolve_workers
from medssl.stages.ingest import ingest

TARGET = 50.0
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def make_export(root: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    study = ""
    for i in range(n):
        if i % 10 == 0:
            study, patient = generate_uid(), f"PAT{i // 10:06d}"
            (root / f"{i // 10:05d}").mkdir(exist_ok=True)
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = US_IMAGE_STORAGE, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study[:60] + ".1"
        ds.PatientID, ds.PatientName = patient, f"DOE^{patient}"
        ds.StudyDate, ds.Modality, ds.StudyDescription = "20240102", "US", "ECHO ABDOMINALE"
        ds.SeriesNumber, ds.InstanceNumber = 1, i % 10 + 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        grey = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
        ds.PixelData = np.repeat(grey, 3, axis=2).tobytes()
        ds.save_as(root / f"{i // 10:05d}" / f"IM{i:06d}.dcm", enforce_file_format=True)


def baseline(root: Path, out: Path) -> int:
    n = 0
    for path in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        target = out / f"{n:06d}.png"
        Image.fromarray(ds.pixel_array).save(target, format="PNG", compress_level=1)
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--keep", type=Path, default=None, help="keep the export here")
    args = parser.parse_args()
    os.environ.setdefault("MEDSSL_INGEST_SALT", secrets.token_hex(16))
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="medssl-ingest-bench-"))
    export = tmp / "export"
    if not export.exists():
        make_export(export, args.files, args.size)
    cfg = IngestConfig(scope_keywords=[], workers=1)
    try:
        shutil.rmtree(tmp / "one", ignore_errors=True)
        t0 = time.perf_counter()
        one = ingest(export, tmp / "one", cfg, progress=False)
        t_one = time.perf_counter() - t0
        base_out = tmp / "baseline"
        shutil.rmtree(base_out, ignore_errors=True)
        base_out.mkdir()
        t0 = time.perf_counter()
        n_base = baseline(export, base_out)
        t_base = time.perf_counter() - t0
        workers = resolve_workers(0)
        shutil.rmtree(tmp / "all", ignore_errors=True)
        t0 = time.perf_counter()
        ingest(export, tmp / "all", cfg.model_copy(update={"workers": 0}), progress=False)
        t_all = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = ingest(export, tmp / "one", cfg, progress=False)
        t_again = time.perf_counter() - t0
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    files = one.this_run["files_read"]  # a kept export may hold another number than --files
    per_core = files / t_one
    result = {
        "benchmark": "ingest_throughput",
        "files": files,
        "image": f"{args.size}x{args.size} RGB uint8, Explicit VR Little Endian",
        "images_written": one.counts["dataset"]["images"],
        "ingest_seconds_1_worker": round(t_one, 3),
        "ingest_files_per_s_per_core": round(per_core, 1),
        "baseline_files_per_s": round(n_base / t_base, 1),
        "ratio_to_baseline": round(per_core / (n_base / t_base), 3),
        "workers": workers,
        "ingest_files_per_s_all_cores": round(files / t_all, 1),
        "rerun_seconds": round(t_again, 3),
        "rerun_images_added": again.this_run["images_added"],
        "target_files_per_s_per_core": TARGET,
        "meets_target": per_core >= TARGET,
        "cpu_count": os.cpu_count(),
    }
    text = json.dumps(result, indent=2)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "ingest_throughput.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
