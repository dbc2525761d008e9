"""A small PACS-like export built from pydicom-data files, with planted PHI and corrupt files.

Every PHI attribute of `medssl.dicom.deid.PHI_KEYWORDS` is overwritten with a unique marker
(per study, so the encodings of one study still agree), every UID is replaced by a new one (per
original UID, so grouping is preserved), and folder names carry the patient-name marker. The
`Corpus` returned lists every planted string so tests can search the outputs for them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate

from medssl.dicom.deid import PHI_KEYWORDS


def data_dir() -> Path:
    """pydicom-data's folder of test files (read directly: its own lookup tries the network)."""
    spec = importlib.util.find_spec("data_store")
    assert spec is not None and spec.submodule_search_locations, "pydicom-data is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "data"


# (pydicom-data file, study tag used in folder names, path in the export)
FILES = {
    "US1_UNCI.dcm": "us1/series1/IM0001",  # GE lymph node, power Doppler: 4 encodings, 1 study
    "US1_UNCR.dcm": "us1/series1/IM0002",
    "US1_J2KI.dcm": "us1/series1/IM0003",
    "US1_J2KR.dcm": "us1/series1/IM0004.dcm",
    "gdcm-US-ALOKA-16.dcm": "aloka/IM0001",  # B-mode pelvis, 16-bit palette
    "OBXXXX1A_rle.dcm": "ob/IM0001",  # Philips obstetric, palette, RLE
    "color3d_jpeg_baseline.dcm": "cine/IM0001",  # SonoSite cine, 120 frames, JPEG baseline
    "color-pl.dcm": "tee/IM0001",  # transoesophageal colour Doppler
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "usmono/IM0001",  # grey US, JPEG lossless
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "mr/IM0001",  # abdomen^liver, window, no preamble
    "emri_small_jpeg_ls_lossless.dcm": "emri/IM0001",  # MR 10 frames, JPEG-LS
    "RG3_UNCR.dcm": "cr/IM0001",  # X-ray, MONOCHROME1
    "explicit_VR-UN.dcm": "ct/IM0001",  # CT pancreas, JPEG 2000 → out of scope by title
    "JPEG-LL.dcm": "nm/IM0001",  # NM → other modality
}
# reports CSV rows: pydicom-data file of the study, key kind, title
REPORTS = {
    "US1_UNCI.dcm": ("accession_number", "ÉCHOGRAPHIE ABDOMINALE"),
    "gdcm-US-ALOKA-16.dcm": ("study_instance_uid", "Échographie vésicale"),
    "OBXXXX1A_rle.dcm": ("study_instance_uid", "Échographie obstétricale"),
    "color3d_jpeg_baseline.dcm": ("study_instance_uid", "ÉCHOGRAPHIE RÉNALE"),
    "color-pl.dcm": ("study_instance_uid", "Doppler hépatique"),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": ("accession_number", "Échographie abdominale"),
    "emri_small_jpeg_ls_lossless.dcm": ("study_instance_uid", "IRM hépatique"),
    "RG3_UNCR.dcm": ("study_instance_uid", "Abdomen sans préparation"),
}


@dataclass
class Corpus:
    root: Path
    reports_csv: Path
    markers: set[str] = field(default_factory=set)  # unique strings: searched in every byte
    text_markers: set[str] = field(default_factory=set)  # short ones: searched in text outputs
    original_uids: set[str] = field(default_factory=set)
    study_of: dict[str, str] = field(default_factory=dict)  # export path → planted study UID
    planted_keywords: set[str] = field(default_factory=set)
    corrupt: dict[str, str] = field(default_factory=dict)  # export path → what is wrong


class Planter:
    def __init__(self) -> None:
        self.uid_map: dict[str, str] = {}
        self.studies: dict[str, int] = {}
        self.corpus_markers: set[str] = set()
        self.text_markers: set[str] = set()
        self.original_uids: set[str] = set()
        self.keywords: set[str] = set()

    def uid(self, original: str) -> str:
        if original not in self.uid_map:
            n = int(hashlib.sha256(original.encode()).hexdigest()[:24], 16)
            self.uid_map[original] = f"2.25.{n}"
        return self.uid_map[original]

    def plant(self, ds: pydicom.Dataset) -> int:
        """Overwrite every PHI attribute; returns the study's number (markers QZ<nn>…)."""
        study = str(ds.StudyInstanceUID)
        s = self.studies.setdefault(study, len(self.studies) + 1)
        for uid_kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if uid_kw in ds and str(ds[uid_kw].value).strip():
                self.original_uids.add(str(ds[uid_kw].value))
        for k, kw in enumerate(PHI_KEYWORDS):
            try:
                vr = dictionary_VR(kw)
            except KeyError:
                continue
            marker = f"QZ{s:02d}{k:03d}"
            if vr == "PN":
                value = f"{marker}^{marker}G"
                self.corpus_markers.add(marker)
            elif vr in ("LO", "SH", "LT", "ST", "UT", "UC", "CS"):
                value = marker
                self.corpus_markers.add(marker)
            elif vr == "DA":
                # years apart from the StudyDate, so that no shifted exam date can equal one
                day = dt.date((1960 if kw == "StudyDate" else 1900) + s, 1 + k % 12, 1 + k % 28)
                value = day.strftime("%Y%m%d")
                self.corpus_markers.update({value, day.isoformat()})
            elif vr == "TM":
                value = f"{s:02d}{k % 60:02d}07.{s:02d}{k:03d}"
                self.corpus_markers.add(value)
            elif vr == "DT":
                value = f"{1940 + s}0{1 + k % 9}1{k % 10}{s:02d}{k % 60:02d}07"
                self.corpus_markers.add(value)
            elif vr == "UI":
                if kw in ds and str(ds[kw].value).strip():
                    self.original_uids.add(str(ds[kw].value))
                    value = self.uid(str(ds[kw].value))
                else:
                    value = self.uid(f"{study}/{kw}")
                self.corpus_markers.add(value)
            elif vr == "AS":
                value = f"{s:03d}Y"
                self.text_markers.add(value)
            elif vr == "DS":
                value = f"{s}.{k:03d}07"
                self.text_markers.add(value)
            else:
                continue
            setattr(ds, kw, value)
            self.keywords.add(kw)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return s


