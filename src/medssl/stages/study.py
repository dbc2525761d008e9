"""The label-fraction study (paper 000 §3.3.2, Fig. 1 and Fig. 6): what each way of using the
unlabeled images buys at each amount of labels.

Strategies (Fig. 1), each a `train.method`/`train.init` variant of one `medssl tune` sweep:

    1  supervised from random (or ImageNet) weights
    2  supervised from the deep-clustering encoder
    3  FixMatch One-Head / Two-Head from random weights
    4  FixMatch One-Head / Two-Head from the deep-clustering encoder

× `train.label_fraction` (the split stage's nested subsets) × seeds, each cell train → evaluate.
The encoder is pre-trained once (`pretrain`, into OUT/encoder/) or given, and every cell that
starts from it reads it. The sweep is the tune preset `label-fractions` (its budget, seeds and
concurrency are params), so it runs wherever `medssl tune` runs (local Ray, a Ray cluster, the
KFP tune component), is one MLflow sweep run with a child run per cell, and `--resume` reruns only
the cells that did not finish. Then the report, written to OUT and logged to the sweep run:

    study.md / study.json   mean and exam-bootstrap 95 % CI per strategy × fraction, and the
                            paired effects the paper reports (Two-Head − One-Head, encoder −
                            random, FixMatch − supervised), pooled over seeds
    fig6.png                weighted F1 against labeled images, one line per strategy, CI bands
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medssl.config import EvaluateConfig, Params, TuneConfig
from medssl.data.contract import PREDICTIONS_FILE
from medssl.errors import ConfigError, DataContractError
from medssl.fileio import atomic_write_text
from medssl.stages.tune import RAY_DIR, RESULTS_FILE, TRIALS_DIR, can_restore, markdown_table

PRESET = "label-fractions"
VARIANT_KEY = "train.method,train.init"
FRACTION_KEY = "train.label_fraction"
ENCODER_DIR = "encoder"
SWEEP_DIR = "sweep"
REPORT_FILE = "study.md"
REPORT_JSON = "study.json"
PLOT_FILE = "fig6.png"
# (train.method, train.init) → the strategy's name in Fig. 1's numbering
STRATEGIES = {
    ("supervised", "random"): "1 supervised",
    ("supervised", "imagenet"): "1 supervised (ImageNet)",
    ("supervised", "checkpoint"): "2 encoder + supervised",
    ("fixmatch-onehead", "random"): "3 One-Head",
    ("fixmatch-twohead", "random"): "3 Two-Head",
    ("fixmatch-onehead", "imagenet"): "3 One-Head (ImageNet)",
    ("fixmatch-twohead", "imagenet"): "3 Two-Head (ImageNet)",
    ("fixmatch-onehead", "checkpoint"): "4 encoder + One-Head",
    ("fixmatch-twohead", "checkpoint"): "4 encoder + Two-Head",
}
# the paper's comparisons: (name, strategy a, strategy b) for Δ = a − b
EFFECTS = (
    ("Two-Head − One-Head (random init)", "3 Two-Head", "3 One-Head"),
    ("Two-Head − One-Head (encoder init)", "4 encoder + Two-Head", "4 encoder + One-Head"),
    ("encoder − random, supervised", "2 encoder + supervised", "1 supervised"),
    ("encoder − random, Two-Head", "4 encoder + Two-Head", "3 Two-Head"),
    ("Two-Head − supervised (random init)", "3 Two-Head", "1 supervised"),
    ("Two-Head − supervised (encoder init)", "4 encoder + Two-Head", "2 encoder + supervised"),
)


@dataclass
class StudyResult:
    out_dir: Path
    table: pd.DataFrame
    effects: pd.DataFrame
    sweep_run_id: str | None
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> str:
        return "\n".join(
            [
                markdown_table(self.table),
                "",
                markdown_table(self.effects, "(no pair of strategies to compare)"),
                "",
                *([f"MLflow sweep run {self.sweep_run_id}"] if self.sweep_run_id else []),
                f"wrote {self.out_dir}/: {', '.join(sorted(p.name for p in self.paths.values()))}",
            ]
        )


def label_fraction_study(
    dataset_dir: Path,
    out_dir: Path,
    params: Params,
    *,
    encoder: Path | None = None,
    updates: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    track: bool = True,
) -> StudyResult:
    """Pre-train once (unless `encoder` is given), run the `label-fractions` sweep with every
    cell reading that encoder, then write the report. `updates`: tune settings over the preset
    (seeds, max_concurrent …)."""
    out_dir = Path(out_dir).resolve()
    cfg = params.tune.with_preset(PRESET).with_updates(updates or {})
    if cfg.address:
        raise ConfigError(
            f"tune.address={cfg.address}: the study runs its cells with this machine's Ray (on "
            "a cluster: the KFP label_fractions pipeline); submitting them as a Ray Job needs the "
            "encoder uploaded with the dataset, which is not supported yet"
        )
    encoder_file = (
        Path(encoder).resolve()
        if encoder
        else pretrained_encoder(
            dataset_dir, out_dir / ENCODER_DIR, params, progress=progress, track=track
        )
    )
    if not encoder_file.is_file():
        raise ConfigError(f"--encoder {encoder_file}: not found (a pretrain run's encoder.pt)")
    space = {"train.weights": str(encoder_file)}
    return sweep_and_report(
        dataset_dir, out_dir, params, cfg, space, PRESET,
        lambda: write_report(out_dir, out_dir / SWEEP_DIR, params.evaluate),
        resume=resume, progress=progress, track=track,
    )  # fmt: skip


def sweep_and_report(
    dataset_dir: Path,
    out_dir: Path,
    params: Params,
    cfg: TuneConfig,
    space: dict[str, Any],
    preset: str,
    report: Callable[[], Any],
    *,
    resume: bool,
    progress: bool,
    track: bool,
) -> Any:
    """What every study does: its preset's sweep into OUT/sweep (a study killed before its sweep
    started resumes by starting it), then `report()` (a result with `paths`, `sweep_run_id` and
    `seconds`), whose files are logged to the sweep's MLflow run under `study/`."""
    from medssl.stages.tune import tune_sweep

    storage = cfg.storage or str(out_dir / SWEEP_DIR / RAY_DIR)
    sweep = tune_sweep(
        dataset_dir,
        out_dir / SWEEP_DIR,
        params,
        cfg,
        space,
        name=preset,
        resume=resume and can_restore(storage, preset),
        progress=progress,
        track=track,
    )
    result = report()
    result.sweep_run_id, result.seconds = sweep.sweep_run_id, sweep.seconds
    if sweep.sweep_run_id:
        from medssl.tracking.runs import client

        mc = client()
        for path in result.paths.values():
            mc.log_artifact(sweep.sweep_run_id, str(path), "study")
    return result


