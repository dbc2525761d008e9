"""The `--reports` CSV of `medssl ingest`: one report per exam, keyed by the raw
StudyInstanceUID or AccessionNumber (as the RIS exports them), turned into reports.parquet rows
keyed by the same exam pseudonym as the images. Raw keys never leave this module.

Columns (header names case-insensitive): ``study_instance_uid`` and/or ``accession_number`` (one
of them per row), ``text`` (required), ``title`` and ``language`` (optional).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medssl.dicom.deid import Pseudonymizer, scrub_text
from medssl.errors import DataContractError

KEY_COLUMNS = ("study_instance_uid", "accession_number")


@dataclass
class RawReports:
    """Reports by exam pseudonym (title still raw: the scope reads it; scrubbed on output)."""

    by_exam: dict[str, dict[str, str | None]] = field(default_factory=dict)
    rows: int = 0
    without_key: int = 0
    unmatched_accession: int = 0
    duplicates: int = 0


def read_reports_csv(
    path: Path, pseudo: Pseudonymizer, accession_to_exam: dict[str, str], language: str
) -> RawReports:
    """Parse the CSV; one-line DataContractError when it cannot be used at all."""
    path = Path(path)
    if not path.is_file():
        raise DataContractError(f"{path}: reports file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataContractError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if "text" not in table.columns or not any(c in table.columns for c in KEY_COLUMNS):
        raise DataContractError(
            f"{path}: reports CSV needs a 'text' column and 'study_instance_uid' or "
            "'accession_number' (see docs/ingest.md)"
        )
    out = RawReports(rows=len(table))
    for rec in table.to_dict("records"):
        uid = str(rec.get("study_instance_uid", "") or "").strip()
        acc = str(rec.get("accession_number", "") or "").strip()
        if uid:
            exam = pseudo.exam_id(uid)
        elif acc:
            exam = accession_to_exam.get(pseudo.key("accession", acc))
            if exam is None:
                out.unmatched_accession += 1
                continue
        else:
            out.without_key += 1
            continue
        title = str(rec.get("title", "") or "").strip() or None
        entry = {
            "title": title,
            "text": str(rec.get("text", "") or ""),
            "language": str(rec.get("language", "") or "").strip() or language,
        }
        if exam in out.by_exam:  # several reports of one exam: one text, the first title
            out.duplicates += 1
            prev = out.by_exam[exam]
            prev["text"] = f"{prev['text']}\n\n{entry['text']}"
            prev["title"] = prev["title"] or title
        else:
            out.by_exam[exam] = entry
    return out


def reports_table(
    raw: RawReports, exams: set[str], tokens: dict[str, set[str]], pseudo: Pseudonymizer
) -> tuple[pd.DataFrame, int]:
    """reports.parquet rows for the exams of the manifest, scrubbed; and the redaction count."""
    rows, redactions = [], 0
    for exam, entry in sorted(raw.by_exam.items()):
        if exam not in exams:
            continue
        known = tokens.get(exam, set())
        text, n_text = scrub_text(entry["text"] or "", known, pseudo)
        title, n_title = (None, 0)
        if entry["title"]:
            title, n_title = scrub_text(entry["title"], known, pseudo)
        redactions += n_text + n_title
        rows.append({"exam_id": exam, "title": title, "text": text, "language": entry["language"]})
    return pd.DataFrame(rows, columns=["exam_id", "title", "text", "language"]), redactions
