"""Find the files of a DICOM export: every regular file under the root, recursively.

A DICOMDIR (the media directory of a CD/DVD export) is not an image: it is skipped, and the
instances it points to are found by the walk anyway. Hidden files and folders (``.DS_Store``,
``.thumbs``) are skipped and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medssl.errors import DataContractError

DICOMDIR = "DICOMDIR"


@dataclass
class Walk:
    files: list[str] = field(default_factory=list)  # POSIX paths relative to the root, sorted
    hidden: int = 0
    dicomdir: int = 0


def walk(root: Path | str) -> Walk:
    """Every candidate file under `root` (symlinked folders are not followed)."""
    root = Path(root)
    if not root.is_dir():
        raise DataContractError(f"{root}: not a folder")
    out = Walk()
    for here, dirs, names in os.walk(root):
        hidden_dirs = [d for d in dirs if d.startswith(".")]
        out.hidden += len(hidden_dirs)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(here).relative_to(root)
        for name in names:
            if name.startswith("."):
                out.hidden += 1
            elif name.upper() == DICOMDIR:
                out.dicomdir += 1
            elif (Path(here) / name).is_file():
                out.files.append((base / name).as_posix())
    out.files.sort()
    return out
