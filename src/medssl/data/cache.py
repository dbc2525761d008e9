"""Decoded-image cache: every image of a dataset decoded ONCE into a memory-mapped uint8 array
[N, H, W] (grey) or [N, H, W, 3] (RGB), one row per manifest row, in manifest order.

The file is `<cache_dir>/<dataset name>-<key>.npy`; the key hashes the manifest bytes, dataset.yaml,
the image folder and each image file's size and modification time, so a changed dataset (also an
image edited in place) gets a new cache (old ones can be deleted at will).
Images are resized to `info.image_size` when needed; 16-bit images are scaled to 8 bits. Decoding
runs in a pool of processes that write straight into the memory map; the file is built under a
temporary name and renamed at the end, so a killed run never leaves a half cache behind. A missing
or undecodable image is a one-line DataContractError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medssl.errors import DataContractError, one_line
from medssl.fileio import atomic_write_text, output_errors
from medssl.imaging import decode_image
from medssl.parallel import map_chunks

if TYPE_CHECKING:
    from medssl.data.contract import Dataset

CACHE_VERSION = b"medssl-image-cache-v1"


@dataclass
class ImageCache:
    """An opened cache. `images` is a read-only memory map; `built` tells whether this open
    decoded the images (False: an existing cache was reused); `key` is the dataset's
    `dataset_key` (part of the file name)."""

    path: Path
    images: np.ndarray
    built: bool
    key: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else int(self.images.shape[-1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def take(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """The images of `rows` (manifest positions) as one contiguous uint8 array."""
        return np.ascontiguousarray(self.images[np.asarray(rows, dtype=np.int64)])


def dataset_key(dataset: Dataset) -> str:
    """Hash of what the decoded pixels depend on: manifest bytes, dataset.yaml, the image folder
    and every image file's size and modification time (an image edited in place under an
    unchanged manifest gets a new cache). A listed image that is missing is a one-line error."""
    from medssl.data.contract import INFO_FILE, MANIFEST_FILE

    digest = hashlib.sha256(CACHE_VERSION)
    for name in (MANIFEST_FILE, INFO_FILE):
        digest.update((dataset.root / name).read_bytes())
    digest.update(str(dataset.image_dir.resolve()).encode())
    stats = np.empty((len(dataset.manifest), 2), dtype=np.int64)
    for i, rel in enumerate(dataset.manifest["image"]):
        path = dataset.image_path(rel)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise missing_image(dataset, path) from None
        stats[i] = (st.st_size, st.st_mtime_ns)
    digest.update(stats.tobytes())
    return digest.hexdigest()[:20]


def missing_image(dataset: Dataset, path: Path) -> DataContractError:
    return DataContractError(
        f"{path}: image listed in {dataset.root}/manifest.parquet is missing (run `medssl "
        "validate` on the dataset)"
    )


def open_cache(
    dataset: Dataset,
    cache_dir: Path | str,
    *,
    workers: int = 0,
    progress: bool | None = None,
    chunk_size: int = 1024,
    parallel_from: int = 20_000,
) -> ImageCache:
    """Open the dataset's cache, decoding every image first if it does not exist yet.

    `workers` 0 = all cores; fewer than `parallel_from` images are decoded in this process.
    `progress` None shows a bar only on a terminal."""
    cache_dir = Path(cache_dir)
    key = dataset_key(dataset)
    path = cache_dir / f"{dataset.info.name}-{key}.npy"
    built = False
    if not path.is_file():
        with output_errors(path):  # a full or read-only cache_dir: one line naming it
            _build(dataset, path, workers, progress, chunk_size, parallel_from)
        built = True
    images = np.load(path, mmap_mode="r")
    return ImageCache(path=path, images=images, built=built, key=key)


def _build(
    dataset: Dataset,
    path: Path,
    workers: int,
    progress: bool | None,
    chunk_size: int,
    parallel_from: int,
) -> None:
    info = dataset.info
    shape: tuple[int, ...] = (len(dataset.manifest), info.image_size, info.image_size)
    if info.channels == 3:
        shape = (*shape, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    files = [str(dataset.image_path(p)) for p in dataset.manifest["image"]]
    spec = (info.image_size, info.channels, info.bit_depth)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        del array  # workers (and this process) reopen it in r+ mode
        jobs = [
            (str(tmp), s, files[s : s + chunk_size], spec) for s in range(0, len(files), chunk_size)
        ]
        map_chunks(
            _decode_chunk,
            jobs,
            [len(job[2]) for job in jobs],
            workers=workers,
            desc="decoding images",
            parallel=len(files) >= parallel_from,
            progress=progress,
        )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    index = {"dataset": str(dataset.root), "images": len(files), "shape": list(shape)}
    atomic_write_text(path.with_suffix(".json"), json.dumps(index, indent=2) + "\n")


def _decode_chunk(
    array_path: str, start: int, files: Iterable[str], spec: tuple[int, int, int]
) -> int:
    array = np.load(array_path, mmap_mode="r+")
    n = 0
    for i, file in enumerate(files):
        try:
            array[start + i] = decode_image(Path(file), *spec)
        except FileNotFoundError:
            raise DataContractError(
                f"{file}: image missing (run `medssl validate` on the dataset)"
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for bad files
            raise DataContractError(
                f"{file}: cannot decode the image ({one_line(exc, 120)}); run `medssl validate` "
                "on the dataset"
            ) from None
        n += 1
    array.flush()
    del array
    return n
