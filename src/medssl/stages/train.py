"""Train stage: fit `train.method` on a split dataset through the one training loop, then write

    model.pt             the best epoch's classifier or detector (medssl.models.save_model)
    predictions.parquet  a classifier's: one row per labeled val/test image: ids, split,
                         label_<c>, score_<c>; a detector's: one row per box of the val/test
                         images (readers', fused truth and detections: methods.faster_rcnn)
    history.csv          one row per epoch: epoch, step, train_loss, val_loss, val_f1_weighted,
                         seconds, images_per_s
    train.json           the run's summary (with the dataset path and model.pt's sha256)
    checkpoints/last.pt  the final state (`resume=True` with a larger budget trains on)

The folder appears complete or not at all; a running or killed run lives in `.<out>.partial/`
(its checkpoints/last.pt: `resume=True` continues it exactly).

Paper 000 §3.2: Adam, lr 1e-4, batches of t exams, early stopping after 7 epochs without a
validation improvement, the best validation epoch's weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from medssl.config import LoopConfig, TrainConfig
from medssl.data.cache import open_cache
from medssl.data.contract import LABELED_SPLITS, PREDICTIONS_FILE, Dataset, write_table
from medssl.data.splitting import LABEL_FRACTION_COLUMN, cv_split
from medssl.engine.checkpoint import load_checkpoint
from medssl.engine.loop import CHECKPOINT_FILE, Callback, FitResult, Trainer
from medssl.engine.method import Method
from medssl.errors import DataContractError, Interrupted
from medssl.fileio import partial_dir, sha256_file, staged_dir
from medssl.methods import get_method
from medssl.methods.base import DatasetMethod
from medssl.models import save_model
from medssl.tracking.base import NullTracker, Tracker

MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "train.json"
PRETRAIN_SUMMARY_FILE = "pretrain.json"  # the pretrain stage's summary (stages.pretrain)
CHECKPOINT_DIR = "checkpoints"
TRAIN_PRODUCTS = ("classifier", "detector")  # what `medssl train` makes
F1_MONITOR = "val_f1_weighted"  # the classifiers' (paper 000 §3.2)
HISTORY_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_f1_weighted",
    "seconds",
    "images_per_s",
]


@dataclass
class TrainResult:
    out_dir: Path
    dataset: str  # the split dataset it was trained on (absolute): register's default
    method: str
    backbone: str
    init: str
    best_epoch: int | None
    epochs: int
    steps: int
    stopped_early: bool
    device: str
    images_per_s: float
    seconds: float
    best_val_f1_weighted: float | None  # a classifier's best val weighted F1
    train_images: int
    label_fraction: float
    cv_folds: int = 0  # > 0: a cross-validation round; its test rows are fold cv_fold
    cv_fold: int = 0
    monitor: str | None = F1_MONITOR  # the val metric that picked the best epoch
    best_val_score: float | None = None  # its best value (a detector's val_map)
    resumed_from_step: int | None = None
    model_sha256: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # the method's section
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """train.json: everything but the output paths."""
        out = asdict(self)
        out.pop("paths")
        out["out_dir"] = str(self.out_dir)
        return out

    def describe(self) -> str:
        score = "n/a" if self.best_val_score is None else f"{self.best_val_score:.3f}"
        stop = "early stop" if self.stopped_early else "budget reached"
        return (
            f"trained {self.method} ({self.backbone}, init {self.init}) on {self.train_images} "
            f"images (label fraction {self.label_fraction:g}) on {self.device}: "
            f"{self.steps} steps, {self.epochs} epochs ({stop}), {self.images_per_s:.0f} img/s, "
            f"{self.seconds:.0f} s; best epoch {self.best_epoch}, {self.monitor} {score}\n"
            f"wrote {self.out_dir}/: {', '.join(p.name for p in self.paths.values())}"
        )


def train(
    dataset_dir: Path,
    out_dir: Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    tracker: Tracker | None = None,
    hparams: BaseModel | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train, then write the model folder, all of it or none of it: the run works in the
    sibling `.<out>.partial/` (its checkpoints survive a kill or Ctrl-C there), which replaces
    `out_dir` only once every file is written. `resume` continues from the partial run's
    checkpoint, or from a finished run's final one (a finished run is not retrained: its outputs
    are written again). `hparams`: the method's section of params.yaml (None: its defaults);
    `callbacks`: the loop's (per-epoch reports to Ray Tune …)."""
    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    run = fit_in_staging(
        "train", TRAIN_PRODUCTS, dataset_dir, out_dir, cfg, hparams,
        resume=resume, progress=progress, tracker=tracker, callbacks=callbacks,
    )  # fmt: skip
    with run as (method, trainer, fit, tmp):
        assert isinstance(method, DatasetMethod) and trainer.model is not None
        predictions = method.predictions(trainer.model, trainer.ctx)
        write_table(predictions, tmp / PREDICTIONS_FILE)
        model, meta = method.export(trainer.model)
        save_model(tmp / MODEL_FILE, model, {**meta, "best_epoch": fit.best_epoch})
        write_history(fit.history, tmp / HISTORY_FILE, HISTORY_COLUMNS)
        result = TrainResult(
            out_dir=out_dir,
            dataset=str(Path(dataset_dir).resolve()),
            method=cfg.method,
            backbone=cfg.backbone,
            init=cfg.init,
            best_epoch=fit.best_epoch,
            epochs=fit.epochs,
            steps=fit.steps,
            stopped_early=fit.stopped_early,
            device=fit.device,
            images_per_s=round(fit.images_per_s, 1),
            seconds=round(fit.seconds, 2),
            best_val_f1_weighted=fit.best_score if method.monitor == F1_MONITOR else None,
            monitor=method.monitor,
            best_val_score=fit.best_score,
            train_images=len(method.train_rows),
            label_fraction=cfg.label_fraction,
            cv_folds=cfg.cv_folds,
            cv_fold=cfg.cv_fold,
            resumed_from_step=fit.resumed_from_step,
            model_sha256=sha256_file(tmp / MODEL_FILE),
            hyperparameters=(
                method.hparams.model_dump(mode="json", by_alias=True) if method.hparams else {}
            ),
        )
        (tmp / SUMMARY_FILE).write_text(json.dumps(result.summary(), indent=2) + "\n")
    result.paths = {
        "model": out_dir / MODEL_FILE,
        "predictions": out_dir / PREDICTIONS_FILE,
        "history": out_dir / HISTORY_FILE,
        "summary": out_dir / SUMMARY_FILE,
        "checkpoint": out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE,
    }
    summary_metrics = {
        f"best_{method.monitor}": fit.best_score,
        "best_epoch": fit.best_epoch,
        "train_images_per_s": fit.images_per_s,
        "train_seconds": fit.seconds,
    }
    tracker.log_metrics({k: float(v) for k, v in summary_metrics.items() if v is not None})
    tracker.set_tags({"medssl.train.device": fit.device, "medssl.train.method": cfg.method})
    for name in ("history", "summary"):
        tracker.log_artifact(result.paths[name])
    return result


