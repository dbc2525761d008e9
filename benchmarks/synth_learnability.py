"""Learnability of the synthetic archive: a linear probe on 16×16 downsampled pixels against the
label-prevalence baseline, both scored as paper 000 §3.2 does (per-class thresholds maximising
validation F1, support-weighted test F1). Prints JSON.

    python benchmarks/synth_learnability.py --size small --seed 0
"""

from __future__ import annotations

import argparse
import json
import time

from medssl.data.synth.learnability import linear_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "paper"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pixels", type=int, default=16)
    args = parser.parse_args()
    start = time.perf_counter()
    runs = [linear_probe(args.size, seed, args.pixels).as_dict() for seed in args.seeds]
    probe = [r["probe_weighted_f1"] for r in runs]
    prevalence = [r["prevalence_weighted_f1"] for r in runs]
    print(
        json.dumps(
            {
                "benchmark": "synth_learnability",
                "size": args.size,
                "seeds": args.seeds,
                "probe_weighted_f1_mean": sum(probe) / len(probe),
                "prevalence_weighted_f1_mean": sum(prevalence) / len(prevalence),
                "ratio": (sum(probe) / sum(prevalence)),
                "seconds": round(time.perf_counter() - start, 1),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
