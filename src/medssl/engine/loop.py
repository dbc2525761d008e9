"""THE training loop: every method trains through `Trainer.fit`.

The loop owns the device (cfg.device, auto → cuda when available), bf16 autocast on CUDA
(cfg.amp), channels_last (cfg.channels_last), the optimizer (cfg.optimizer: Adam, paper 000
§3.2, or SGD with momentum, paper 001 §4), checkpoints every cfg.checkpoint_every steps and at the
end (model, optimizer, stream positions, method state, every RNG, early-stopping state, history —
one file, snapshotted to the CPU at the step and written atomically by a background thread), exact
resume, validation and early stopping once per epoch (cfg.patience, best epoch's weights restored
at the end), a step budget (cfg.max_steps) instead of epochs, a progress bar and metrics streamed
to a tracker.

One step: one batch of rows from every stream → method.make_batch (load + augment on the
device) → method.loss under autocast → backward → optimizer step → method.after_step.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from medssl.config import LoopConfig
from medssl.engine.checkpoint import (
    CheckpointWriter,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    to_cpu,
)
from medssl.engine.context import Context, resolve_device
from medssl.engine.early_stopping import EarlyStopping
from medssl.engine.method import Method, StepOutput
from medssl.errors import ConfigError, ResourceError, RunFailed
from medssl.tracking.base import NullTracker, Tracker

CHECKPOINT_FILE = "last.pt"
# Config keys that define "the same run": a checkpoint written under other values is refused on
# resume (with the method's hyperparameters). Budgets, patience, device and I/O settings may
# change between a run and its resume. Keys a stage's config lacks count as None.
RESUME_KEYS = (
    "method",
    "backbone",
    "init",
    "weights",
    "optimizer",
    "lr",
    "lr_decay_every",
    "lr_decay",
    "momentum",
    "weight_decay",
    "batch_exams",
    "max_batch_images",
    "label_fraction",
    "cv_folds",
    "cv_fold",
    "seed",
)


class Callback:
    """Hooks for code outside the method (tests, tuning reporters); every hook is optional."""

    def on_step_end(self, trainer: Trainer, output: StepOutput) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        pass


@dataclass
class LoopState:
    """Counters of the run (saved in the checkpoint)."""

    step: int = 0
    finished: bool = False
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    # the current (partial) epoch
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    # the whole run
    train_images: int = 0
    train_seconds: float = 0.0
    val_seconds: float = 0.0


@dataclass
class FitResult:
    history: list[dict[str, float]]
    steps: int
    epochs: int
    best_epoch: int | None
    best_score: float | None
    stopped_early: bool
    device: str
    seconds: float
    images_per_s: float
    resumed_from_step: int | None = None


def make_optimizer(
    cfg: LoopConfig, params: Iterable[torch.Tensor] | list[dict[str, Any]], device: torch.device
) -> torch.optim.Optimizer:
    """cfg.optimizer at a fixed learning rate: Adam (paper 000 §3.2: lr 1e-4) or SGD with
    momentum (paper 001 §4: lr 0.05, momentum 0.9, weight decay 1e-5)."""
    fused = True if device.type == "cuda" else None  # one kernel per update on GPU
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def decay_learning_rate(opt: torch.optim.Optimizer, cfg: LoopConfig, epoch: int) -> None:
    """Step decay (paper 004 §3.1: ×0.1 every 50 epochs): each group's lr is its initial lr ×
    lr_decay^(epoch // lr_decay_every), a function of the epoch alone (a resumed run agrees)."""
    if cfg.lr_decay_every is None:
        return
    factor = cfg.lr_decay ** (epoch // cfg.lr_decay_every)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * factor


class Trainer:
    """Train `method` under `cfg`. `checkpoint_dir` None disables checkpoints (and resume).
    `fingerprint` is extra plain data that must match on resume (e.g. the dataset's hash)."""

    def __init__(
        self,
        method: Method,
        cfg: LoopConfig,
        checkpoint_dir: Path | None = None,
        *,
        tracker: Tracker | None = None,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        fingerprint: dict[str, Any] | None = None,
        log_every: int = 10,
    ) -> None:
        self.method = method
        self.cfg = cfg
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.tracker = tracker or NullTracker()
        self.progress = progress
        self.callbacks = list(callbacks)
        self.fingerprint = {
            **{k: getattr(cfg, k, None) for k in RESUME_KEYS},
            "method_class": type(method).__name__,
            **method.fingerprint(),
            **(fingerprint or {}),
        }
        self.log_every = log_every
        self.ctx = Context.create(resolve_device(cfg.device), cfg.seed, cfg.amp, cfg.channels_last)
        self.writer = CheckpointWriter()
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.state = LoopState()

    @property
    def checkpoint_path(self) -> Path | None:
        return self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None

    # --- setup ------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        seed_everything(cfg.seed)
        model = ctx.prepare(self.method.build_model(ctx))
        self.optimizer = make_optimizer(cfg, self.method.optimizer_params(model), ctx.device)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.model = model
        self.streams = self.method.streams()
        if not self.streams:
            raise ValueError(f"method {self.method.name!r} has no data streams")
        self.primary = next(iter(self.streams.values()))
        monitored = self.method.monitor is not None
        # paper 000 §3.2: early stopping for supervised training; a fixed step budget
        # (semi-supervised) only selects the best epoch
        self.early = EarlyStopping(cfg.patience, enabled=monitored and cfg.max_steps is None)
        self.state = LoopState()
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            # temporaries of a killed run's unfinished checkpoint write
            for stale in self.checkpoint_dir.glob(f".{CHECKPOINT_FILE}.tmp-*"):
                stale.unlink(missing_ok=True)

    def _total_steps(self) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        return self.cfg.max_epochs * len(self.primary)

    # --- checkpoints ------------------------------------------------------------------------

    def save(self) -> None:
        """Snapshot the run to the CPU now; the file is written in the background."""
        if self.checkpoint_path is None:
            return
        assert self.model is not None and self.optimizer is not None
        early = self.early.state_dict()
        # already a CPU copy that is replaced, never modified in place: no second copy
        best_state = early.pop("best_state")
        snapshot = to_cpu(
            {
                "fingerprint": self.fingerprint,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "streams": {k: s.state_dict() for k, s in self.streams.items()},
                "method": self.method.state_dict(),
                "rng": rng_state(),
                "generator": self.ctx.generator.get_state(),
                "device_type": self.ctx.device.type,
                "early_stopping": early,
                "loop": asdict(self.state),
            }
        )
        snapshot["early_stopping"]["best_state"] = best_state
        self.writer.submit(self.checkpoint_path, snapshot)

    def _restore(self, path: Path) -> None:
        assert self.model is not None and self.optimizer is not None
        ckpt = load_checkpoint(path)
        saved = ckpt["fingerprint"]
        now = self.fingerprint
        changed = [k for k in {*saved, *now} if saved.get(k) != now.get(k)]
        if changed:
            key = sorted(changed)[0]
            raise ConfigError(
                f"{path}: written by a different run ({key}: {saved.get(key)!r} there, "
                f"{now.get(key)!r} now); start afresh without resume"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for name, stream in self.streams.items():
            stream.load_state_dict(ckpt["streams"][name])
        self.method.load_state_dict(ckpt["method"])
        self.early.load_state_dict(ckpt["early_stopping"])
        self.state = LoopState(**ckpt["loop"])
        set_rng_state(ckpt["rng"])
        saved_device = ckpt.get("device_type", self.ctx.device.type)
        if saved_device == self.ctx.device.type:
            self.ctx.generator.set_state(ckpt["generator"])
        else:
            # a CUDA generator's state (seed, offset) cannot seed a CPU one or back: the run
            # continues with the augmentation stream re-seeded from (seed, step), not bit-exact
            self.ctx.generator.manual_seed(self.cfg.seed * 1_000_003 + self.state.step)
            tqdm.write(
                f"resuming a {saved_device} checkpoint on {self.ctx.device.type}: weights, "
                "optimizer and sampler state restored; augmentations re-seeded (not bit-exact)",
                file=sys.stderr,
            )
        if self.state.finished and not self.state.stopped_early and not self._budget_spent():
            self.state.finished = False  # resumed with a larger budget: train on

    def _budget_spent(self) -> bool:
        st, cfg = self.state, self.cfg
        if cfg.max_steps is not None:
            return st.step >= cfg.max_steps
        return len(st.history) >= cfg.max_epochs

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> FitResult:
        """Train until the step budget, max_epochs or early stopping; the model ends with the
        best epoch's weights (or the last ones when the method monitors nothing)."""
        self._setup()
        assert self.model is not None
        resumed_from = None
        path = self.checkpoint_path
        if resume and path is not None and path.is_file():
            self._restore(path)
            resumed_from = self.state.step
        bar = tqdm(
            total=self._total_steps(),
            initial=self.state.step,
            unit="step",
            desc=f"train {self.method.name}",
            disable=None if self.progress else True,  # a live bar on a terminal only
            dynamic_ncols=True,
        )
        try:
            with bar:
                self._run(bar)
        except BaseException as exc:
            # the checkpoint in flight still reaches the disk when training is interrupted
            with contextlib.suppress(Exception):
                self.writer.wait()
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                cfg = self.cfg
                raise ResourceError(
                    f"out of GPU memory on {self.ctx.device} at step {self.state.step} with "
                    f"train.max_batch_images={cfg.max_batch_images}, batch_exams="
                    f"{cfg.batch_exams}, backbone {cfg.backbone}: lower them, e.g. -S "
                    f"train.max_batch_images={max(1, cfg.max_batch_images // 2)}"
                ) from exc
            raise
        self.writer.wait()
        if self.method.monitor is not None:
            self.early.restore_best(self.model)
        st = self.state
        return FitResult(
            history=list(st.history),
            steps=st.step,
            epochs=len(st.history),
            best_epoch=self.early.best_epoch,
            best_score=self.early.best_score,
            stopped_early=st.stopped_early,
            device=str(self.ctx.device),
            seconds=st.train_seconds + st.val_seconds,
            images_per_s=st.train_images / st.train_seconds if st.train_seconds else 0.0,
            resumed_from_step=resumed_from,
        )

    def _run(self, bar: tqdm) -> None:
        model, opt, method, ctx, st = self.model, self.optimizer, self.method, self.ctx, self.state
        assert model is not None and opt is not None
        model.train()
        # running loss sum of the epoch, on the device: read (a sync) only at log points,
        # epoch ends and checkpoints
        loss_acc = torch.tensor(st.epoch_loss_sum, device=ctx.device)
        last_read, log_steps, log_images, log_start = st.epoch_loss_sum, 0, 0, time.perf_counter()
        segment_start = time.perf_counter()

        def sync_epoch_counters() -> None:
            nonlocal segment_start
            st.epoch_loss_sum = loss_acc.item()  # waits for the device
            now = time.perf_counter()
            st.epoch_seconds += now - segment_start
            segment_start = now

        while not st.finished:
            ctx.epoch, ctx.step = self.primary.epoch, st.step
            if self.primary.position == 0:
                decay_learning_rate(opt, self.cfg, self.primary.epoch)
                for param in method.on_epoch_start(model, self.primary.epoch, ctx) or ():
                    opt.state.pop(param, None)  # e.g. a re-initialised head: fresh moments
            rows = {name: stream.next_batch() for name, stream in self.streams.items()}
            batch = method.make_batch(rows, ctx)
            with ctx.autocast():
                out = method.loss(model, batch, ctx)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            st.step += 1
            method.after_step(model, st.step, ctx)
            images = sum(len(r) for r in rows.values())
            loss_acc += out.loss.detach().float()
            st.epoch_loss_steps += 1
            st.epoch_images += images
            log_steps, log_images = log_steps + 1, log_images + images
            bar.update(1)
            for cb in self.callbacks:
                cb.on_step_end(self, out)
            if log_steps >= self.log_every:
                total = loss_acc.item()
                if not math.isfinite(total):  # diverged: nothing after this step can be used
                    raise RunFailed(
                        f"training diverged: the loss is {total} by step {st.step} "
                        f"({self.cfg.method}, lr {self.cfg.lr:g}); lower the learning rate"
                    )
                seconds = max(time.perf_counter() - log_start, 1e-9)
                self._log_step(bar, (total - last_read) / log_steps, log_images / seconds, out)
                last_read, log_steps, log_images, log_start = total, 0, 0, time.perf_counter()
            budget_spent = self.cfg.max_steps is not None and st.step >= self.cfg.max_steps
            if self.primary.epoch_done or budget_spent:
                sync_epoch_counters()
                self._end_epoch(budget_spent)
                loss_acc.zero_()
                last_read, log_steps, log_images, log_start = 0.0, 0, 0, time.perf_counter()
                segment_start = time.perf_counter()
            if st.finished or st.step % self.cfg.checkpoint_every == 0:
                sync_epoch_counters()
                self.save()
                segment_start = time.perf_counter()

    def _end_epoch(self, budget_spent: bool) -> None:
        model, method, st = self.model, self.method, self.state
        assert model is not None
        epoch = self.primary.epoch + 1  # 1-based in history and logs
        val_start = time.perf_counter()
        with self.ctx.inference(model):
            metrics = method.validate(model, self.ctx)
        val_seconds = time.perf_counter() - val_start
        train_loss = st.epoch_loss_sum / max(st.epoch_loss_steps, 1)
        record: dict[str, float] = {
            "epoch": epoch,
            "step": st.step,
            "train_loss": train_loss,
            **{k: float(v) for k, v in metrics.items()},
            "seconds": st.epoch_seconds + val_seconds,
            "images_per_s": st.epoch_images / st.epoch_seconds if st.epoch_seconds else 0.0,
        }
        st.history.append(record)
        st.train_images += st.epoch_images
        st.train_seconds += st.epoch_seconds
        st.val_seconds += val_seconds
        monitor, improved = method.monitor, False
        if monitor is not None:
            if monitor not in metrics:
                raise KeyError(f"method {method.name!r} did not return {monitor!r} from validate")
            improved = self.early.update(float(metrics[monitor]), epoch, model)
        self.tracker.log_metrics(
            {k: float(v) for k, v in record.items() if math.isfinite(v)},
            step=st.step,
        )
        for cb in self.callbacks:
            cb.on_epoch_end(self, record)
        if self.progress:  # one line per epoch, on a terminal and in logs alike
            values = " ".join(  # "a/b" keys are per-item series (cluster sizes): not printed
                f"{k} {v:.4g}"
                for k, v in record.items()
                if k not in ("epoch", "step", "seconds") and "/" not in k
            )
            best = " (best)" if improved else ""
            tqdm.write(f"epoch {epoch} step {st.step}: {values}{best}", file=sys.stderr)
        if budget_spent or (self.cfg.max_steps is None and epoch >= self.cfg.max_epochs):
            st.finished = True
        elif self.early.should_stop:
            st.finished = st.stopped_early = True
        self.primary.start_next_epoch()
        st.epoch_loss_sum, st.epoch_loss_steps, st.epoch_images, st.epoch_seconds = 0.0, 0, 0, 0.0

    def _log_step(self, bar: tqdm, loss: float, images_per_s: float, out: StepOutput) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}", refresh=False)
        logs = {"step/train_loss": loss, "step/images_per_s": images_per_s}
        for key, value in out.logs.items():
            logs[f"step/{key}"] = float(value.item() if isinstance(value, torch.Tensor) else value)
        self.tracker.log_metrics(logs, step=self.state.step)
