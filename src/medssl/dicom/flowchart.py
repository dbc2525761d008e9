"""The ingest counts drawn like paper 000 Fig. 4: a column of kept sets, exclusions to the side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medssl.fileio import atomic_write


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = steps(counts)
    fig, ax = plt.subplots(figsize=(10, 1.7 * len(rows)))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, len(rows) * 2)
    ax.axis("off")
    box = {"boxstyle": "round,pad=0.5", "fc": "#eef3fb", "ec": "#1f4e9a"}
    side = {"boxstyle": "round,pad=0.5", "fc": "#fbeeee", "ec": "#9a1f1f"}
    arrow = {"arrowstyle": "-|>", "color": "#333333", "lw": 1.2}
    for i, (kept, dropped) in enumerate(rows):
        y = len(rows) * 2 - 1 - 2 * i
        ax.text(3, y, kept, ha="center", va="center", fontsize=9, bbox=box)
        if i + 1 < len(rows):
            ax.annotate("", xy=(3, y - 1.35), xytext=(3, y - 0.6), arrowprops=arrow)
        if dropped:
            ax.text(7.9, y - 0.9, dropped, ha="center", va="center", fontsize=8, bbox=side)
            ax.annotate("", xy=(6.0, y - 0.9), xytext=(3, y - 0.9), arrowprops=arrow)
    ax.set_title("medssl ingest — distribution of the export (cf. paper 000 Fig. 4)", fontsize=10)
    path = Path(path)
    save = {"format": "png", "dpi": 100, "bbox_inches": "tight", "metadata": {"Software": None}}
    atomic_write(path, lambda tmp: fig.savefig(tmp, **save))
    plt.close(fig)
    return path
