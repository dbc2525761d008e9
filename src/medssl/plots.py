"""Plots written next to a stage's numbers (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_flowchart(rows: Sequence[tuple[str, str | None]], title: str, path: Path | str) -> Path:
    """A column of kept sets, top to bottom, each with the set it lost to the side (or None),
    like the papers' data flow figures (paper 000 Fig. 4, paper 002 Fig. 2); written atomically,
    byte-stable (no software tag)."""
    from medssl.fileio import atomic_write

    plt = _pyplot()
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
            ax.text(6.2, y - 0.9, dropped, ha="left", va="center", fontsize=8, bbox=side)
            ax.annotate("", xy=(6.0, y - 0.9), xytext=(3, y - 0.9), arrowprops=arrow)
    ax.set_title(title, fontsize=10)
    path = Path(path)
    save = {"format": "png", "dpi": 100, "bbox_inches": "tight", "metadata": {"Software": None}}
    atomic_write(path, lambda tmp: fig.savefig(tmp, **save))
    plt.close(fig)
    return path


def plot_cluster_sizes(sizes: np.ndarray, epochs: Sequence[int], path: Path, title: str) -> None:
    """Cluster-size distribution per epoch ([epochs, K] shares): each epoch's shares sorted from
    the largest cluster down (the shape a size prior acts on), early epochs light, late dark."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    cmap = plt.get_cmap("viridis")
    n = len(sizes)
    for i, (epoch, row) in enumerate(zip(epochs, sizes, strict=True)):
        colour = cmap(0.15 + 0.85 * i / max(n - 1, 1))
        label = f"epoch {epoch}" if i in (0, n - 1) else None
        ax.plot(np.arange(1, len(row) + 1), np.sort(row)[::-1], color=colour, lw=1.2, label=label)
    k = sizes.shape[1]
    ax.axhline(1 / k, color="grey", ls=":", lw=1, label=f"uniform (1/{k})")
    ax.set_xlabel("cluster rank (largest first)")
    ax.set_ylabel("share of the epoch's images")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_embedding(
    xy: np.ndarray | None,
    colourings: dict[str, tuple[np.ndarray, list[str]] | tuple[np.ndarray, list[str], np.ndarray]],
    path: Path,
    title: str,
) -> None:
    """A 2-D embedding (t-SNE) once per colouring: {panel title: (codes [n] with -1 = unknown,
    names of the codes[, the panel's own embedding, e.g. one per encoder])}; unknown points are
    drawn light grey underneath."""
    plt = _pyplot()
    n = len(colourings)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.6), squeeze=False)
    for ax, (panel, (codes, names, *own)) in zip(axes.ravel(), colourings.items(), strict=True):
        xy = own[0] if own else xy
        assert xy is not None, "an embedding for every panel"
        unknown = codes < 0
        if unknown.any():
            ax.scatter(xy[unknown, 0], xy[unknown, 1], s=3, c="#d9d9d9", label="unlabeled")
        cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
        for code, name in enumerate(names):
            sel = codes == code
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=cmap(code % cmap.N), label=name)
        ax.set_title(panel, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(names) <= 20:
            ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(
    history: Sequence[Mapping[str, float]], panels: Mapping[str, str], path: Path, title: str
) -> None:
    """One small panel per {title: history key} against the epoch (keys no epoch has are
    left out), e.g. paper 001 Fig. 2: NMI(t, t−1), NMI vs labels, purity and the CNN loss."""
    shown = {t: k for t, k in panels.items() if any(k in r for r in history)}
    if not shown:
        return
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(len(shown), 3)
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, key) in zip(axes.flat, shown.items(), strict=False):
        points = [(r["epoch"], r[key]) for r in history if key in r and np.isfinite(r[key])]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="." if len(points) < 40 else None, lw=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(frame, x: str, hue: str | None, metric: str, path: Path, title: str) -> None:
    """A sweep's metric per value of `x` (one box per value of `hue`, side by side; the trials'
    points on top), as paper 000 Fig. 5 shows weighted F1 per λ for PICA and LSD."""
    plt = _pyplot()
    xs = sorted(frame[x].dropna().unique(), key=_sort_key)
    hues = sorted(frame[hue].dropna().unique(), key=_sort_key) if hue else [None]
    width = 0.8 / len(hues)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(xs) * len(hues) ** 0.5 + 2), 3.8))
    cmap = plt.get_cmap("tab10")
    for j, h in enumerate(hues):
        rows = frame if h is None else frame[frame[hue] == h]
        data = [rows[rows[x] == v][metric].dropna().to_numpy() for v in xs]
        pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        keep = [i for i, d in enumerate(data) if len(d)]
        if not keep:
            continue
        colour = cmap(j % 10)
        box = ax.boxplot(
            [data[i] for i in keep],
            positions=pos[keep],
            widths=width * 0.85,
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "black"},
        )
        for patch in box["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.45)
        for i in keep:
            ax.scatter(np.full(len(data[i]), pos[i]), data[i], s=10, color=colour, zorder=3)
        ax.plot([], [], color=colour, lw=6, alpha=0.45, label=str(h) if h is not None else None)
    ax.set_xticks(np.arange(len(xs)))
    ax.set_xticklabels([f"{v:g}" if isinstance(v, float) else str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if hue:
        ax.legend(title=hue, fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sort_key(value: object) -> tuple[int, float | str]:
    return (0, float(value)) if isinstance(value, int | float | np.number) else (1, str(value))


def plot_fractions(table, path: Path) -> None:
    """Paper 000 Fig. 6: mean test weighted F1 against labeled images, one line per strategy
    with its 95 % CI band; left the FixMatch variants (One-Head vs Two-Head), right supervised
    against Two-Head (`table`: strategy, labeled, f1_weighted, ci_low, ci_high)."""
    plt = _pyplot()
    strategies = sorted(table["strategy"].unique())
    panels = [
        ("One-Head vs Two-Head", [s for s in strategies if "Head" in s]),
        ("supervised vs semi-supervised", [s for s in strategies if "One-Head" not in s]),
    ]
    panels = [(t, s) for t, s in panels if s]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    cmap = plt.get_cmap("tab10")
    colours = {s: cmap(i % 10) for i, s in enumerate(strategies)}
    for ax, (title, names) in zip(axes[0], panels, strict=True):
        for name in names:
            rows = table[table["strategy"] == name].sort_values("labeled")
            colour = colours[name]
            x = rows["labeled"].to_numpy()
            ax.plot(x, rows["f1_weighted"], marker="o", color=colour, label=name)
            ax.fill_between(x, rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("labeled train images")
        ax.set_ylabel("test weighted F1")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_cv(cells, variants: list[str], names: dict[str, str], path: Path) -> None:
    """Paper 004 Tables 1-2 at a glance: test AUC and MCR per variant, one point per fold × seed
    cell (a fold's cells joined across variants), the mean as a red bar (`cells`: variant, fold,
    seed, auc, mcr)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = {v: i for i, v in enumerate(variants)}
    panels = [("auc", "test AUC"), ("mcr", "MCR (lower is better)")]
    for ax, (key, label) in zip(axes, panels, strict=True):
        means = [cells.loc[cells["variant"] == v, key].mean() for v in variants]
        ax.scatter(range(len(variants)), means, marker="_", s=900, lw=2.5, color="#c44e52",
                   zorder=4, label="mean")  # fmt: skip
        for _, cell in cells.groupby(["fold", "seed"]):
            cell = cell[cell["variant"].isin(variants)].sort_values(
                "variant", key=lambda s: s.map(x)
            )
            ax.plot(cell["variant"].map(x), cell[key], color="grey", alpha=0.3, lw=0.8)
            ax.scatter(cell["variant"].map(x), cell[key], color="#4c72b0", s=10, zorder=3)
        ax.set_xticks(range(len(variants)), [names.get(v, v) for v in variants], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="lower left" if key == "auc" else "upper left")
    fig.suptitle("paper 004: per-fold test metrics (lines join a fold × seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_class_map(per: pd.DataFrame, path: Path, overall: float | None) -> None:
    """Paper 003 Fig. 4 for one model: test mAP@[.5:.95] per class, classes by box count."""
    plt = _pyplot()
    rows = per[per["boxes"] > 0].sort_values("boxes", ascending=False)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(rows)), rows["map"].fillna(0), color="#4c72b0")
    ax.set_xticks(
        range(len(rows)),
        [f"{c}\n(n={n})" for c, n in zip(rows["class"], rows["boxes"], strict=True)],
        rotation=60,
        fontsize=7,
        ha="right",
    )
    if overall is not None:
        ax.axhline(overall, color="#c44e52", ls="--", lw=1, label=f"mAP {overall:.3f}")
        ax.legend(fontsize=8)
    ax.set_ylabel("test mAP@[.5:.95]")
    ax.set_title("mAP per class (cf. paper 003 Fig. 4)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_class_map_by_labels(cells: pd.DataFrame, path: Path) -> None:
    """Paper 003 Fig. 4: test mAP per class (seeds averaged) against the share of labels used:
    the baseline at 100 %, then each pre-trained row at its fine-tuning share."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    classes = sorted({c for d in cells["per_class"] for c in d})
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(1, len(classes))))
    base = cells[(cells["arm"] == "baseline") & (cells["p"] == 0)]
    ssl = cells[cells["arm"] == "ssl"]
    for color, c in zip(colors, classes, strict=True):
        points = []
        for part, p in [(base, 0)] + [(ssl[ssl["p"] == q], q) for q in sorted(ssl["p"].unique())]:
            values = [d.get(c) for d in part["per_class"] if d.get(c) is not None]
            if values:
                points.append((100 - p, float(np.mean(values))))
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, "o-", color=color, lw=1.2, ms=3, label=c)
    ax.set_xlabel("labeled share of the training set (%) — 100: baseline")
    ax.set_ylabel("test mAP@[.5:.95]")
    ax.set_title("mAP per class against the labels used (cf. paper 003 Fig. 4)", fontsize=10)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
