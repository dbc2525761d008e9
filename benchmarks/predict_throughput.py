"""Benchmark: batch-inference images/s of the predict path against a bare `model(x)` loop.

medssl: `medssl.models.scoring.probabilities` + `decision_frame` — what `medssl predict` and the
registered pyfunc run per batch: uint8 pixels → float32 on the device → the classifier in float32
without autocast → sigmoid → per-class thresholds → the output table. Baseline: the same model
called on the same images already as float tensors on the device, `torch.no_grad()`, nothing else.
Both alternate for `--rounds` rounds over the same images; the best round of each counts. It also
times `medssl predict` end to end on a synthetic dataset of the same size (PNG decoding, resumable
parts, the parquet file) for context. Prints one JSON object:

    python benchmarks/predict_throughput.py [--device cpu|cuda] [--images 2048] [--image-size 64]

Target: ratio >= 0.9 on CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medssl.config import DataConfig, PredictConfig, SplitConfig
from medssl.engine import resolve_device
from medssl.models import build_classifier
from medssl.models.pyfunc import InferenceSpec
from medssl.models.scoring import decision_frame, probabilities
from medssl.stages.predict import Predictor, predict
from medssl.stages.synth import synth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    classes = [f"c{i}" for i in range(7)]
    torch.manual_seed(0)
    model = build_classifier(args.backbone, len(classes), 1).to(device).eval()
    thresholds = [0.5] * len(classes)
    size = args.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (args.images, size, size), dtype=np.uint8)
    floats = torch.from_numpy(pixels).float().div(255).unsqueeze(1).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def medssl_round() -> float:
        sync()
        start = time.perf_counter()
        probs = probabilities(model, pixels, image_size=size, batch_size=args.batch, device=device)
        decision_frame(probs, classes, thresholds)
        return time.perf_counter() - start

    def bare_round() -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            for first in range(0, args.images, args.batch):
                model(floats[first : first + args.batch]).cpu()
        sync()
        return time.perf_counter() - start

    medssl_round(), bare_round()  # warm-up
    medssl_times, bare_times = [], []
    for _ in range(args.rounds):
        medssl_times.append(medssl_round())
        bare_times.append(bare_round())
    medssl_ips = args.images / min(medssl_times)
    bare_ips = args.images / min(bare_times)

    with tempfile.TemporaryDirectory(prefix="medssl-bench-predict-") as tmp:
        archive = Path(tmp) / "archive"  # the `small` archive: ~5,300 PNGs of 64 px
        synth(archive, DataConfig(size="small", workers=0), SplitConfig(), progress=False)
        spec = InferenceSpec(classes, thresholds, size, 1)
        predictor = Predictor(model.cpu(), spec, {"model_uri": "benchmark"})
        start = time.perf_counter()
        result = predict(
            "benchmark", archive, Path(tmp) / "out",
            PredictConfig(batch_size=args.batch, device=str(device)),
            predictor=predictor, progress=False,
        )  # fmt: skip
        end_to_end = result.images / (time.perf_counter() - start)

    print(
        json.dumps(
            {
                "benchmark": "predict_throughput",
                "device": str(device),
                "backbone": args.backbone,
                "images": args.images,
                "image_size": size,
                "batch": args.batch,
                "medssl_images_per_s": round(medssl_ips, 1),
                "bare_model_images_per_s": round(bare_ips, 1),
                "ratio": round(medssl_ips / bare_ips, 3),
                "target_ratio": 0.9,
                "meets_target": medssl_ips / bare_ips >= 0.9,
                "end_to_end_predict": {
                    "images": result.images,
                    "images_per_s": round(end_to_end, 1),
                    "note": "medssl predict on a small archive: PNG decoding, parts, parquet",
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
