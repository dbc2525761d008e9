"""The ingest counts drawn like paper 000 Fig. 4: a column of kept sets, exclusions to the side."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def steps(c: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(kept box, excluded box or None) per step, top to bottom, from ingest_report counts."""
    f, e = c["files"], c["exams"]
    return [
        (
            f"Files in the export\n(n = {f['found']:,})",
            f"Not ingested\nquarantined {f['quarantined']:,} · non-image {f['non_image']:,}\n"
            f"duplicate instances {f['duplicate']:,} · DICOMDIR/hidden {f['skipped']:,}",
        ),
        (
            f"Image instances\n(n_exam = {e['all']:,}, n_instances = {c['instances']:,}\n"
            f"from {c['patients']['all']:,} patients)",
            f"Other modalities\n(n_exam = {e['out_of_modality']:,})",
        ),
        (
            f"Exams with a title (n_exam = {e['titled']:,})\n"
            f"Exams without a title (n_exam = {e['untitled']:,})",
            f"Out-of-scope exams\n(n_exam = {e['out_of_scope']:,}"
            + (f", untitled dropped {e['untitled_dropped']:,})" if e["untitled_dropped"] else ")"),
        ),
        (
            f"In-scope exams\n(n_exam = {e['in_scope']:,}, n_frames = {c['frames']['sampled']:,})",
            f"Colour-Doppler frames\n(flagged {c['frames']['doppler']:,}, "
            f"excluded {c['frames']['excluded_doppler']:,})",
        ),
        (
            f"Dataset (unlabeled)\n(n_exam = {c['dataset']['exams']:,}, "
            f"n_images = {c['dataset']['images']:,}\nfrom {c['dataset']['patients']:,} patients)",
            None,
        ),
    ]


def draw(counts: dict[str, Any], path: Path | str) -> Path:
    """Write the flowchart PNG (matplotlib, Agg) and return its path."""
    from medssl.plots import plot_flowchart

    title = "medssl ingest — distribution of the export (cf. paper 000 Fig. 4)"
    return plot_flowchart(steps(counts), title, path)
