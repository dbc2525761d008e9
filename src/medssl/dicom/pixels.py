"""A decoded DICOM frame as display pixels: uint8 grey, uint16 grey or uint8 RGB.

Grey (MONOCHROME1/2): modality LUT (rescale slope/intercept or LUT sequence), then the VOI LUT
sequence or the first window (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID), else a 0.5-99.5 %
percentile stretch for wide data (raw values for 8-bit data, e.g. ultrasound); MONOCHROME1 is
inverted. Colour: PALETTE COLOR through its lookup tables, YBR_* to RGB (pydicom converts on
decode), more than 8 bits scaled down to 8.
"""

from __future__ import annotations

import numpy as np

GREY = ("MONOCHROME1", "MONOCHROME2")


def frame_indices(n_frames: int, step: int = 1, max_frames: int = 0) -> list[int]:
    """The frames kept of a file: every `step`-th, then at most `max_frames` evenly spaced."""
    idx = list(range(0, max(n_frames, 1), step))
    if max_frames and len(idx) > max_frames:
        pick = np.linspace(0, len(idx) - 1, max_frames).round().astype(int)
        idx = [idx[i] for i in dict.fromkeys(pick.tolist())]
    return idx


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI windowing to [0, 1] as float64 (PS3.3 C.11.2.1.2.1 / .2 / .3.1)."""
    x = np.asarray(x, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-9)))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / max(width, 1e-9) + 0.5, 0.0, 1.0)
    # LINEAR: below c - 0.5 - (w-1)/2 → 0, above c - 0.5 + (w-1)/2 → 1
    span = max(width - 1.0, 1e-9)
    return np.clip((x - (center - 0.5)) / span + 0.5, 0.0, 1.0)


def _first(value: object) -> float:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _to_bits(unit: np.ndarray, sixteen: bool) -> np.ndarray:
    top = 65535.0 if sixteen else 255.0
    return np.rint(unit * top).astype(np.uint16 if sixteen else np.uint8)


def grey_display(arr: np.ndarray, ds: object, *, keep_16bit: bool = False) -> np.ndarray:
    """A MONOCHROME frame as uint8 (or uint16 when `keep_16bit` and the data has > 8 bits)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    get = ds.get  # type: ignore[attr-defined]
    bits = int(get("BitsStored", 8) or 8)
    mono1 = get("PhotometricInterpretation", "") == "MONOCHROME1"
    has_modality = "RescaleSlope" in ds or "ModalityLUTSequence" in ds  # type: ignore[operator]
    has_lut = "VOILUTSequence" in ds  # type: ignore[operator]
    has_window = get("WindowCenter") is not None and get("WindowWidth") is not None
    sixteen = keep_16bit and bits > 8
    if arr.dtype == np.uint8 and not (has_modality or has_lut or has_window):
        return 255 - arr if mono1 else arr  # 8-bit stored values (ultrasound): as they are
    x = apply_modality_lut(arr, ds) if has_modality else arr
    if has_lut:
        y = apply_voi_lut(x, ds, index=0, prefer_lut=True)
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])  # type: ignore[attr-defined]
        unit = np.clip(y.astype(np.float64) / float(2**lut_bits - 1), 0.0, 1.0)
    elif has_window:
        unit = window(
            x, _first(get("WindowCenter")), _first(get("WindowWidth")), get("VOILUTFunction")
        )
    elif not has_modality and bits <= 8:
        unit = x.astype(np.float64) / float(2**bits - 1)
    else:
        lo, hi = np.percentile(x, [0.5, 99.5])
        unit = np.clip((x.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    if mono1:
        unit = 1.0 - unit
    return _to_bits(unit, sixteen)


def colour_display(arr: np.ndarray, ds: object) -> np.ndarray:
    """A colour frame (palette, RGB, YBR already converted by the decoder) as uint8 RGB."""
    from pydicom.pixels import apply_color_lut

    get = ds.get  # type: ignore[attr-defined]
    if get("PhotometricInterpretation") == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:  # 16-bit palette entries
            rgb = (rgb >> 8).astype(np.uint8)
        return rgb
    if arr.dtype == np.uint8:
        return arr
    bits = int(get("BitsStored", arr.dtype.itemsize * 8) or 8)
    return (arr.astype(np.uint32) >> max(bits - 8, 0)).astype(np.uint8)


def display(arr: np.ndarray, ds: object, *, keep_16bit: bool = False) -> np.ndarray:
    """One decoded frame as display pixels (see the module docstring)."""
    photometric = ds.get("PhotometricInterpretation", "")  # type: ignore[attr-defined]
    if photometric in GREY and arr.ndim == 2:
        return grey_display(arr, ds, keep_16bit=keep_16bit)
    if arr.ndim == 2 and photometric != "PALETTE COLOR":  # unknown grey interpretation
        return grey_display(arr, ds, keep_16bit=keep_16bit)
    return colour_display(arr, ds)


def top_band_rows(height: int, band: float) -> int:
    """Rows of the top band: `band` < 1 is a fraction of the height, >= 1 a pixel count."""
    if band <= 0:
        return 0
    rows = int(band) if band >= 1 else round(band * height)
    return min(rows, height)


def mask_top_band(img: np.ndarray, band: float) -> tuple[np.ndarray, int]:
    """The image with its top band set to 0 (burned-in header text), and the rows masked."""
    rows = top_band_rows(img.shape[0], band)
    if rows:
        img = img.copy()
        img[:rows] = 0
    return img, rows
