"""Decoding an image the way training saw it (the image cache, batch prediction and the
registered model all call this): numpy and Pillow only, so the self-contained model can import it
without the rest of medssl's dependencies."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np


def decode_image(path: Path | BinaryIO, size: int, channels: int, bit_depth: int = 8) -> np.ndarray:
    """One image (a file, or a binary stream of PNG/JPEG/… bytes) as uint8 [size, size]
    (channels 1) or [size, size, 3] (channels 3): the preprocessing of training and serving."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grey: scale the full 16-bit range to 8 bits
            wide = np.asarray(im).astype(np.float32)
            scale = 255.0 / 65535.0 if bit_depth == 16 or wide.max() > 255 else 1.0
            im8 = Image.fromarray(np.clip(wide * scale + 0.5, 0, 255).astype(np.uint8), "L")
        else:
            im8 = im
        im8 = im8.convert("L" if channels == 1 else "RGB")
        if im8.size != (size, size):
            im8 = im8.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im8, dtype=np.uint8)