@contextlib.contextmanager
def fit_in_staging(
    stage: str,
    product: str | tuple[str, ...],
    dataset_dir: Path,
    out_dir: Path,
    cfg: LoopConfig,
    hparams: BaseModel | None,
    *,
    resume: bool,
    progress: bool,
    tracker: Tracker,
    callbacks: Sequence[Callback] = (),
) -> Iterator[tuple[Method, Trainer, FitResult, Path]]:
    """What `train` and `pretrain` share: the `<stage>.method` (which must make `product`) fitted
    through the one loop in the staging folder `.<out>.partial/` (checkpoints survive a kill
    there; `resume` continues from them or from a finished run's final checkpoint). The body
    writes the outputs into `tmp`, which then replaces `out_dir` as a whole."""
    dataset = Dataset.open(dataset_dir)
    method_cls = get_method(cfg.method, product, stage)
    staging = partial_dir(out_dir)
    if resume:
        resume_from_finished(out_dir, staging)
    else:
        shutil.rmtree(staging, ignore_errors=True)
    # a decoding bar on a terminal only (None)
    cache = open_cache(
        dataset, cfg.cache_dir, workers=cfg.workers, progress=None if progress else False
    )
    if isinstance(cfg, TrainConfig) and cfg.cv_folds:
        dataset = cross_validation_round(dataset, cfg.cv_folds, cfg.cv_fold)
    method = method_cls(cfg, dataset, cache, hparams)  # type: ignore[call-arg]
    with staged_dir(out_dir, staging=staging) as tmp:
        trainer = Trainer(
            method,
            cfg,
            tmp / CHECKPOINT_DIR,
            tracker=tracker,
            progress=progress,
            callbacks=callbacks,
            fingerprint={"dataset": cache.key},  # hashed once, by open_cache
        )
        try:
            fit = trainer.fit(resume=resume)
        except KeyboardInterrupt:
            raise Interrupted(interrupted(trainer, stage, dataset_dir, out_dir)) from None
        yield method, trainer, fit, tmp


