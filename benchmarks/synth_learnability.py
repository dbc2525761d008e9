"""Learnability of a synthetic archive: a linear probe on 16×16 downsampled pixels against a
baseline that ignores the pixels. Prints JSON.

* `--kind abdominal-us`: the label-prevalence baseline, both scored as paper 000 §3.2 does
  (per-class thresholds maximising validation F1, support-weighted test F1);
* `--kind cardiac-mr`: one category per image; the majority class, both scored by accuracy and
  macro F1, next to the accuracy of the `series_description` header.

    python benchmarks/synth_learnability.py --size small --seed 0
    python benchmarks/synth_learnability.py --kind cardiac-mr --size small --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time

from medssl.config import SYNTH_SIZES
from medssl.data.synth.learnability import category_probe, linear_probe


def _mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="abdominal-us", choices=list(SYNTH_SIZES))
    parser.add_argument(
        "--size",
        default="small",
        help="; ".join(f"{kind}: {', '.join(sizes)}" for kind, sizes in SYNTH_SIZES.items()),
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pixels", type=int, default=16)
    parser.add_argument(
        "--metadata-error", type=float, default=0.15, help="cardiac-mr: wrong-header share"
    )
    args = parser.parse_args()
    if args.size not in SYNTH_SIZES[args.kind]:
        parser.error(f"--size {args.size!r}: {args.kind} sizes are {SYNTH_SIZES[args.kind]}")
    start = time.perf_counter()
    summary: dict
    if args.kind == "cardiac-mr":
        runs = [
            category_probe(args.size, seed, args.pixels, args.metadata_error).as_dict()
            for seed in args.seeds
        ]
        summary = {
            key + "_mean": round(_mean(runs, key), 4)
            for key in (
                "probe_accuracy",
                "probe_macro_f1",
                "majority_accuracy",
                "majority_macro_f1",
                "header_accuracy",
            )
        }
    else:
        runs = [linear_probe(args.size, seed, args.pixels).as_dict() for seed in args.seeds]
        probe = _mean(runs, "probe_weighted_f1")
        prevalence = _mean(runs, "prevalence_weighted_f1")
        summary = {
            "probe_weighted_f1_mean": probe,
            "prevalence_weighted_f1_mean": prevalence,
            "ratio": probe / prevalence,
        }
    print(
        json.dumps(
            {
                "benchmark": "synth_learnability",
                "kind": args.kind,
                "size": args.size,
                "seeds": args.seeds,
                **summary,
                "seconds": round(time.perf_counter() - start, 1),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
