"""Train stage: fit `train.method` on a split dataset through the one training loop, then write

    model.pt             the best epoch's classifier (medssl.models.save_model)
    predictions.parquet  one row per labeled val/test image: ids, split, label_<c>, score_<c>
    history.csv          one row per epoch: epoch, step, train_loss, val_loss, val_f1_weighted,
                         seconds, images_per_s
    train.json           the run's summary
    checkpoints/last.pt  resumable state (`resume=True` continues a killed run exactly)

Paper 000 §3.2: Adam, lr 1e-4, batches of t exams, early stopping after 7 epochs without a
validation improvement, the best validation epoch's weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medssl.config import TrainConfig
from medssl.data.cache import open_cache
from medssl.data.contract import PREDICTIONS_FILE, Dataset, write_table
from medssl.engine.loop import CHECKPOINT_FILE, Trainer
from medssl.errors import ConfigError
from medssl.fileio import atomic_write, atomic_write_text
from medssl.methods import MultilabelMethod, get_method
from medssl.models import save_model
from medssl.tracking.base import NullTracker, Tracker

MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "train.json"
CHECKPOINT_DIR = "checkpoints"
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
    best_val_f1_weighted: float | None
    train_images: int
    label_fraction: float
    resumed_from_step: int | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """train.json: everything but the output paths."""
        out = asdict(self)
        out.pop("paths")
        out["out_dir"] = str(self.out_dir)
        return out

    def describe(self) -> str:
        f1 = "n/a" if self.best_val_f1_weighted is None else f"{self.best_val_f1_weighted:.3f}"
        stop = "early stop" if self.stopped_early else "budget reached"
        return (
            f"trained {self.method} ({self.backbone}, init {self.init}) on {self.train_images} "
            f"images (label fraction {self.label_fraction:g}) on {self.device}: "
            f"{self.steps} steps, {self.epochs} epochs ({stop}), {self.images_per_s:.0f} img/s, "
            f"{self.seconds:.0f} s; best epoch {self.best_epoch}, val weighted F1 {f1}\n"
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
) -> TrainResult:
    """Train, then write the model folder. `resume` continues from out_dir/checkpoints/last.pt
    when it exists (a finished run is not retrained: its outputs are written again)."""
    tracker = tracker or NullTracker()
    dataset = Dataset.open(dataset_dir)
    method_cls = get_method(cfg.method)
    if not issubclass(method_cls, MultilabelMethod):
        raise ConfigError(
            f"train.method {cfg.method!r} does not produce a classifier; the train stage "
            "needs one (pre-training methods run in their own stage)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a decoding bar on a terminal only (None)
    cache = open_cache(
        dataset, cfg.cache_dir, workers=cfg.workers, progress=None if progress else False
    )
    method = method_cls(cfg, dataset, cache)
    trainer = Trainer(
        method,
        cfg,
        out_dir / CHECKPOINT_DIR,
        tracker=tracker,
        progress=progress,
        fingerprint={"dataset": cache.key},  # hashed once, by open_cache
    )
    fit = trainer.fit(resume=resume)
    assert trainer.model is not None

    paths = {
        "model": out_dir / MODEL_FILE,
        "predictions": out_dir / PREDICTIONS_FILE,
        "history": out_dir / HISTORY_FILE,
        "summary": out_dir / SUMMARY_FILE,
        "checkpoint": out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE,
    }
    predictions = method.predictions(trainer.model, trainer.ctx)
    atomic_write(paths["predictions"], lambda tmp: write_table(predictions, tmp))
    model, meta = method.export(trainer.model)
    save_model(paths["model"], model, {**meta, "best_epoch": fit.best_epoch})
    history = pd.DataFrame(fit.history)
    columns = HISTORY_COLUMNS + [c for c in history.columns if c not in HISTORY_COLUMNS]
    history = history.reindex(columns=columns)
    atomic_write_text(paths["history"], history.to_csv(index=False))

    result = TrainResult(
        out_dir=out_dir,
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
        best_val_f1_weighted=fit.best_score,
        train_images=len(method.train_rows),
        label_fraction=cfg.label_fraction,
        resumed_from_step=fit.resumed_from_step,
        paths=paths,
    )
    atomic_write_text(paths["summary"], json.dumps(result.summary(), indent=2) + "\n")
    summary_metrics = {
        "best_val_f1_weighted": fit.best_score,
        "best_epoch": fit.best_epoch,
        "train_images_per_s": fit.images_per_s,
        "train_seconds": fit.seconds,
    }
    tracker.log_metrics({k: float(v) for k, v in summary_metrics.items() if v is not None})
    tracker.set_tags({"medssl.train.device": fit.device, "medssl.train.method": cfg.method})
    for name in ("history", "summary"):
        tracker.log_artifact(paths[name])
    return result