def cross_validation_round(dataset: Dataset, folds: int, fold: int) -> Dataset:
    """The dataset as round `fold` of a patient-grouped k-fold cross-validation sees it
    (splitting.cv_split: the held-out fold is test, the other labeled rows train, no val; folds
    drawn with seed 0, the same for every method and seed so rounds pair up). The label-fraction
    column goes: cross-validation trains on every labeled row."""
    m = dataset.manifest
    patients = m.loc[m["split"].isin(list(LABELED_SPLITS)), "patient_id"].nunique()
    if patients < folds:
        raise DataContractError(
            f"{dataset.root}: {patients} labeled patient(s) cannot fill train.cv_folds={folds} "
            "patient-disjoint folds"
        )
    manifest = m.drop(columns=[LABEL_FRACTION_COLUMN], errors="ignore")
    manifest = manifest.assign(split=cv_split(m, folds, fold))
    return dataclasses.replace(dataset, manifest=manifest)


def write_history(history: list[dict[str, float]], path: Path, first: list[str]) -> None:
    """history.csv: one row per epoch, the `first` columns first (absent ones empty)."""
    table = pd.DataFrame(history)
    columns = first + [c for c in table.columns if c not in first]
    path.write_text(table.reindex(columns=columns).to_csv(index=False))


def read_summary(model_dir: Path) -> dict[str, Any]:
    """A model folder's train.json, or an encoder folder's pretrain.json ({} when it has
    neither or it is unreadable)."""
    for name in (SUMMARY_FILE, PRETRAIN_SUMMARY_FILE):
        try:
            summary = json.loads((Path(model_dir) / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        return summary if isinstance(summary, dict) else {}
    return {}


def resume_from_finished(out_dir: Path, staging: Path) -> None:
    """--resume without a partial run: start from the finished run's final checkpoint (hard
    link when possible: checkpoints are replaced, never modified in place)."""
    partial = staging / CHECKPOINT_DIR / CHECKPOINT_FILE
    finished = out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if partial.is_file() or not finished.is_file():
        return
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(finished, partial)
    except OSError:
        shutil.copy2(finished, partial)


def interrupted(trainer: Trainer, command: str, dataset_dir: Path, out_dir: Path) -> str:
    """The one line for Ctrl-C / SIGTERM: where the last checkpoint is and how to continue."""
    path = trainer.checkpoint_path
    saved = None
    if path is not None and path.is_file():
        with contextlib.suppress(Exception):
            saved = int(load_checkpoint(path)["loop"]["step"])
    if saved is None:
        return f"interrupted at step {trainer.state.step} before the first checkpoint"
    return (
        f"interrupted at step {trainer.state.step}; the checkpoint of step {saved} is kept in "
        f"{path.parent}: continue with `medssl {command} {dataset_dir} --out {out_dir} --resume`"
    )