def pretrained_encoder(
    dataset_dir: Path, folder: Path, params: Params, *, progress: bool, track: bool
) -> Path:
    """The study's deep-clustering encoder: `pretrain` into `folder` once (a finished run is
    reused, a killed one continues from its checkpoint)."""
    from medssl.fileio import partial_dir
    from medssl.stages.pretrain import pretrain
    from medssl.tracking.runs import tracked_stage

    encoder = folder / "encoder.pt"
    if encoder.is_file():
        return encoder
    run = tracked_stage("pretrain", params, dataset_dir, track)
    with run as tracker:
        pretrain(
            dataset_dir,
            folder,
            params.pretrain,
            hparams=params.method_params(params.pretrain.method),
            resume=partial_dir(folder).is_dir(),
            progress=progress,
            tracker=tracker,
            evaluate_cfg=params.evaluate,
        )
    return encoder


# --- the report -------------------------------------------------------------------------------


def write_report(out_dir: Path, sweep_dir: Path, evaluate_cfg: EvaluateConfig) -> StudyResult:
    """study.md, study.json and fig6.png from the sweep's results.csv and trial folders."""
    frame = pd.read_csv(sweep_dir / RESULTS_FILE)
    done = frame[frame["status"] == "completed"].copy()
    if done.empty:
        raise ConfigError(f"{sweep_dir}: no completed cell to report")
    missing = [k for k in (VARIANT_KEY, FRACTION_KEY) if k not in done]
    if missing:
        raise ConfigError(
            f"{sweep_dir}: the study's space must search {missing[0]} (tune.presets.{PRESET})"
        )
    done["strategy"] = [_strategy(v) for v in done[VARIANT_KEY]]
    cells = _decisions(done, sweep_dir / TRIALS_DIR)
    table = strategy_table(cells, evaluate_cfg)
    effects = effect_table(cells, evaluate_cfg)
    lines = [
        "# Label-fraction study (paper 000 Fig. 6)",
        "",
        "Test weighted F1 (thresholds tuned on val), mean over seeds, 95 % CI from resampling "
        "test exams (it covers the test sample, not the seed spread); labeled = train images "
        "in the label-fraction subset.",
        "",
        markdown_table(table),
        "",
        "Paired effects over the same test exams, seeds pooled (Δ = a − b, 95 % CI):",
        "",
        markdown_table(effects, "(no pair of strategies to compare)"),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / REPORT_FILE, "json": out_dir / REPORT_JSON}
    atomic_write_text(paths["report"], "\n".join(lines) + "\n")
    payload = {
        "table": table.to_dict(orient="records"),
        "effects": effects.to_dict(orient="records"),
    }
    atomic_write_text(paths["json"], json.dumps(payload, indent=2) + "\n")
    from medssl.plots import plot_fractions

    plot_fractions(table, out_dir / PLOT_FILE)
    paths["plot"] = out_dir / PLOT_FILE
    return StudyResult(out_dir, table, effects, None, 0.0, paths)


