"""Atomic file writes: a temporary sibling, then os.replace (atomic_open also fsyncs). Readers
(and a resumed run) see the previous complete file or the new complete file, never a partial
one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from medssl.errors import ConfigError


@contextmanager
def _replacing(path: Path | str) -> Iterator[Path]:
    """A temporary sibling of `path` to write; on success it replaces `path`, on any failure
    (exception, KeyboardInterrupt) it is removed and `path` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; fsync'd, then it replaces `path`."""
    with _replacing(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    """torch.save, atomically."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write(path: Path | str, writer: Callable[[Path], None]) -> None:
    """Let `writer` write a temporary path (for libraries that want a file name, e.g. parquet,
    PNG), then move it into place. No fsync: it serves bulk writes such as one PNG per frame."""
    with _replacing(path) as tmp:
        writer(tmp)


def load_tagged_torch(path: Path | str, fmt: str, what: str) -> dict[str, Any]:
    """A dict saved with `{"format": fmt, …}`, loaded on CPU with weights_only; one-line
    ConfigError naming `what` when the file is missing, unreadable or of another format."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable {what} ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise ConfigError(f"{path}: not a {what} (no {fmt!r} header)")
    return obj
