"""De-identification: salted pseudonyms, per-patient date shift, identifier scrubbing.

Nothing read from a DICOM header reaches an output file as is: ids are keyed hashes
(HMAC-SHA256 with a secret salt), the exam date is shifted per patient, free text (report text) is
scrubbed of the patient's known identifiers and of anything date-like. The salt itself is never
written; a keyed fingerprint of it is, so that a later run with another salt is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from pydicom.multival import MultiValue

from medssl.errors import ConfigError

MIN_SALT_CHARS = 16
KEY_HEX = 20  # 80-bit pseudonyms: collision-free for any archive size that matters here

# DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile: the attributes of the
# profile that a PACS export of images carries in practice (the full table has ~600 entries,
# most of them sequences and private/rare modules). Grouped by what they identify.
PHI_NAMES = (
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord", "OperatorsName", "RequestingPhysician", "ResponsiblePerson",
    "ScheduledPerformingPhysicianName", "ContentCreatorName", "ReviewerName",
)  # fmt: skip
PHI_IDS = (
    "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "AccessionNumber", "StudyID",
    "MedicalRecordLocator", "PerformedProcedureStepID", "RequestedProcedureID",
    "ScheduledProcedureStepID", "AdmissionID", "DeviceSerialNumber", "StationName",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
)  # fmt: skip
PHI_DATES = (
    "PatientBirthDate", "PatientBirthTime", "StudyDate", "SeriesDate", "AcquisitionDate",
    "ContentDate", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
    "AcquisitionDateTime", "InstanceCreationDate", "InstanceCreationTime",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
)  # fmt: skip
PHI_UIDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "InstanceCreatorUID", "DeviceUID", "IrradiationEventUID", "SynchronizationFrameOfReferenceUID",
)  # fmt: skip
PHI_TEXT = (
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PatientAddress",
    "PatientTelephoneNumbers", "PatientAge", "PatientSize", "PatientWeight", "Occupation",
    "MilitaryRank", "EthnicGroup", "CountryOfResidence", "RegionOfResidence",
    "PatientReligiousPreference", "AdditionalPatientHistory", "PatientComments",
    "AdmittingDiagnosesDescription", "StudyDescription", "SeriesDescription",
    "RequestedProcedureDescription", "PerformedProcedureStepDescription",
    "ScheduledProcedureStepDescription", "ProtocolName", "ImageComments", "DerivationDescription",
    "StudyComments", "ResponsibleOrganization", "ReasonForStudy", "RequestingService",
)  # fmt: skip
PHI_KEYWORDS: tuple[str, ...] = PHI_NAMES + PHI_IDS + PHI_DATES + PHI_UIDS + PHI_TEXT

# identifiers a report text may quote (scrubbed from report text by `scrub_text`)
QUOTABLE = PHI_NAMES + PHI_IDS + ("PatientBirthDate",)

DATE_RE = re.compile(
    r"\b(?:\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}|\d{4}[/.\-]\d{1,2}[/.\-]\d{1,2}|(?:19|20)\d{6})\b"
)
TOKEN_RE = re.compile(r"\w+(?:[-/.]\w+)*")
UID_RE = re.compile(r"\d+(?:\.\d+){3,}")


def load_salt(salt_env: str, salt_file: str | None) -> bytes:
    """The secret salt from the env var `salt_env` or from `salt_file`; one-line ConfigError
    when neither is set or the salt is too short to resist guessing."""
    value = os.environ.get(salt_env, "")
    source = f"${salt_env}"
    if not value and salt_file:
        path = Path(salt_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"ingest.salt_file {salt_file}: file not found")
        value = path.read_text().strip()
        source = f"ingest.salt_file {salt_file}"
    if not value:
        raise ConfigError(
            f"no pseudonymisation salt: set {salt_env} (e.g. `export {salt_env}=$(openssl rand "
            "-hex 32)`) or ingest.salt_file, and keep it secret and unchanged between runs"
        )
    if len(value) < MIN_SALT_CHARS:
        raise ConfigError(f"{source}: the salt must have at least {MIN_SALT_CHARS} characters")
    return value.encode()


def fold(text: str) -> str:
    """Lower case without accents (ÉCHOGRAPHIE RÉNALE → echographie renale)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


