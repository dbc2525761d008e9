"""Pretrain stage: fit an encoder method (`pretrain.method`: pica, lsd …) on the unlabeled rows
through the one training loop, then write

    encoder.pt           the last epoch's module (backbone + method head) in the classifier's key
                         layout: `medssl train -S train.init=checkpoint -S
                         train.weights=OUT/encoder.pt` starts from its backbone (paper 000 §2.2.4)
    history.csv          one row per epoch: loss, the method's numbers (cluster sizes, val NMI …)
    metrics.json         the method's numbers; with Algorithm-1 predictions also the test
                         P/R/F1 of the unsupervised classifier (paper 000 Table 1 layout)
    table.txt            that table, when there is one
    pretrain.json        the run's summary (dataset path, encoder.pt's sha256)
    checkpoints/last.pt  the final state (`resume=True` with a larger budget trains on)
    + the method's files (clustering: assignments.parquet, clusters.json, predictions.parquet,
      model.pt — Algorithm 1's unsupervised classifier —, cluster_sizes.png, tsne.png)

Like `train`, the folder appears complete or not at all; a running or killed run lives in
`.<out>.partial/` and `resume=True` continues it exactly. Paper 000 §3.2: Adam, lr 1e-4,
batches of 16 unlabeled exams, 100 epochs, the last epoch's weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medssl.config import EvaluateConfig, PretrainConfig
from medssl.data.contract import PREDICTIONS_FILE
from medssl.engine.loop import CHECKPOINT_FILE, Callback
from medssl.fileio import sha256_file
from medssl.methods import EncoderMethod
from medssl.models import save_model
from medssl.stages.evaluate import (
    METRICS_FILE,
    TABLE_FILE,
    EvaluateResult,
    flat_metrics,
    format_table,
    read_predictions,
    score,
)
from medssl.stages.train import CHECKPOINT_DIR, HISTORY_FILE, fit_in_staging, write_history
from medssl.stages.train import PRETRAIN_SUMMARY_FILE as SUMMARY_FILE
from medssl.tracking.base import NullTracker, Tracker

ENCODER_FILE = "encoder.pt"
HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_nmi", "val_purity", "size_entropy"]
PLOT_SUFFIX = ".png"


@dataclass
class PretrainResult:
    out_dir: Path
    dataset: str
    method: str
    backbone: str
    epochs: int
    steps: int
    device: str
    images_per_s: float
    seconds: float
    train_images: int
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    resumed_from_step: int | None = None
    encoder_sha256: str | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """pretrain.json: everything but the output paths and the metrics (metrics.json)."""
        out = asdict(self)
        out.pop("paths")
        out.pop("metrics")
        out["out_dir"] = str(self.out_dir)
        return out

    def describe(self) -> str:
        m = self.metrics
        parts = []
        for key, label in (
            ("test_f1_weighted", "Algorithm-1 test weighted F1"),
            ("test_prevalence_f1_weighted", "prevalence baseline"),
            ("test_nmi", "test NMI"),
            ("size_entropy", "size entropy"),
        ):
            if m.get(key) is not None:
                parts.append(f"{label} {m[key]:.3f}")
        return (
            f"pre-trained {self.method} ({self.backbone}) on {self.train_images} images on "
            f"{self.device}: {self.steps} steps, {self.epochs} epochs, "
            f"{self.images_per_s:.0f} img/s, {self.seconds:.0f} s"
            + (f"; {', '.join(parts)}" if parts else "")
            + f"\nwrote {self.out_dir}/: {', '.join(sorted(p.name for p in self.paths.values()))}"
        )


def pretrain(
    dataset_dir: Path,
    out_dir: Path,
    cfg: PretrainConfig,
    *,
    hparams: BaseModel | None = None,
    resume: bool = False,
    progress: bool = True,
    tracker: Tracker | None = None,
    evaluate_cfg: EvaluateConfig | None = None,
    callbacks: Sequence[Callback] = (),
) -> PretrainResult:
    """Pre-train, then write the encoder folder, all of it or none of it (see the module doc).
    `hparams`: the method's params.yaml section (None: its defaults); `evaluate_cfg`: the
    bootstrap settings of the Algorithm-1 table; `callbacks`: the loop's (Ray Tune reports)."""
    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    run = fit_in_staging(
        "pretrain", "encoder", dataset_dir, out_dir, cfg, hparams,
        resume=resume, progress=progress, tracker=tracker, callbacks=callbacks,
    )  # fmt: skip
    with run as (method, trainer, fit, tmp):
        assert isinstance(method, EncoderMethod) and trainer.model is not None
        model, meta = method.export(trainer.model)
        save_model(tmp / ENCODER_FILE, model, {**meta, "epochs": fit.epochs, "steps": fit.steps})
        write_history(fit.history, tmp / HISTORY_FILE, HISTORY_COLUMNS)
        with trainer.ctx.inference(trainer.model, autocast=False):
            metrics = method.write_artifacts(trainer.model, trainer.ctx, tmp, fit.history)
        # table.txt: the method's own table (paper 001 Table 1 layout …), then Algorithm 1's
        tables = [t for t in [method.table(metrics)] if t]
        if (tmp / PREDICTIONS_FILE).is_file():
            # the unsupervised classifier (Algorithm 1), scored exactly like `medssl evaluate`
            classes, splits = read_predictions(tmp / PREDICTIONS_FILE)
            ecfg = evaluate_cfg or EvaluateConfig()
            scored = score(classes, splits["val"], splits["test"], ecfg)
            metrics = {**metrics, **scored.metrics}
            table = EvaluateResult(tmp, scored.metrics, bootstrap=ecfg.bootstrap, ci=ecfg.ci)
            tables.append(format_table(table))
        if tables:
            (tmp / TABLE_FILE).write_text("\n\n".join(tables) + "\n")
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        result = PretrainResult(
            out_dir=out_dir,
            dataset=str(Path(dataset_dir).resolve()),
            method=cfg.method,
            backbone=cfg.backbone,
            epochs=fit.epochs,
            steps=fit.steps,
            device=fit.device,
            images_per_s=round(fit.images_per_s, 1),
            seconds=round(fit.seconds, 2),
            train_images=len(method.train_rows),
            metrics=metrics,
            hyperparameters=(
                method.hparams.model_dump(mode="json", by_alias=True) if method.hparams else {}
            ),
            resumed_from_step=fit.resumed_from_step,
            encoder_sha256=sha256_file(tmp / ENCODER_FILE),
        )
        (tmp / SUMMARY_FILE).write_text(json.dumps(result.summary(), indent=2) + "\n")
        written = sorted(p.name for p in tmp.iterdir() if p.is_file())
    result.paths = {name: out_dir / name for name in written}
    result.paths["checkpoint"] = out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    tracker.log_metrics(
        {
            **flat_metrics(metrics),
            "train_images_per_s": fit.images_per_s,
            "train_seconds": fit.seconds,
        }
    )
    tracker.set_tags({"medssl.pretrain.device": fit.device, "medssl.pretrain.method": cfg.method})
    for name in written:
        if name.endswith((".json", ".csv", ".txt", PLOT_SUFFIX)):
            tracker.log_artifact(out_dir / name)
    return result
