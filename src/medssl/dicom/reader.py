"""One DICOM file, in two passes run by worker processes.

`read_headers` reads headers only (stops before the pixel data) and returns a de-identified record
per file: keyed hashes instead of UIDs and ids, a shifted date, the title scope of its title tags.
`convert_files` decodes the chosen files' sampled frames, flags Doppler frames, masks the top
band of ultrasound and writes one PNG per kept frame. A file that cannot be read or decoded comes
back as `quarantined` with a reason that quotes no header value; it never stops the run.
Raw header values stay inside these functions, except the in-memory `file` path the parent needs
to schedule the second pass.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssl.dicom.deid import Pseudonymizer, identifier_tokens, safe_reason
from medssl.dicom.pixels import display, frame_indices, mask_top_band
from medssl.dicom.scope import DopplerRule, is_doppler, title_scope
from medssl.fileio import atomic_write

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, JPEG 2000 multi-component, HTJ2K,
# MPEG-2/4 and HEVC: a duplicate instance in one of these loses against a lossless copy
LOSSY_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
     "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
     *(f"1.2.840.10008.1.2.4.{n}" for n in (100, 101, 102, 103, 104, 105, 106, 107, 108))}
)  # fmt: skip

# statuses of a file record
OK, QUARANTINED, NON_IMAGE, DICOMDIR = "ok", "quarantined", "non_image", "dicomdir"


@dataclass(frozen=True)
class Settings:
    """What the workers need (picklable; the salt travels only to worker processes)."""

    salt: bytes = field(repr=False)
    date_shift_days: int = 365
    date_policy: str = "shift"
    title_tags: tuple[str, ...] = ("StudyDescription", "SeriesDescription", "BodyPartExamined")
    scope_keywords: tuple[str, ...] = ()
    collect_tokens: bool = False
    frame_step: int = 1
    max_frames: int = 0
    keep_16bit: bool = False
    mask_top_band: float = 0.0
    doppler: DopplerRule = field(default_factory=DopplerRule)
    png_compress_level: int = 1

    def pseudo(self) -> Pseudonymizer:
        return Pseudonymizer(self.salt, self.date_shift_days)


@contextmanager
def quiet_pydicom():
    """pydicom's warnings and log lines quote header values (UIDs, names): silence them."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _read(path: Path, *, stop_before_pixels: bool) -> Any:
    """dcmread, retrying with force=True for files without the 128-byte preamble."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        ds = dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        if "SOPInstanceUID" not in ds and "StudyInstanceUID" not in ds:
            raise InvalidDicomError("no DICOM preamble and no DICOM identifiers") from None
    if "TransferSyntaxUID" not in ds.file_meta:  # no file meta: the encoding pydicom read
        from pydicom.uid import UID

        implicit, little = ds.original_encoding
        uid = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
        ds.file_meta.TransferSyntaxUID = UID(uid if little else "1.2.840.10008.1.2.2")
    return ds


def _is_lossy(ds: Any) -> bool:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if str(ds.get("LossyImageCompression", "")) == "01":
        return True
    return str(ts) in LOSSY_SYNTAXES


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def header_record(root: Path, rel: str, s: Settings) -> dict[str, Any]:
    """The de-identified header record of one file (see the module docstring)."""
    path = root / rel
    pseudo = s.pseudo()
    st = path.stat()
    rec: dict[str, Any] = {
        "file": rel,
        "file_key": pseudo.file_key(rel),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "status": OK,
        "reason": None,
    }
    try:
        ds = _read(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on garbage
        reason = f"not readable as DICOM ({safe_reason(exc)})"
        return {**rec, "status": QUARANTINED, "reason": reason}
    meta = getattr(ds, "file_meta", None)
    if str(getattr(meta, "MediaStorageSOPClassUID", "")) == DICOMDIR_CLASS or (
        "DirectoryRecordSequence" in ds
    ):
        return {**rec, "status": DICOMDIR}
    study, sop = str(ds.get("StudyInstanceUID", "")).strip(), str(ds.get("SOPInstanceUID", ""))
    if not study or not sop.strip():
        missing = "StudyInstanceUID" if not study else "SOPInstanceUID"
        return {**rec, "status": QUARANTINED, "reason": f"missing {missing}"}
    patient, source = pseudo.patient_id(str(ds.get("PatientID", "") or ""), study)
    has_title, match = title_scope([ds.get(t) for t in s.title_tags], s.scope_keywords)
    ts = getattr(meta, "TransferSyntaxUID", None)
    accession = str(ds.get("AccessionNumber", "") or "").strip()
    rec.update(
        {
            "instance_id": pseudo.instance_id(sop),
            "exam_id": pseudo.exam_id(study),
            "patient_id": patient,
            "patient_id_source": source,
            "series_id": pseudo.series_id(str(ds.get("SeriesInstanceUID", "") or study)),
            "series_number": _int(ds.get("SeriesNumber")),
            "instance_number": _int(ds.get("InstanceNumber")),
            "modality": str(ds.get("Modality", "") or "").strip().upper() or "OT",
            "n_frames": _int(ds.get("NumberOfFrames")) or 1,
            "lossy": _is_lossy(ds),
            "transfer_syntax": ts.name if ts is not None else "unknown",
            "title_present": has_title,
            "title_match": match,
            "exam_date": (
                pseudo.shift_date(ds.get("StudyDate"), patient)
                if s.date_policy == "shift"
                else None
            ),
            "accession_key": pseudo.key("accession", accession) if accession else None,
            "tokens": sorted(identifier_tokens(ds, pseudo)) if s.collect_tokens else [],
        }
    )
    if "Rows" not in ds or "Columns" not in ds:
        rec.update(status=NON_IMAGE, reason="no image (no Rows/Columns)")
    return rec


def read_headers(root: str, rels: list[str], s: Settings) -> list[dict[str, Any]]:
    """`header_record` for each file (a worker's chunk)."""
    with quiet_pydicom():
        return [header_record(Path(root), rel, s) for rel in rels]


def image_name(patient: str, exam: str, instance: str, frame: int) -> str:
    return f"images/{patient}/{exam}/{instance}_{frame:04d}.png"


def _write_png(path: Path, img: np.ndarray, level: int) -> None:
    from PIL import Image

    pil = Image.fromarray(img)  # uint16 grey → I;16 (Pillow 13 refuses an explicit mode)
    atomic_write(path, lambda tmp: pil.save(tmp, format="PNG", compress_level=level))


def convert_file(
    root: Path, out: Path, job: dict[str, Any], s: Settings, exclude_doppler: bool = True
) -> dict[str, Any]:
    """Decode one file's sampled frames, write the kept ones; a result with one row per frame.
    On a decode error the frames already written are removed and the file is quarantined."""
    from pydicom.pixels import pixel_array

    result: dict[str, Any] = {"file_key": job["file_key"], "status": "ingested", "reason": None}
    rows: list[dict[str, Any]] = []
    us = job["modality"] == "US"
    try:
        ds = _read(root / job["file"], stop_before_pixels=False)
        if "PixelData" not in ds:
            raise ValueError("no pixel data")
        n = _int(ds.get("NumberOfFrames")) or 1
        for idx in frame_indices(n, s.frame_step, s.max_frames):
            arr = pixel_array(ds, index=idx) if n > 1 else ds.pixel_array
            img = display(arr, ds, keep_16bit=s.keep_16bit)
            doppler, share = is_doppler(img, s.doppler) if us else (False, 0.0)
            masked = 0
            if us and s.mask_top_band > 0:
                img, masked = mask_top_band(img, s.mask_top_band)
            row = {
                "image": image_name(job["patient_id"], job["exam_id"], job["instance_id"], idx),
                "frame": idx,
                "frames_in_file": n,
                "doppler": bool(doppler),
                "colour_fraction": round(share, 5),
                "masked_rows": masked,
                "height": int(img.shape[0]),
                "width": int(img.shape[1]),
                "channels": 3 if img.ndim == 3 else 1,
                "bit_depth": 16 if img.dtype == np.uint16 else 8,
                "kept": not (exclude_doppler and doppler),
            }
            if row["kept"]:
                _write_png(out / row["image"], img, s.png_compress_level)
            rows.append(row)
    except Exception as exc:
        for row in rows:
            (out / row["image"]).unlink(missing_ok=True)
        return {**result, "status": QUARANTINED, "reason": f"cannot decode ({safe_reason(exc)})"}
    result.update(rows=rows, n_frames_sampled=len(rows), n_doppler=sum(r["doppler"] for r in rows))
    return result


def convert_files(
    root: str, out: str, jobs: list[dict[str, Any]], s: Settings, exclude_doppler: bool
) -> list[dict[str, Any]]:
    """`convert_file` for each job (a worker's chunk)."""
    with quiet_pydicom():
        return [convert_file(Path(root), Path(out), job, s, exclude_doppler) for job in jobs]
