"""Paper 003's pre-training split study without Ray: the cells of the tune presets
`pretrain-split-baseline` and `pretrain-split` (params.yaml) run in local worker processes through
the very function a tune trial runs (`medssl.stages.tune.run_chain`), then the study's report
(`medssl.stages.split_study.write_report`). For a machine that has a GPU but not the platform's
Ray/MLflow stack (the lent H200 of docs/results.md); `medssl study pretrain-split` is the way
everywhere else. Folders are the study's (OUT/data, OUT/baseline, OUT/sweep, trial folders,
results.csv), a finished cell is reused, so a killed run continues.

    python benchmarks/pretrain_split_study.py --size small --out OUT --seeds 2 --workers 8 \\
        -S train.max_epochs=8 -S train.device=cuda -S pretrain.device=cuda

`-S key=value` overrides apply to every cell after the preset (budget, device). Prints the
report; writes OUT/study.md, study.json, fig4.png and OUT/cells.json (every cell's numbers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medssl.config import DataConfig, SplitConfig, build_params, load_params  # noqa: E402
from medssl.stages.split_study import (  # noqa: E402
    BASELINE_DIR,
    BASELINE_PRESET,
    PRESET,
    split_dataset,
    write_report,
)
from medssl.stages.study import SWEEP_DIR  # noqa: E402
from medssl.stages.tune import RESULTS_FILE, TRIALS_DIR  # noqa: E402
from medssl.tuning import base_config, build_space, override_texts, trial_values  # noqa: E402

PAPER_SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}  # paper 003 §II.A


def cells(params, preset: str, seeds: int, overrides: list[str]) -> list[dict]:
    """Every grid point × seed of a preset: {key, chain, values, overrides}."""
    cfg = params.tune.with_preset(preset).with_updates({"seeds": seeds})
    dims = build_space(cfg.space, cfg.seeds)
    grids = [d.values if d.searched else (d.values[0],) for d in dims]
    out = []
    searched = {d.key for d in dims if d.searched and d.key != "seed"}
    for combo in itertools.product(*grids):
        config = {d.key: v for d, v in zip(dims, combo, strict=True)}
        values = trial_values(config, dims)
        name = "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in config.items() if k in searched)
        key = f"trial-{name}-seed{config.get('seed', 0)}".replace("/", "_").replace(",", "_")
        out.append({"key": key, "chain": cfg.chain, "config": config, "values": values,
                    "overrides": overrides})  # fmt: skip
    return out


def run_cell(base: dict, cell: dict, data: str, folder: str, threads: int) -> dict:
    """One cell through tune's run_chain (no Ray report, no tracking)."""
    import torch

    from medssl.stages.tune import run_chain
    from medssl.tracking.base import NullTracker

    torch.set_num_threads(threads)
    params = build_params(dict(base), [*override_texts(cell["values"]), *cell["overrides"]])
    tdir = Path(folder) / TRIALS_DIR / cell["key"]
    tdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    final = run_chain(cell["chain"], Path(data), tdir, params, NullTracker(), False, False)
    return {**cell, "final": final, "seconds": time.perf_counter() - started}


def write_results(folder: Path, results: list[dict]) -> None:
    """The sweep's results.csv as `medssl tune` writes it (what the study's report reads)."""
    rows = [{"trial": r["key"], "status": "completed", **r["config"]} for r in results]
    pd.DataFrame(rows).to_csv(folder / RESULTS_FILE, index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", help="chest-xray archive size (tiny|small|paper)")
    ap.add_argument("--dataset", type=Path, help="an existing detection dataset instead")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="cells at once")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads per cell (0: cores/workers)"
    )
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument(
        "-S", dest="overrides", action="append", default=[], help="key=value, all cells"
    )
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = load_params(args.params, required=True)
    # `-S tune.presets.…` changes the grids; the other overrides go to every cell
    grid = [o for o in args.overrides if o.startswith("tune.")]
    args.overrides = [o for o in args.overrides if not o.startswith("tune.")]
    params = build_params(params.dump(), grid) if grid else params
    dataset = args.dataset
    if dataset is None:
        from medssl.stages.synth import synth

        dataset = out / "archive"
        if not (dataset / "dataset.yaml").is_file():
            split = SplitConfig(fractions=PAPER_SPLITS)
            synth(dataset, DataConfig(kind="chest-xray", size=args.size), split, progress=False)
    data = split_dataset(Path(dataset), out / "data")
    base = base_config(params)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    plan = [(BASELINE_DIR, c) for c in cells(params, BASELINE_PRESET, args.seeds, args.overrides)]
    plan += [(SWEEP_DIR, c) for c in cells(params, PRESET, args.seeds, args.overrides)]
    # the image cache is built once, before the workers share it
    from medssl.data.cache import open_cache
    from medssl.data.contract import Dataset

    first = build_params(dict(base), [*override_texts(plan[0][1]["values"]), *args.overrides])
    open_cache(Dataset.open(data), first.train.cache_dir, progress=False)
    done: dict[str, list[dict]] = {BASELINE_DIR: [], SWEEP_DIR: []}
    started = time.perf_counter()
    # spawn: a forked worker must not inherit a CUDA context
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            pool.submit(run_cell, base, cell, str(data), str(out / folder), threads): folder
            for folder, cell in plan
        }
        for future in as_completed(futures):
            result = future.result()
            folder = futures[future]
            done[folder].append(result)
            write_results(out / folder, done[folder])  # a killed run still reports what finished
            m = result["final"]
            print(
                f"[{time.perf_counter() - started:6.0f}s] {result['key']}: test_map "
                f"{m.get('test_map', float('nan')):.4f} ({result['seconds']:.0f} s)",
                flush=True,
            )
    (out / "cells.json").write_text(json.dumps(done, indent=2, default=str) + "\n")
    report = write_report(out, min(200, params.evaluate.bootstrap))
    print(report.describe())
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
