"""Study: how much the training-quality test's statistic moves with the CPU's float kernels.

`tests/test_train_stage.py::test_a_few_steps_beat_the_label_prevalence_baseline` trains the tiny
archive's fully labeled split (60/20/20 % train/val/test) for 20 epochs and asserts a margin. This
reruns that training for several seeds under other numerics (1 or 2 torch threads,
`torch.backends.mkldnn` on or off) and prints one JSON object: per run the test weighted F1 at
val-tuned thresholds, the prevalence baseline's F1, and the mean per-class test ROC AUC; then the
range of each. The test's bar must sit well below the smallest value seen here.

    python benchmarks/quality_numerics.py [--seeds 0,1,2,3] [--numerics 1:0,1:1,2:1,2:0]

(about 30-100 s per run on 2 cores; mkldnn off is the slow one).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from medssl.config import TrainConfig, load_params
from medssl.metrics.multilabel import best_thresholds, constant_score_thresholds, weighted_f1
from medssl.stages.split import split
from medssl.stages.synth import synth
from medssl.stages.train import train

SPLITS = "{unlabeled: 0.0, train: 0.6, val: 0.2, test: 0.2}"  # as the test's labeled_split


def scores(predictions: Path) -> dict[str, float]:
    preds = pd.read_parquet(predictions)
    labels = [c for c in preds.columns if c.startswith("label_")]
    score_cols = [c.replace("label_", "score_") for c in labels]
    val, test = preds[preds["split"] == "val"], preds[preds["split"] == "test"]
    y_val, y_test = val[labels].to_numpy(int), test[labels].to_numpy(int)
    s_test = test[score_cols].to_numpy()
    f1 = weighted_f1(y_test, s_test >= best_thresholds(y_val, val[score_cols].to_numpy()))
    base = weighted_f1(y_test, np.zeros(y_test.shape) >= constant_score_thresholds(y_val))
    both = [i for i in range(len(labels)) if 0 < y_test[:, i].sum() < len(y_test)]
    auc = float(np.mean([roc_auc_score(y_test[:, i], s_test[:, i]) for i in both]))
    return {"f1": round(f1, 3), "baseline_f1": round(base, 3), "auc": round(auc, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--numerics", default="1:0,1:1,2:1,2:0", help="threads:mkldnn,…")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="medssl-quality-") as tmp:
        root = Path(tmp)
        params = load_params(Path("/nonexistent"), ["data.size=tiny", f"split.fractions={SPLITS}"])
        synth(root / "archive", params.data, params.split, progress=False)
        split(root / "archive", root / "split", params.split)
        for seed in map(int, args.seeds.split(",")):
            for item in args.numerics.split(","):
                threads, mkldnn = (int(x) for x in item.split(":"))
                torch.set_num_threads(threads)
                torch.backends.mkldnn.enabled = bool(mkldnn)
                cfg = TrainConfig(
                    device="cpu", cache_dir=str(root / "cache"), batch_exams=2,
                    max_batch_images=32, max_epochs=args.epochs, patience=args.epochs, lr=1e-3,
                    checkpoint_every=1000, seed=seed,
                )  # fmt: skip
                start = time.perf_counter()
                train(root / "split", root / "model", cfg, progress=False)
                run = {"seed": seed, "threads": threads, "mkldnn": bool(mkldnn)}
                run |= scores(root / "model" / "predictions.parquet")
                run["seconds"] = round(time.perf_counter() - start, 1)
                runs.append(run)
    margins = [r["f1"] - r["baseline_f1"] for r in runs]
    aucs = [r["auc"] for r in runs]
    print(
        json.dumps(
            {
                "study": "quality_numerics",
                "runs": runs,
                "f1_minus_baseline": [round(min(margins), 3), round(max(margins), 3)],
                "auc": [min(aucs), max(aucs)],
                "test_bar_auc": 0.65,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
