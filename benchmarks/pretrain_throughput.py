"""Benchmark: two-view LSD pre-training images/s through the medssl engine against a bare PyTorch
loop (paper 000 §2.2.2).

medssl: the real path — a synthetic `small` archive (64 px), the memory-mapped image cache, the
exam batch sampler, both augmentation views drawn on the device, the Lsd method's PUI + L_SD step
inside `Trainer.fit` (autocast, channels_last, Adam, cluster-size bookkeeping, the default
checkpoint cadence). Baseline: the same model (`build_classifier` with K outputs, same memory
format, autocast and Adam), the same two augmentation views of one random uint8 batch of the same
size, the same loss; nothing else. Images are counted once per image (not per view). Both are
timed over the same steps after warmup, alternately for `--rounds` rounds; the best round of each
counts ("ratio"; "median_step_ratio": median step times, robust on a shared CPU). Prints JSON:

    python benchmarks/pretrain_throughput.py [--device cpu|cuda] [--image-size 64] [--batch 32]

Target: ratio >= 0.9 on CPU. On a GPU, record images/s at --image-size 224 (resnet18, bf16): paper
scale is 85k images x 100 epochs x 2 views, ≤ 30 min on one H100-class GPU needs ≈ 4,700 img/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from train_throughput import _Timer, make_dataset, time_steps

from medssl.config import PretrainConfig
from medssl.data.augment import STRONG, WEAK, views
from medssl.data.cache import open_cache
from medssl.data.contract import Dataset
from medssl.engine import Context, Trainer, resolve_device
from medssl.methods.pica import Lsd, LsdParams, dirichlet_size_loss, pui_loss
from medssl.models import build_classifier

PAPER_IMAGES_PER_S = 84_967 * 100 / (30 * 60)  # 85k images x 100 epochs in 30 min


def medssl_round(
    dataset: Dataset, cfg: PretrainConfig, hp: LsdParams, warmup: int, steps: int, ckpt: Path
) -> tuple[float, int, float]:
    cache = open_cache(dataset, cfg.cache_dir, progress=False)
    method = Lsd(cfg, dataset, cache, hp)
    run_cfg = cfg.model_copy(update={"max_steps": warmup + steps})
    timer = _Timer(warmup, warmup + steps, resolve_device(cfg.device))
    Trainer(method, run_cfg, ckpt, progress=False, callbacks=[timer]).fit()
    return timer.t1 - timer.t0, timer.images, statistics.median(timer.steps)


def baseline_round(
    cfg: PretrainConfig, hp: LsdParams, image_size: int, warmup: int, steps: int
) -> tuple[float, float]:
    ctx = Context.create(resolve_device(cfg.device), cfg.seed, cfg.amp, cfg.channels_last)
    torch.manual_seed(cfg.seed)
    k = int(hp.clusters or 10)
    model = ctx.prepare(build_classifier(cfg.backbone, k, 1))
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, fused=True if ctx.device.type == "cuda" else None
    )
    batch = cfg.max_batch_images
    pixels = torch.randint(0, 256, (batch, image_size, image_size), dtype=torch.uint8)
    pixels = pixels.to(ctx.device)
    model.train()

    def step() -> None:
        tilde, hat = views(pixels, [WEAK, STRONG], ctx.generator, channels_last=ctx.channels_last)
        with ctx.autocast():
            p = torch.softmax(model(torch.cat([tilde, hat])).float(), dim=1)
            p_tilde, p_hat = p.chunk(2)
            loss = pui_loss(p_hat, p_tilde) + hp.lambda_ * dirichlet_size_loss(p_tilde, hp.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return time_steps(step, ctx.device, warmup, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=PretrainConfig().checkpoint_every)
    args = parser.parse_args()
    device = resolve_device(args.device)
    hp = LsdParams(clusters=args.clusters)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        dataset = Dataset.open(make_dataset(root, args.image_size))
        cfg = PretrainConfig(
            backbone=args.backbone,
            batch_exams=4,  # ≈ 52 images, capped: (almost) every batch has --batch images
            max_batch_images=args.batch,
            rows="unlabeled+train",
            device=str(device),
            cache_dir=str(root / "cache"),
            checkpoint_every=args.checkpoint_every,
            tsne_points=0,
        )
        open_cache(dataset, cfg.cache_dir, progress=False)
        setup_seconds = time.perf_counter() - start
        ours, base, ours_median, base_median = [], [], [], []
        for _ in range(args.rounds):
            base_s, base_step = baseline_round(cfg, hp, args.image_size, args.warmup, args.steps)
            base.append(args.batch * args.steps / base_s)
            base_median.append(base_step)
            seconds, images, step = medssl_round(
                dataset, cfg, hp, args.warmup, args.steps, root / "ckpt"
            )
            ours.append(images / seconds)
            ours_median.append(step)
    medssl_ips, base_ips = max(ours), max(base)
    out = {
        "benchmark": "pretrain_throughput",
        "method": "lsd (two views)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": args.backbone,
        "batch": args.batch,
        "clusters": args.clusters,
        "image_size": args.image_size,
        "steps": args.steps,
        "checkpoint_every": args.checkpoint_every,
        "amp": cfg.amp and device.type == "cuda",
        "channels_last": cfg.channels_last,
        "torch_threads": torch.get_num_threads(),
        "medssl_images_per_s": round(medssl_ips, 1),
        "baseline_images_per_s": round(base_ips, 1),
        "ratio": round(medssl_ips / base_ips, 3),
        "target_ratio": 0.9,
        "median_step_ratio": round(min(base_median) / min(ours_median), 3),
        # minutes for paper 000's pre-training (84,967 images x 100 epochs) at this speed
        "paper_scale_minutes": round(84_967 * 100 / medssl_ips / 60, 1),
        "paper_scale_target_images_per_s": round(PAPER_IMAGES_PER_S),
        "rounds": {
            "medssl": [round(v, 1) for v in ours],
            "baseline": [round(v, 1) for v in base],
        },
        "setup_seconds": round(setup_seconds, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
