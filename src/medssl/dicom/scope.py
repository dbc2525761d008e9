"""Scope rules of paper 000 §3.1: B-mode frames only, exams by modality and report title.

* Colour Doppler (colour, power, TDI …) paints the image sector with strongly chromatic pixels;
  B-mode is grey with at most small coloured overlays (colour bar, logo, markers, cursor), mostly
  at the borders. A frame is Doppler when the share of strongly chromatic pixels (largest channel
  difference above `chroma`) in its centre — the image without a `margin` share of each border —
  exceeds `fraction`. Grey frames are never Doppler.
* An exam is in scope when its modality is in the configured list and its title (report title,
  else the DICOM title tags) contains a scope keyword; an exam without any title is kept or
  dropped by `keep_untitled` (paper 000 Fig. 4 keeps them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from medssl.dicom.deid import fold


@dataclass(frozen=True)
class DopplerRule:
    chroma: int = 60
    fraction: float = 0.01
    margin: float = 0.1


def colour_fraction(rgb: np.ndarray, chroma: int = 60, margin: float = 0.1) -> float:
    """Share of strongly chromatic pixels in the centre of an RGB frame (0 for grey frames)."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        return 0.0
    h, w = rgb.shape[:2]
    dy, dx = int(h * margin), int(w * margin)
    centre = rgb[dy : h - dy or None, dx : w - dx or None].astype(np.int16)
    if centre.size == 0:
        return 0.0
    r, g, b = centre[..., 0], centre[..., 1], centre[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return float(np.count_nonzero(spread > chroma)) / float(spread.size)


def is_doppler(rgb: np.ndarray, rule: DopplerRule = DopplerRule()) -> tuple[bool, float]:
    """(Doppler?, colour share) of one display frame."""
    share = colour_fraction(rgb, rule.chroma, rule.margin)
    return share > rule.fraction, share


def title_scope(titles: Iterable[str | None], keywords: Sequence[str]) -> tuple[bool, str | None]:
    """(has a title, the first keyword it matches or None). Titles are accent/case-folded;
    with no keywords every title matches ('*')."""
    texts = [fold(str(t)) for t in titles if t is not None and str(t).strip()]
    if not texts:
        return False, None
    if not keywords:
        return True, "*"
    for kw in keywords:
        needle = fold(kw)
        if any(needle in t for t in texts):
            return True, kw
    return True, None
