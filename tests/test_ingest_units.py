"""Building blocks of the ingest stage: pseudonyms, date shift, scrubbing, pixels, Doppler, scope,
walk."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.pixels import apply_color_lut, apply_voi_lut

from dicom_corpus import data_dir
from medssl.config import Params, load_params
from medssl.dicom.deid import (
    Pseudonymizer,
    identifier_tokens,
    load_salt,
    safe_reason,
    scrub_text,
)
from medssl.dicom.pixels import display, frame_indices, grey_display, mask_top_band, window
from medssl.dicom.reader import Settings, convert_file
from medssl.dicom.scope import DopplerRule, colour_fraction, is_doppler, title_scope
from medssl.dicom.walk import walk
from medssl.errors import ConfigError

SALT = b"unit-test-salt-0123456789"


def read(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(data_dir() / name)


def frame(name: str, index: int = 0) -> np.ndarray:
    from pydicom.pixels import pixel_array

    ds = read(name)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    arr = pixel_array(ds, index=index) if n > 1 else ds.pixel_array
    return display(arr, ds)


# ------------------------------------------------------------------------------ pseudonyms


def test_keys_are_stable_and_salt_dependent() -> None:
    a, b = Pseudonymizer(SALT), Pseudonymizer(SALT)
    other = Pseudonymizer(b"another-salt-0123456789")
    assert a.exam_id("1.2.3") == b.exam_id("1.2.3") == a.exam_id(" 1.2.3 ")
    assert a.exam_id("1.2.3") != other.exam_id("1.2.3")
    assert a.exam_id("1.2.3") != a.exam_id("1.2.4")
    assert a.exam_id("1.2.3")[1:] != a.instance_id("1.2.3")[1:]  # namespaces differ
    assert a.fingerprint() == b.fingerprint() != other.fingerprint()
    assert len(a.exam_id("x")) == 21 and a.exam_id("x").startswith("e")
    # no PatientID: the study is its own patient, never merged with other id-less studies
    p1, src = a.patient_id("", "1.2.3")
    p2, _ = a.patient_id(None, "1.2.4")
    assert src == "StudyInstanceUID" and p1 != p2
    assert a.patient_id("12345", "1.2.3") == a.patient_id("12345", "9.9.9")


def test_date_shift_per_patient_never_zero() -> None:
    pseudo = Pseudonymizer(SALT, shift_days=30)
    shifts = {pseudo.shift_days(f"p{i}") for i in range(300)}
    assert 0 not in shifts and shifts <= set(range(-30, 31))
    assert len(shifts) > 40  # spread over both signs
    # the shift comes from the salt alone (another instance agrees) and is never 0
    again = Pseudonymizer(SALT, shift_days=30).shift_date("20200115", "p1")
    assert pseudo.shift_date("20200115", "p1") == again != "2020-01-15"
    d1, d2 = pseudo.shift_date("20200115", "p1"), pseudo.shift_date("20200116", "p1")
    assert (np.datetime64(d2) - np.datetime64(d1)).astype(int) == 1  # intervals kept
    assert pseudo.shift_date("", "p1") is None and pseudo.shift_date("garbage", "p1") is None


def test_salt_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SALT_UNIT", raising=False)
    with pytest.raises(ConfigError, match="no pseudonymisation salt: set SALT_UNIT"):
        load_salt("SALT_UNIT", None)
    f = tmp_path / "salt"
    f.write_text("file-salt-0123456789\n")
    assert load_salt("SALT_UNIT", str(f)) == b"file-salt-0123456789"
    monkeypatch.setenv("SALT_UNIT", "env-salt-0123456789")
    assert load_salt("SALT_UNIT", str(f)) == b"env-salt-0123456789"
    monkeypatch.setenv("SALT_UNIT", "short")
    with pytest.raises(ConfigError, match="at least 16"):
        load_salt("SALT_UNIT", None)


def test_scrub_text_removes_known_identifiers_and_dates() -> None:
    pseudo = Pseudonymizer(SALT)
    ds = DicomDataset()
    ds.PatientName = "Dupont^Jean-Marie"
    ds.PatientID = "AB-123456"
    ds.AccessionNumber = "ACC998877"
    ds.PatientBirthDate = "19610304"
    tokens = identifier_tokens(ds, pseudo)
    text = (
        "M. DUPONT Jean-Marie (AB-123456, né le 04/03/1961), dossier ACC998877, "
        "examen du 2021-06-01 : rein droit 11 cm, 1.2.840.113619.2.55.3 ."
    )
    out, n = scrub_text(text, tokens, pseudo)
    for leaked in ("DUPONT", "Jean-Marie", "AB-123456", "1961", "ACC998877", "2021", "113619"):
        assert leaked not in out
    assert "rein droit 11 cm" in out and n >= 6


def test_safe_reason_quotes_no_values() -> None:
    exc = ValueError(
        "Invalid value 'DOE^JOHN' for /data/DOE_JOHN/IM1 uid 1.2.840.1234.5.6 20200101"
    )
    reason = safe_reason(exc)
    assert reason.startswith("ValueError:")
    for leaked in ("DOE", "/data", "1.2.840.1234", "20200101"):
        assert leaked not in reason


# ---------------------------------------------------------------------------------- pixels


def test_linear_window_matches_hand_computation() -> None:
    # PS3.3 C.11.2.1.2.1, c = 40, w = 400: 0 below c-0.5-(w-1)/2 = -160, 1 above 239
    x = np.array([-1000, -160, 0, 39.5, 100, 239, 1000])
    expected = [0.0, 0.0, (0 - 39.5) / 399 + 0.5, 0.5, (100 - 39.5) / 399 + 0.5, 1.0, 1.0]
    np.testing.assert_allclose(window(x, 40, 400), np.clip(expected, 0, 1))
    np.testing.assert_allclose(window(np.array([-160.0, 40, 240]), 40, 400, "LINEAR_EXACT"),
                               [0.0, 0.5, 1.0])  # fmt: skip
    np.testing.assert_allclose(window(np.array([40.0]), 40, 400, "SIGMOID"), [0.5])


def test_ct_window_to_8bit_and_monochrome1_inverted() -> None:
    ds = DicomDataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 12, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    raw = np.array([[0, 864, 1064, 1263, 4000]], dtype=np.int16)  # HU -1024, -160, 40, 239, …
    out = grey_display(raw, ds)
    hu = raw.astype(float) - 1024
    hand = np.rint(np.clip((hu - 39.5) / 399 + 0.5, 0, 1) * 255).astype(np.uint8)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, hand)
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(grey_display(raw, ds), 255 - hand)
    sixteen = grey_display(raw, ds, keep_16bit=True)
    assert sixteen.dtype == np.uint16 and sixteen.max() == 65535


def test_voi_lut_sequence_and_real_monochrome1() -> None:
    ds = read("vlut_04.dcm")
    arr = ds.pixel_array
    lut = apply_voi_lut(arr, ds, prefer_lut=True).astype(float) / 65535
    np.testing.assert_array_equal(grey_display(arr, ds), np.rint(lut * 255).astype(np.uint8))
    # RG3 is MONOCHROME1 (bone has low stored values): windowed, then inverted
    ds = read("RG3_UNCR.dcm")
    cr = display(ds.pixel_array, ds)
    hand = np.rint((1 - window(ds.pixel_array, 550, 1024)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(cr, hand)
    h, w = cr.shape  # the tibia (centre) is brighter than the air beside the leg
    assert cr[h // 5 : 3 * h // 5, int(0.48 * w) : int(0.52 * w)].mean() > 150
    assert cr[h // 5 : 3 * h // 5, int(0.30 * w) : int(0.32 * w)].mean() < 60


def test_ybr_and_palette_to_rgb() -> None:
    ybr, rgb = frame("SC_ybr_full_uncompressed.dcm"), frame("SC_rgb.dcm")
    assert ybr.shape == rgb.shape == (100, 100, 3)
    diff = np.abs(ybr.astype(int) - rgb.astype(int))  # same picture: YBR_FULL → RGB converted
    assert diff.max() <= 8 and diff.mean() < 1
    raw = pydicom.pixels.pixel_array(read("SC_ybr_full_uncompressed.dcm"), raw=True)
    assert np.abs(raw.astype(int) - rgb.astype(int)).max() > 100  # (the stored values are not)
    ds = read("OBXXXX1A.dcm")  # PALETTE COLOR, 8-bit indices, 16-bit entries
    idx = ds.pixel_array
    out = display(idx, ds)
    assert out.shape == (*idx.shape, 3) and out.dtype == np.uint8
    full = apply_color_lut(idx, ds)
    np.testing.assert_array_equal(out, (full >> 8).astype(np.uint8))
    y, x = np.argwhere(idx > 0)[0]
    red = ds.RedPaletteColorLookupTableDescriptor
    red_lut = np.frombuffer(ds.RedPaletteColorLookupTableData, dtype="<u2")
    assert out[y, x, 0] == red_lut[int(idx[y, x]) - red[1]] >> 8
    # 16-bit palette (Aloka), 16-bit and 32-bit RGB all come out as 8-bit RGB
    for name in ("gdcm-US-ALOKA-16.dcm", "SC_rgb_16bit.dcm", "SC_rgb_32bit.dcm"):
        img = frame(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.max() > 100


def test_frame_sampling_and_top_band() -> None:
    assert frame_indices(1) == [0]
    assert frame_indices(10, step=3) == [0, 3, 6, 9]
    assert frame_indices(120, max_frames=4) == [0, 40, 79, 119]
    assert frame_indices(120, step=10, max_frames=3) == [0, 60, 110]
    img = np.full((100, 50, 3), 200, np.uint8)
    masked, rows = mask_top_band(img, 0.1)
    assert rows == 10 and masked[:10].max() == 0 and masked[10:].min() == 200
    assert mask_top_band(img, 25)[1] == 25 and mask_top_band(img, 0)[1] == 0
    assert img.min() == 200  # the input is left alone


def test_convert_keeps_16bit_grey(tmp_path: Path) -> None:
    # RG3 (12-bit CR) with keep_16bit: a 16-bit PNG holding exactly the display pixels
    src = data_dir() / "RG3_UNCR.dcm"
    job = {"file": src.name, "file_key": "f1", "modality": "CR", "patient_id": "p1",
           "exam_id": "e1", "instance_id": "i1"}  # fmt: skip
    res = convert_file(src.parent, tmp_path, job, Settings(salt=SALT, keep_16bit=True))
    assert res["status"] == "ingested", res["reason"]
    (row,) = res["rows"]
    assert row["bit_depth"] == 16 and row["channels"] == 1
    ds = read(src.name)
    with Image.open(tmp_path / row["image"]) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.array(im), display(ds.pixel_array, ds, keep_16bit=True))


# --------------------------------------------------------------------------------- Doppler


def test_doppler_detector_on_synthetic_frames() -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 200, (200, 300, 1), dtype=np.uint8), 3, axis=2)
    assert is_doppler(grey) == (False, 0.0)
    assert colour_fraction(grey[..., 0]) == 0.0  # a grey frame is never Doppler
    bar = grey.copy()
    bar[:, :15] = [255, 200, 0]  # colour bar at the left border
    bar[:8, 100:200] = [0, 255, 0]  # coloured header text
    bar[100:103, 150:152] = [0, 255, 0]  # a small marker in the sector
    assert not is_doppler(bar)[0]
    blob = grey.copy()
    blob[80:120, 120:180] = [220, 30, 20]  # colour flow in the sector: 2,400 px of 33,600
    found, share = is_doppler(blob)
    assert found and share == pytest.approx(40 * 60 / (160 * 240))
    assert not is_doppler(blob, DopplerRule(fraction=0.1))[0]
    dim = grey.copy()
    dim[80:120, 120:180] = [120, 100, 90]  # weakly tinted (sepia-like) pixels are not colour
    assert not is_doppler(dim)[0]


def test_doppler_detector_on_real_ultrasound() -> None:
    # GE power Doppler (all four encodings) and the TEE colour Doppler are flagged
    for name in ("US1_UNCR.dcm", "US1_UNCI.dcm", "US1_J2KI.dcm", "US1_J2KR.dcm", "color-pl.dcm"):
        found, share = is_doppler(frame(name))
        assert found and share > 0.05, name
    # B-mode with green markers (Aloka), the palette OB frame and the SonoSite cine are not
    for name, index in (("gdcm-US-ALOKA-16.dcm", 0), ("OBXXXX1A.dcm", 0),
                        ("color3d_jpeg_baseline.dcm", 60)):  # fmt: skip
        found, share = is_doppler(frame(name, index))
        assert not found and share < 0.002, name


# ----------------------------------------------------------------------------- scope, walk


def test_title_scope_folds_accents_and_case() -> None:
    kws = ["abdomin", "renal", "vesic", "hepat"]
    assert title_scope(["ÉCHOGRAPHIE RÉNALE"], kws) == (True, "renal")
    assert title_scope([None, "", "Echo abdominale"], kws) == (True, "abdomin")
    assert title_scope(["Échographie obstétricale"], kws) == (True, None)
    assert title_scope([None, "  "], kws) == (False, None)
    assert title_scope(["anything"], []) == (True, "*")


def test_walk_skips_dicomdir_and_hidden(tmp_path: Path) -> None:
    (tmp_path / "a" / ".thumbs").mkdir(parents=True)
    (tmp_path / "a" / "IM1").write_bytes(b"x")
    (tmp_path / "a" / ".thumbs" / "t.png").write_bytes(b"x")
    (tmp_path / "DICOMDIR").write_bytes(b"x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "b.dcm").write_bytes(b"x")
    w = walk(tmp_path)
    assert w.files == ["a/IM1", "b.dcm"] and w.dicomdir == 1 and w.hidden == 2


def test_ingest_section_in_params() -> None:
    p = load_params(Path("params.yaml"))
    assert p.ingest.modalities == ["US"] and p.ingest.exclude_doppler
    assert p.ingest == Params().ingest  # params.yaml documents the defaults
    with pytest.raises(ConfigError, match=r"ingest\.frame_stepp"):
        load_params(Path("params.yaml"), ["ingest.frame_stepp=2"])
