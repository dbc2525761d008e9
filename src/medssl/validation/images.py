"""Image-file checks: every manifest image exists, decodes fully and has a plausible size.

Files are checked in chunks by a pool of processes (spawned, so that a parent holding threads —
pyarrow, great-expectations — is never forked); small jobs run in the calling process.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from medssl.parallel import map_chunks

# Failure categories: the column of the `image_files` view each one turns False.
EXISTS, DECODES, SIZE = "exists", "decodes", "size_ok"
FAILURE_COLUMNS = ["image", "check", "reason"]


@dataclass(frozen=True)
class Limits:
    """What a plausible image file is (from `ValidateConfig`)."""

    min_side: int = 16
    max_side: int = 8192
    min_bytes: int = 64

    @classmethod
    def from_config(cls, cfg: object) -> Limits:
        return cls(
            min_side=cfg.min_image_side,  # type: ignore[attr-defined]
            max_side=cfg.max_image_side,  # type: ignore[attr-defined]
            min_bytes=cfg.min_file_bytes,  # type: ignore[attr-defined]
        )


def check_image(root: Path, relative: str, limits: Limits) -> tuple[str, str] | None:
    """(category, reason) of the first problem of one image file, or None when it is fine."""
    from PIL import Image

    rel = PurePosixPath(relative.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        return EXISTS, "path is not inside the dataset folder"
    path = root / rel
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return EXISTS, "file not found"
    except OSError as exc:
        return EXISTS, f"cannot stat ({exc.__class__.__name__})"
    if not path.is_file():
        return EXISTS, "not a regular file"
    if size < limits.min_bytes:
        return SIZE, f"file has {size} bytes (< {limits.min_bytes})"
    try:
        with Image.open(path) as im:
            w, h = im.size
            if min(w, h) < limits.min_side or max(w, h) > limits.max_side:
                bounds = f"[{limits.min_side}, {limits.max_side}]"
                return SIZE, f"{w}x{h} px, a side outside {bounds}"
            im.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, bomb errors …
        msg = str(exc).splitlines()[0][:160] if str(exc) else ""
        return DECODES, f"does not decode ({exc.__class__.__name__}{': ' + msg if msg else ''})"
    return None


def checked_paths(images: Iterable[object]) -> list[str]:
    """The manifest paths that are checked: strings, non-empty, each once (in manifest order)."""
    return list(dict.fromkeys(p for p in images if isinstance(p, str) and p))


def _check_chunk(root: str, images: list[str], limits: Limits) -> list[tuple[str, str, str]]:
    base = Path(root)
    out = []
    for rel in images:
        problem = check_image(base, rel, limits)
        if problem is not None:
            out.append((rel, *problem))
    return out


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def check_images(
    root: Path,
    images: Iterable[object],
    limits: Limits,
    *,
    workers: int = 0,
    chunk_size: int = 512,
    parallel_from: int = 2048,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Check image files under `root`; a table of failures with columns image, check, reason.

    `images` are manifest paths relative to `root` (null and non-string entries and repeats are
    skipped: the manifest suite reports them). `workers` 0 means all cores; fewer than
    `parallel_from` files are checked in this process (starting a spawned worker costs about a
    second). `progress` None shows a bar only on a terminal.
    """
    paths = checked_paths(images)
    chunks = list(_chunks(paths, chunk_size))
    results = map_chunks(
        _check_chunk,
        [(str(root), chunk, limits) for chunk in chunks],
        [len(chunk) for chunk in chunks],
        workers=workers,
        desc="checking images",
        parallel=len(paths) >= parallel_from,
        progress=progress,
    )
    failures = [failure for result in results for failure in result]
    table = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    return table.sort_values("image", kind="stable").reset_index(drop=True)


def image_files_view(images: Iterable[object], failures: pd.DataFrame) -> pd.DataFrame:
    """One row per checked image: exists / decodes / size_ok (null when not reached) + reason."""
    paths = pd.Series(checked_paths(images), dtype="str")
    view = pd.DataFrame({"image": paths})
    n = len(view)
    for col in (EXISTS, DECODES, SIZE):
        view[col] = pd.array([True] * n, dtype="boolean")
    view["reason"] = pd.Series([None] * n, dtype="str")
    if len(failures):
        pos = pd.Index(paths).get_indexer(failures["image"])
        ok = pos >= 0
        pos, fails = pos[ok], failures[ok]
        view.loc[pos, "reason"] = fails["reason"].to_numpy()
        cat = fails["check"].to_numpy()
        # what was not reached stays null: a missing file was not decoded, a file that does not
        # decode was not measured, a file of implausible size was not decoded
        view.loc[pos[cat == EXISTS], [EXISTS]] = False
        view.loc[pos[cat == EXISTS], [DECODES, SIZE]] = pd.NA
        view.loc[pos[cat == DECODES], DECODES] = False
        view.loc[pos[cat == DECODES], SIZE] = pd.NA
        view.loc[pos[cat == SIZE], DECODES] = pd.NA
        view.loc[pos[cat == SIZE], SIZE] = False
    return view
