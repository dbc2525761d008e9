"""Benchmark: the cost of ingest's commits as the dataset grows (docs/ingest.md).

A 100,000-file export (default) committed in batches of `ingest.commit_every` = 2,000 files, each
file one instance of 4 frames: 50 commits and 400,000 manifest rows. Times, in the same run,

* medssl: `medssl.stages.ingest.Parts.commit` per batch (the batch's manifest rows and file
  records appended as parts), then the one consolidation at the end of the run;
* the baseline: rewriting the whole manifest and file state at every commit (what ingest did
  before the parts; the same tables, the same parquet writer),

and prints one JSON object: the first and last commit's seconds of each, their growth (last /
first) and the totals. Flat means the last commit costs about what the first did:

    python benchmarks/ingest_commits.py [--files 100000] [--commit-every 2000] [--frames 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.config import IngestConfig
from medssl.data.contract import MANIFEST_FILE, coerce, manifest_dtypes, write_table
from medssl.stages.ingest import (
    ATTRIBUTE_DTYPES,
    INGESTED,
    STATE_COLUMNS,
    STATE_DIR,
    STATE_FILE,
    Parts,
    _consolidate,
    _info,
    _state_table,
)


def records(start: int, n: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        rec = {c: None for c in STATE_COLUMNS}
        rec.update(
            file_key=f"k{i:09d}", size=123456, mtime_ns=i, status=INGESTED, reason=None,
            instance_id=f"i{i:09d}", exam_id=f"e{i // 20:08d}", patient_id=f"p{i // 60:08d}",
            patient_id_source="PatientID", series_id=f"s{i // 10:08d}", series_number=1,
            instance_number=i % 10, modality="US", n_frames=4, lossy=False,
            transfer_syntax="1.2.840.10008.1.2.1", title_present=True, title_match="abdomen",
            exam_date="2020-01-01", accession_key=None, n_frames_sampled=4, n_doppler=0,
            images=4, tokens=["token"],
        )  # fmt: skip
        out.append(rec)
    return out


def manifest_rows(recs: list[dict], frames: int, dtypes: dict[str, str]) -> pd.DataFrame:
    n = len(recs) * frames
    rep = np.repeat(np.arange(len(recs)), frames)
    frame = np.tile(np.arange(frames), len(recs))
    key = np.array([r["instance_id"] for r in recs])[rep]
    table = pd.DataFrame(
        {
            "image": [f"images/{k}_{f:04d}.png" for k, f in zip(key, frame, strict=True)],
            "patient_id": np.array([r["patient_id"] for r in recs])[rep],
            "exam_id": np.array([r["exam_id"] for r in recs])[rep],
            "lesion_id": None,
            "split": "unlabeled",
            "instance_id": key,
            "series_id": np.array([r["series_id"] for r in recs])[rep],
            "series_number": 1,
            "instance_number": 1,
            "frame": frame,
            "frames_in_file": frames,
            "modality": "US",
            "exam_date": "2020-01-01",
            "doppler": False,
            "colour_fraction": np.zeros(n, dtype=np.float32),
            "masked_rows": 40,
            "height": 400,
            "width": 600,
            "channels": 1,
            "bit_depth": 8,
            "transfer_syntax": "1.2.840.10008.1.2.1",
            "patient_id_source": "PatientID",
            "scope_match": "abdomen",
        }
    )
    return coerce(table, dtypes, MANIFEST_FILE)[list(dtypes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--commit-every", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    cfg = IngestConfig()
    dtypes = {**manifest_dtypes(_info(cfg, pd.DataFrame())), **ATTRIBUTE_DTYPES}
    batches = range(0, args.files, args.commit_every)

    with tempfile.TemporaryDirectory(prefix="medssl-bench-commits-") as tmp:
        new_out, old_out = Path(tmp) / "parts", Path(tmp) / "rewrite"
        (old_out / STATE_DIR).mkdir(parents=True)
        parts = Parts(new_out)
        new_times, old_times = [], []
        frames: list[pd.DataFrame] = []
        all_records: dict[str, dict] = {}
        for start in batches:
            recs = records(start, min(args.commit_every, args.files - start))
            rows = manifest_rows(recs, args.frames, dtypes)
            t = time.perf_counter()
            parts.commit(rows, recs)
            new_times.append(time.perf_counter() - t)
            frames.append(rows)
            all_records.update({r["file_key"]: r for r in recs})
            # the baseline: every commit rewrites everything so far
            t = time.perf_counter()
            manifest = pd.concat(frames, ignore_index=True)
            write_table(manifest, old_out / MANIFEST_FILE)
            write_table(_state_table(all_records), old_out / STATE_DIR / STATE_FILE)
            old_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        _consolidate(new_out, cfg, pd.concat(frames, ignore_index=True), None, all_records)
        consolidate = time.perf_counter() - t
        assert len(pd.read_parquet(new_out / MANIFEST_FILE)) == args.files * args.frames

    def edge(times: list[float]) -> dict[str, float]:
        first, last = float(np.mean(times[:3])), float(np.mean(times[-3:]))
        return {
            "first_commit_s": round(first, 4),
            "last_commit_s": round(last, 4),
            "growth_last_over_first": round(last / first, 2),
            "total_commits_s": round(float(np.sum(times)), 2),
        }

    medssl = edge(new_times)
    baseline = edge(old_times)
    print(
        json.dumps(
            {
                "benchmark": "ingest_commits",
                "files": args.files,
                "commits": len(new_times),
                "manifest_rows": args.files * args.frames,
                "medssl_parts": {**medssl, "final_consolidation_s": round(consolidate, 2)},
                "baseline_rewrite_every_commit": baseline,
                "total_ratio_medssl_over_baseline": round(
                    (medssl["total_commits_s"] + consolidate) / baseline["total_commits_s"], 3
                ),
                "target": "growth_last_over_first <= 1.5 for medssl",
                "meets_target": medssl["growth_last_over_first"] <= 1.5,
                "machine": platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