@dataclass
class _Cell:
    strategy: str
    fraction: float
    labeled: int
    y: np.ndarray
    exams: np.ndarray
    decisions: list[np.ndarray]  # one per seed


def _strategy(variant: str) -> str:
    method, _, init = str(variant).partition("/")
    return STRATEGIES.get((method, init), f"{method} ({init})")


def _decisions(done: pd.DataFrame, trials_dir: Path) -> dict[tuple[str, float], _Cell]:
    """Per (strategy, fraction), the test decisions of every seed at its own val thresholds."""
    from medssl.stages.evaluate import score_predictions

    cells: dict[tuple[str, float], _Cell] = {}
    first: tuple[Path, Any] | None = None
    for row in done.to_dict(orient="records"):
        folder = trials_dir / str(row["trial"]) / "train"
        test, scored = score_predictions(folder / PREDICTIONS_FILE, EvaluateConfig(bootstrap=0))
        if first is None:
            first = (folder, test)
        elif not (
            np.array_equal(first[1].exams, test.exams) and np.array_equal(first[1].y, test.y)
        ):  # effects pair rows by position: every cell must score the same test rows
            raise DataContractError(
                f"{folder}: its test rows differ from {first[0]}'s (the dataset changed "
                "between cells?): rerun the study into a new --out"
            )
        fraction = float(row[FRACTION_KEY])
        key = (str(row["strategy"]), fraction)
        if key not in cells:
            summary = json.loads((folder / "train.json").read_text())
            cells[key] = _Cell(
                key[0], fraction, int(summary["train_images"]), test.y, test.exams, []
            )
        cells[key].decisions.append(scored.test_pred)
    return cells


def strategy_table(cells: dict[tuple[str, float], _Cell], cfg: EvaluateConfig) -> pd.DataFrame:
    """One row per strategy × fraction: labeled images, seeds, mean test weighted F1 and the
    exam-bootstrap CI of that mean."""
    from medssl.metrics.bootstrap import bootstrap_paired_difference

    rows = []
    for (strategy, fraction), cell in sorted(cells.items()):
        ci = bootstrap_paired_difference(
            cell.y, cell.decisions, [], cell.exams, cfg.bootstrap, cfg.ci, cfg.seed
        )
        rows.append(
            {
                "strategy": strategy,
                "label_fraction": fraction,
                "labeled": cell.labeled,
                "seeds": len(cell.decisions),
                "f1_weighted": round(ci.estimate, 4),
                "ci_low": round(ci.low, 4),
                "ci_high": round(ci.high, 4),
            }
        )
    return pd.DataFrame(rows)


def effect_table(cells: dict[tuple[str, float], _Cell], cfg: EvaluateConfig) -> pd.DataFrame:
    """The paper's comparisons at every fraction both sides ran: Δ mean F1 paired over the same
    test exams (one resampling for both sides), seeds pooled."""
    from medssl.metrics.bootstrap import bootstrap_paired_difference

    fractions = sorted({f for _, f in cells})
    rows = []
    for name, a, b in EFFECTS:
        for fraction in fractions:
            ca, cb = cells.get((a, fraction)), cells.get((b, fraction))
            if ca is None or cb is None:
                continue
            ci = bootstrap_paired_difference(
                ca.y, ca.decisions, cb.decisions, ca.exams, cfg.bootstrap, cfg.ci, cfg.seed
            )
            rows.append(
                {
                    "effect": name,
                    "label_fraction": fraction,
                    "delta": round(ci.estimate, 4),
                    "ci_low": round(ci.low, 4),
                    "ci_high": round(ci.high, 4),
                    "seeds": f"{len(ca.decisions)}/{len(cb.decisions)}",
                }
            )
    return pd.DataFrame(
        rows, columns=["effect", "label_fraction", "delta", "ci_low", "ci_high", "seeds"]
    )
