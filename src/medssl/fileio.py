"""Atomic writes of files and of whole output folders: write a temporary sibling, then rename it
into place (atomic_open also fsyncs). Readers (and a resumed run) see the previous complete
output or the new complete output, never a partial one; a full or read-only disk is one line
naming the output (medssl.errors.OutputError)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from medssl.errors import ConfigError, os_error

# errnos of a write that the environment refused (disk full, read-only, permissions)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


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
    """torch.save, atomically. torch's zip writer reports a full disk as a RuntimeError
    ("unexpected pos …"): it is raised as the OSError (ENOSPC) it is."""
    import torch

    with atomic_open(path, "wb") as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as exc:
            if shutil.disk_usage(Path(path).parent).free < FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
            raise


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


@contextmanager
def output_errors(what: Path | str) -> Iterator[None]:
    """Turn an OSError of a refused write (disk full, read-only file system, permission) into a
    one-line OutputError naming `what`, the output the user asked for (not a staging file)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise os_error(OSError(exc.errno, exc.strerror), str(what)) from exc
        raise


def partial_dir(out_dir: Path | str) -> Path:
    """The staging sibling of an output folder that outlives a failed run (train: its
    checkpoints, for --resume)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.partial"


@contextmanager
def staged_dir(out_dir: Path | str, *, staging: Path | None = None) -> Iterator[Path]:
    """Write an output folder completely or not at all: yields an empty staging sibling to
    write into; when the block ends without error the staging folder replaces `out_dir` (which
    is removed, with anything else it held). On an error or Ctrl-C a per-process staging folder
    is removed and `out_dir` keeps its previous complete content; an explicit `staging` folder
    (partial_dir) is kept for a later resume.

    A refused write (disk full, read-only) becomes a one-line OutputError."""
    out_dir = Path(out_dir)
    keep = staging is not None
    tmp = staging if staging is not None else out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    with output_errors(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out_dir)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            swap_in(tmp, out_dir)
        except BaseException:
            if not keep:
                shutil.rmtree(tmp, ignore_errors=True)
            raise


def remove_stale(out_dir: Path) -> None:
    """Remove the staging folders of writers of `out_dir` that died (killed: no cleanup ran):
    `.<name>.tmp-<pid>` / `.<name>.old-<pid>` of a process that no longer runs."""
    for path in out_dir.parent.glob(f".{out_dir.name}.*-*"):
        kind, _, pid = path.name.rpartition("-")
        if not kind.endswith((".tmp", ".old")) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(path)
        except PermissionError:  # another user's live process
            pass


def swap_in(new: Path, out_dir: Path) -> None:
    """Replace the folder `out_dir` with the folder `new` by renames (the old one is removed
    after); between the two renames a crash leaves no `out_dir`, never a partial one. Where the
    folder cannot be renamed (a mount point), its entries are replaced one by one."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        _remove(old)
        try:
            os.replace(out_dir, old)
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                raise
            _replace_entries(new, out_dir)
            return
    try:
        os.replace(new, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        _remove(old)


def _replace_entries(new: Path, out_dir: Path) -> None:
    for entry in list(out_dir.iterdir()):
        _remove(entry)
    for entry in list(new.iterdir()):
        os.replace(entry, out_dir / entry.name)
    _remove(new)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
