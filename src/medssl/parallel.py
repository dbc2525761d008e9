"""Run chunked work in worker processes with a progress bar (image decoding, image checks)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

from tqdm import tqdm


def resolve_workers(workers: int) -> int:
    """0 means every core."""
    return workers if workers > 0 else (os.cpu_count() or 1)


def map_chunks(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    sizes: Sequence[int],
    *,
    workers: int,
    desc: str,
    parallel: bool = True,
    progress: bool | None = None,
    unit: str = "img",
) -> list[Any]:
    """`fn(*job)` for every job, results in job order; the bar advances by `sizes[i]` per job.

    Runs in this process when `parallel` is false or one worker would do; otherwise in spawned
    processes (never fork a parent that holds threads, e.g. pyarrow's). `progress` None shows the
    bar only on a terminal.
    """
    n_workers = min(resolve_workers(workers), len(jobs))
    results: list[Any] = [None] * len(jobs)
    bar = tqdm(
        total=sum(sizes),
        unit=unit,
        desc=desc,
        disable=None if progress is None else not progress,
        leave=False,
    )
    with bar:
        if not parallel or n_workers <= 1:
            for i, job in enumerate(jobs):
                results[i] = fn(*job)
                bar.update(sizes[i])
        else:
            with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    bar.update(sizes[i])
    return results
