"""Benchmark: training images/s through the medssl engine against a bare PyTorch loop.

medssl: the real path — a synthetic `small` archive (64 px) split with most exams in train, the
memory-mapped image cache, the exam batch sampler, device augmentation, the Supervised method's
BCE step inside `Trainer.fit` (autocast, channels_last, Adam, progress bookkeeping and the default
checkpoint cadence). Baseline: the same model (`build_classifier`, same memory format, autocast and
Adam) trained on one random tensor batch of the same size, nothing else. Both are timed over the
same number of steps after warmup, alternately for `--rounds` rounds; the best round of each
counts ("ratio"). "median_step_ratio" compares median step times instead: on a shared CPU it is
insensitive to other processes, but it also hides the (background) checkpoint steps. Prints one
JSON object:

    python benchmarks/train_throughput.py [--device cpu|cuda] [--image-size 64] [--batch 32]

Target: ratio >= 0.95 on CPU, >= 0.9 on GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from medssl.config import DataConfig, SplitConfig, TrainConfig
from medssl.data.cache import open_cache
from medssl.data.contract import INFO_FILE, Dataset
from medssl.engine import Callback, Context, Trainer, resolve_device
from medssl.methods.supervised import Supervised, multilabel_bce
from medssl.models import build_classifier
from medssl.stages.split import split
from medssl.stages.synth import synth

BENCH_SPLITS = {"unlabeled": 0.05, "train": 0.85, "val": 0.05, "test": 0.05}


class _Timer(Callback):
    """Wall time between the end of step `start` and the end of step `stop` (device synced
    there only), and every step's duration in between (on a shared CPU their median is robust
    to other processes' bursts)."""

    def __init__(self, start: int, stop: int, device: torch.device) -> None:
        self.start, self.stop, self.device = start, stop, device
        self.t0 = self.t1 = self.last = 0.0
        self.images = 0
        self.steps: list[float] = []

    def on_step_end(self, trainer: Trainer, output: object) -> None:
        step = trainer.state.step
        if step in (self.start, self.stop) and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.start < step <= self.stop:
            self.steps.append(now - self.last)
        self.last = now
        # images trained so far (epoch_images alone restarts at 0 when an epoch ends)
        done = trainer.state.train_images + trainer.state.epoch_images
        if step == self.start:
            self.t0, self.images = now, done
        elif step == self.stop:
            self.t1, self.images = now, done - self.images


def make_dataset(root: Path, image_size: int) -> Path:
    archive, splits = root / "archive", root / "splits"
    split_cfg = SplitConfig(fractions=BENCH_SPLITS)
    synth(archive, DataConfig(size="small"), split_cfg, progress=False)
    split(archive, splits, split_cfg)
    if image_size != 64:  # the cache resizes every image to the dataset's nominal size
        info = yaml.safe_load((splits / INFO_FILE).read_text())
        info["image_size"] = image_size
        (splits / INFO_FILE).write_text(yaml.safe_dump(info, sort_keys=False))
    return splits


def medssl_round(
    dataset: Dataset, cfg: TrainConfig, warmup: int, steps: int, ckpt: Path
) -> tuple[float, int, float]:
    cache = open_cache(dataset, cfg.cache_dir, progress=False)
    method = Supervised(cfg, dataset, cache)
    run_cfg = cfg.model_copy(update={"max_steps": warmup + steps})
    timer = _Timer(warmup, warmup + steps, resolve_device(cfg.device))
    trainer = Trainer(method, run_cfg, ckpt, progress=False, callbacks=[timer])
    trainer.fit()
    return timer.t1 - timer.t0, timer.images, statistics.median(timer.steps)


def baseline_round(
    cfg: TrainConfig, image_size: int, warmup: int, steps: int
) -> tuple[float, float]:
    ctx = Context.create(resolve_device(cfg.device), cfg.seed, cfg.amp, cfg.channels_last)
    torch.manual_seed(cfg.seed)
    model = ctx.prepare(build_classifier(cfg.backbone, 7, 1))
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, fused=True if ctx.device.type == "cuda" else None
    )
    batch = cfg.max_batch_images
    x = torch.rand(batch, 1, image_size, image_size, device=ctx.device)
    x = x.contiguous(memory_format=ctx.memory_format)
    y = (torch.rand(batch, 7, device=ctx.device) < 0.3).float()
    model.train()

    def step() -> None:
        with ctx.autocast():
            loss = multilabel_bce(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return time_steps(step, ctx.device, warmup, steps)


def time_steps(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int
) -> tuple[float, float]:
    """Run `step` warmup + steps times: (seconds of the timed steps, their median step time)."""
    t0 = last = 0.0
    durations = []
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = last = time.perf_counter()
        step()
        if i >= warmup:
            now = time.perf_counter()
            durations.append(now - last)
            last = now
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig().checkpoint_every)
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        dataset = Dataset.open(make_dataset(root, args.image_size))
        cfg = TrainConfig(
            backbone=args.backbone,
            batch_exams=4,  # ≈ 52 images, capped: (almost) every batch has --batch images
            max_batch_images=args.batch,
            device=str(device),
            cache_dir=str(root / "cache"),
            checkpoint_every=args.checkpoint_every,
        )
        open_cache(dataset, cfg.cache_dir, progress=False)
        setup_seconds = time.perf_counter() - start
        ours, base, ours_median, base_median = [], [], [], []
        for _ in range(args.rounds):
            base_s, base_step = baseline_round(cfg, args.image_size, args.warmup, args.steps)
            base.append(args.batch * args.steps / base_s)
            base_median.append(base_step)
            seconds, images, step = medssl_round(
                dataset, cfg, args.warmup, args.steps, root / "ckpt"
            )
            ours.append(images / seconds)
            ours_median.append(step)
    medssl_ips, base_ips = max(ours), max(base)
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "model": args.backbone,
                "batch": args.batch,
                "image_size": args.image_size,
                "steps": args.steps,
                "checkpoint_every": args.checkpoint_every,
                "amp": cfg.amp and device.type == "cuda",
                "channels_last": cfg.channels_last,
                "torch_threads": torch.get_num_threads(),
                "medssl_images_per_s": round(medssl_ips, 1),
                "baseline_images_per_s": round(base_ips, 1),
                "ratio": round(medssl_ips / base_ips, 3),
                "target_ratio": 0.9 if device.type == "cuda" else 0.95,
                # per-step medians: insensitive to other processes (and to checkpoint steps)
                "median_step_ratio": round(min(base_median) / min(ours_median), 3),
                "rounds": {
                    "medssl": [round(v, 1) for v in ours],
                    "baseline": [round(v, 1) for v in base],
                },
                "setup_seconds": round(setup_seconds, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