class Pseudonymizer:
    """Keyed hashes and date shifts under one secret salt (held in memory only)."""

    def __init__(self, salt: bytes, shift_days: int = 365) -> None:
        self._salt = salt
        self.shift_range = shift_days

    def key(self, kind: str, value: str) -> str:
        """HMAC-SHA256(salt, kind:value) as KEY_HEX hex digits; `kind` separates namespaces."""
        msg = f"{kind}:{value.strip()}".encode()
        return hmac.new(self._salt, msg, hashlib.sha256).hexdigest()[:KEY_HEX]

    def fingerprint(self) -> str:
        """Identifies the salt without revealing it (stored to refuse a changed salt)."""
        return self.key("medssl-salt-fingerprint", "v1")

    def patient_id(self, patient_id: str | None, study_uid: str) -> tuple[str, str]:
        """(pseudonym, source): PatientID's, or the study's when the header has no PatientID
        (then every study counts as its own patient: never merged by an empty id)."""
        if patient_id and patient_id.strip():
            return "p" + self.key("patient", patient_id), "PatientID"
        return "p" + self.key("patient-of-study", study_uid), "StudyInstanceUID"

    def exam_id(self, study_uid: str) -> str:
        return "e" + self.key("study", study_uid)

    def instance_id(self, sop_uid: str) -> str:
        return "i" + self.key("sop", sop_uid)

    def series_id(self, series_uid: str) -> str:
        return "s" + self.key("series", series_uid)

    def file_key(self, relpath: str) -> str:
        """A file's pseudonym (paths of PACS exports may contain names)."""
        return "f" + self.key("file", relpath)

    def token_key(self, token: str) -> str:
        return self.key("token", fold(token))

    def shift_days(self, patient: str) -> int:
        """The patient's date shift in ±[1, N] days (never 0), same for all their exams."""
        n = int(self.key("date-shift", patient), 16)
        days = n % self.shift_range + 1
        return days if (n >> 1) % 2 else -days

    def shift_date(self, value: str | None, patient: str) -> str | None:
        """A DICOM DA (YYYYMMDD) shifted by the patient's offset, ISO formatted; None if absent
        or unparseable."""
        if not value:
            return None
        try:
            day = dt.datetime.strptime(str(value).strip()[:8], "%Y%m%d").date()
        except ValueError:
            return None
        return (day + dt.timedelta(days=self.shift_days(patient))).isoformat()


def identifier_tokens(ds: object, pseudo: Pseudonymizer) -> set[str]:
    """Keyed hashes of the identifier tokens a report might quote (names, ids, birth date)."""
    out: set[str] = set()
    for kw in QUOTABLE:
        value = getattr(ds, kw, None)
        if value is None or value == "":
            continue
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        for v in values:
            text = str(v).strip()
            if not text:
                continue
            out.add(pseudo.token_key(text))
            if kw in PHI_NAMES:  # PN: family^given^middle^prefix^suffix
                for part in re.split(r"[\^\s,=]+", text):
                    if len(part) >= 2:
                        out.add(pseudo.token_key(part))
    return out


def scrub_text(text: str, tokens: Iterable[str], pseudo: Pseudonymizer) -> tuple[str, int]:
    """Report text without the patient's known identifiers ([REDACTED]) and dates ([DATE]);
    also the number of replacements. Best effort: names absent from the header stay."""
    known = set(tokens)
    count = 0

    def date(_m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return "[DATE]"

    text = DATE_RE.sub(date, text)

    def token(m: re.Match[str]) -> str:
        nonlocal count
        word = m.group(0)
        if pseudo.token_key(word) in known:
            count += 1
            return "[REDACTED]"
        parts = re.split(r"([-/.])", word)
        if len(parts) > 1 and any(pseudo.token_key(p) in known for p in parts[::2]):
            count += 1
            return "".join("[REDACTED]" if pseudo.token_key(p) in known else p for p in parts)
        return word

    text = TOKEN_RE.sub(token, text)
    text = UID_RE.sub("[UID]", text)
    return text, count


def safe_reason(exc: BaseException) -> str:
    """An exception as a short reason without quoted values, UIDs or paths (they may be PHI)."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    msg = re.sub(r"(?<!\w)'[^']*'(?!\w)|\"[^\"]*\"", "'…'", msg)
    msg = UID_RE.sub("<uid>", msg)
    msg = re.sub(r"(?:[A-Za-z]:)?[/\\][^\s,;:)]+", "<path>", msg)
    msg = DATE_RE.sub("<date>", msg)
    name = type(exc).__name__
    return f"{name}: {msg[:160]}" if msg else name