def _plain_copy(ds: pydicom.Dataset, path: Path, *, preamble: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # no preamble, no file meta: only force=True reads it
        ds.preamble = None
        ts = ds.file_meta.TransferSyntaxUID
        ds.file_meta = FileMetaDataset()
        pydicom.dcmwrite(
            path,
            ds,
            implicit_vr=ts == pydicom.uid.ImplicitVRLittleEndian,
            little_endian=ts != pydicom.uid.ExplicitVRBigEndian,
            enforce_file_format=False,
        )


def build_corpus(root: Path, *, seed: int = 0) -> Corpus:
    """Write the export under `root`; return what was planted."""
    src = data_dir()
    planter = Planter()
    rng = np.random.default_rng(seed)
    corpus = Corpus(root=root, reports_csv=root.parent / "reports.csv")
    datasets: dict[str, pydicom.Dataset] = {}
    for name, rel in FILES.items():
        ds = pydicom.dcmread(src / name)
        s = planter.plant(ds)
        datasets[name] = ds
        study_marker = f"QZ{s:02d}000"
        path = root / f"{study_marker}^PATIENT" / rel
        _plain_copy(ds, path, preamble=not name.startswith("MR-SIEMENS"))
        corpus.study_of[path.relative_to(root).as_posix()] = str(ds.StudyInstanceUID)

    # corrupt files
    bad = root / "QZ99000^BROKEN"
    bad.mkdir(parents=True)
    (bad / "random.dcm").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    corpus.corrupt["QZ99000^BROKEN/random.dcm"] = "random bytes"
    aloka = (root / next(p for p in corpus.study_of if "aloka" in p)).read_bytes()
    (bad / "header_cut.dcm").write_bytes(aloka[:200])
    corpus.corrupt["QZ99000^BROKEN/header_cut.dcm"] = "truncated in the header"

    def beside(ds: pydicom.Dataset, sop: str, needle: str, what: str) -> Path:
        """`ds` as a new SOP instance, written as IM0002 beside the export file `needle` names."""
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = planter.uid(sop)
        path = (root / next(p for p in corpus.study_of if needle in p)).with_name("IM0002")
        _plain_copy(ds, path)
        corpus.corrupt[path.relative_to(root).as_posix()] = what
        return path

    cut_path = beside(datasets["JPGLosslessP14SV1_1s_1f_8b.dcm"].copy(), "cut-sop", "usmono",
                      "truncated pixel data")  # fmt: skip
    data = cut_path.read_bytes()
    cut_path.write_bytes(data[: int(len(data) * 0.6)])
    j2k = pydicom.dcmread(src / "emri_small_jpeg_2k_lossless.dcm")
    planter.plant(j2k)
    junk = [b"\xff\x4f\xff\x51" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes()] * 10
    j2k.PixelData = encapsulate(junk)
    beside(j2k, "j2k-sop", "emri", "JPEG 2000 codestream garbage")
    broken = datasets["gdcm-US-ALOKA-16.dcm"].copy()
    broken.PixelData = b"\x00" * 64
    beside(broken, "bad-px", "aloka", "pixel data of the wrong length")

    # media directory and OS litter: skipped, not quarantined
    (root / "DICOMDIR").write_bytes(b"\x00" * 132)
    (root / ".DS_Store").write_bytes(b"\x00\x01junk")

    # the reports CSV: raw keys as a RIS exports them; text quotes identifiers and dates
    lines = ["study_instance_uid,accession_number,title,text,language"]
    for name, (key, title) in REPORTS.items():
        ds = datasets[name]
        uid = str(ds.StudyInstanceUID) if key == "study_instance_uid" else ""
        acc = str(ds.AccessionNumber) if key == "accession_number" else ""
        family = str(ds.PatientName).split("^")[0]
        text = (
            f"Patient {family} (ID {ds.PatientID}), né le {ds.PatientBirthDate[6:]}/"
            f"{ds.PatientBirthDate[4:6]}/{ds.PatientBirthDate[:4]}. Examen du "
            f"{ds.StudyDate}. Dossier {ds.AccessionNumber}. Foie de taille normale."
        )
        lines.append(f'{uid},{acc},"{title}","{text}",fr')
    lines.append(',,"ÉCHOGRAPHIE","no key at all",fr')
    lines.append(f'{planter.uid("unknown-study")},,"ÉCHOGRAPHIE RÉNALE","not in export",fr')
    corpus.reports_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")

    corpus.markers = planter.corpus_markers | {f"QZ{s:02d}000^PATIENT" for s in range(1, 30)}
    corpus.text_markers = planter.text_markers
    corpus.original_uids = planter.original_uids
    corpus.planted_keywords = planter.keywords
    return corpus


def export_paths(corpus: Corpus, needle: str) -> list[str]:
    """Export paths (relative) whose path contains `needle`."""
    return sorted(p for p in corpus.study_of if needle in p)


def move_aside(corpus: Corpus, rels: list[str], dest: Path) -> None:
    for rel in rels:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(corpus.root / rel, target)


def move_back(corpus: Corpus, rels: list[str], dest: Path) -> None:
    for rel in rels:
        shutil.move(dest / rel, corpus.root / rel)
