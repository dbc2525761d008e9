"""Resumable checkpoints: one file (`last.pt`) written atomically, loadable with weights_only=True
(tensors and plain data only, numpy RNG state included as a tensor)."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.fileio import atomic_torch_save, load_tagged_torch

CHECKPOINT_FORMAT = "medssl-checkpoint"
CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every global RNG: torch (CPU and, when initialised, CUDA), numpy, python."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    cuda = (
        torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else []
    )
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return load_tagged_torch(path, CHECKPOINT_FORMAT, "medssl checkpoint")


def to_cpu(obj: Any) -> Any:
    """A deep copy of nested dicts / lists / tuples with every tensor copied to the CPU: a
    snapshot the training step can no longer change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints in a background thread so the disk never stalls training: `submit`
    takes a CPU snapshot (see `to_cpu`), at most one write is in flight, and a failed write
    re-raises at the next `submit` or `wait`. Each write is atomic, so a kill at any moment leaves
    the previous complete checkpoint."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: Path, snapshot: dict[str, Any]) -> None:
        self.wait()
        self._thread = threading.Thread(
            target=self._write, args=(path, snapshot), name="medssl-checkpoint", daemon=True
        )
        self._thread.start()

    def _write(self, path: Path, snapshot: dict[str, Any]) -> None:
        try:
            save_checkpoint(path, snapshot)
        except BaseException as exc:  # re-raised in the training thread
            self._error = exc

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
