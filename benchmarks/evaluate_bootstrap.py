"""Benchmark: the exam-level bootstrap CI of the weighted F1 at paper 000's test-set size.

1,242 test images of ~100 exams, 7 classes (paper 000 §3.1), 1,000 resamples: times
`medssl.metrics.bootstrap.bootstrap_weighted_f1` (vectorised: one matrix product per chunk of
resamples) against the plain loop of the same statistic (draw exams with replacement, gather their
images, scikit-learn's weighted F1) measured in the same run on a subset of the resamples, and
prints one JSON object:

    python benchmarks/evaluate_bootstrap.py [--images 1242] [--exams 101] [--resamples 1000]

Target: under 0.5 s for 1,000 resamples on a 2-core machine (the evaluate stage runs it on every
model; the plain loop takes tens of seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from sklearn.metrics import f1_score

from medssl.metrics.bootstrap import bootstrap_weighted_f1


def plain_loop(y: np.ndarray, pred: np.ndarray, exams: np.ndarray, n: int, seed: int) -> float:
    """Seconds per resample of the textbook implementation."""
    rng = np.random.default_rng(seed)
    ids = np.unique(exams)
    rows = {e: np.flatnonzero(exams == e) for e in ids}
    start = time.perf_counter()
    for _ in range(n):
        drawn = rng.choice(ids, size=len(ids), replace=True)
        idx = np.concatenate([rows[e] for e in drawn])
        f1_score(y[idx], pred[idx], average="weighted", zero_division=0)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1242)
    parser.add_argument("--exams", type=int, default=101)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--baseline-resamples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    y = rng.random((args.images, args.classes)) < 0.3
    pred = np.where(rng.random(y.shape) < 0.8, y, ~y)
    exams = np.sort(rng.integers(0, args.exams, args.images))
    bootstrap_weighted_f1(y, pred, exams, 10, 0.95, 0)  # warm-up
    times = []
    for r in range(args.repeats):
        start = time.perf_counter()
        ci = bootstrap_weighted_f1(y, pred, exams, args.resamples, 0.95, r)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    per_resample_plain = plain_loop(y, pred, exams, args.baseline_resamples, 0)
    plain = per_resample_plain * args.resamples
    print(
        json.dumps(
            {
                "benchmark": "evaluate_bootstrap",
                "images": args.images,
                "exams": args.exams,
                "classes": args.classes,
                "resamples": args.resamples,
                "seconds": round(seconds, 4),
                "plain_loop_seconds": round(plain, 2),
                "speedup_vs_plain_loop": round(plain / seconds, 1),
                "target_seconds": 0.5,
                "meets_target": seconds < 0.5,
                "ci": [round(ci.low, 4), round(ci.high, 4)],
                "machine": platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
