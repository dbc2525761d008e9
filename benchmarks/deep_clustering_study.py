"""Paper 000 Table 1 and §3.3.2 on the generated archive: LSD and PICA deep clustering as
unsupervised classifiers (Algorithm 1), against the label-prevalence baseline and k-means on raw
pixels; then fine-tuning from the LSD encoder against random initialisation at 10 % labels.
DeepCluster (paper 001) runs on the same archive with `--methods lsd pica deepcluster`.

    python benchmarks/deep_clustering_study.py --epochs 10 --seeds 0 1 \
        --methods lsd pica deepcluster --out reports/studies/deep-clustering

Power: the archive's default split tests on 7 exams. The study re-splits the `small` archive
(400 exams) so that test holds ~80 exams and val (Algorithm 1's development set, the threshold
set) ~40; every comparison is paired over the same test exams and averaged over the seeds, with
an exam-bootstrap CI of the difference. Everything goes through the stage functions (synth,
split, pretrain, train); a rerun reuses the finished runs in --work. Writes study.json and
study.md (the tables of docs/results.md) to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from medssl.config import (
    DataConfig,
    EvaluateConfig,
    SplitConfig,
    TrainConfig,
    load_params,
)
from medssl.data.cache import open_cache
from medssl.data.contract import PREDICTIONS_FILE, Dataset
from medssl.methods.base import labeled_split_rows, multilabel_targets
from medssl.methods.deepcluster import DeepCluster
from medssl.metrics.bootstrap import bootstrap_paired_difference
from medssl.metrics.clustering import label_combinations, match_clusters, nmi, purity
from medssl.models.inference import predictions_table
from medssl.stages.evaluate import predictions_splits, score, score_predictions
from medssl.stages.pretrain import pretrain
from medssl.stages.split import split
from medssl.stages.synth import synth
from medssl.stages.train import train

# ~55 % unlabeled, and labeled splits large enough to compare methods (see the module doc)
STUDY_FRACTIONS = {"unlabeled": 0.55, "train": 0.15, "val": 0.10, "test": 0.20}
# paper 000 Table 1, weighted average over the 7 classes (best / mean of 5 trials), in %
PAPER_TABLE1 = {
    "lsd": {"f1": (66.95, 64.73), "precision": (70.29, 63.82), "recall": (73.24, 68.05)},
    "pica": {"f1": (65.99, 60.38), "precision": (63.82, 57.78), "recall": (70.11, 66.42)},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dataset(work: Path, size: str) -> Path:
    raw, splits = work / "archive", work / "splits"
    fractions = SplitConfig(fractions=STUDY_FRACTIONS)  # type: ignore[arg-type]
    if not (raw / "manifest.parquet").is_file():
        log(f"synth {size} archive")
        synth(raw, DataConfig(size=size, seed=0), fractions, progress=False)  # type: ignore[arg-type]
    if not (splits / "manifest.parquet").is_file():
        split(raw, splits, fractions)
    return splits


def test_decisions(model_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(y_test, test decisions at val-tuned thresholds, test exams, metrics) of a predictions
    file, scored like `medssl evaluate`."""
    test, scored = score_predictions(model_dir / PREDICTIONS_FILE, EvaluateConfig(bootstrap=1000))
    return test.y, scored.test_pred, test.exams, scored.metrics


def kmeans_raw_pixels(splits: Path, k: int, seed: int, cache_dir: str) -> dict:
    """k-means on raw pixels (no network, no ImageNet) fitted on the unlabeled rows, then
    Algorithm 1 on val like the deep-clustering methods."""
    from sklearn.cluster import KMeans

    ds = Dataset.open(splits)
    cache = open_cache(ds, cache_dir, progress=False)
    classes, targets = multilabel_targets(ds)
    pixels = cache.take(np.arange(len(ds.manifest))).reshape(len(ds.manifest), -1)
    x = pixels.astype(np.float32) / 255.0
    unlabeled = np.flatnonzero(ds.manifest["split"].to_numpy() == "unlabeled")
    km = KMeans(k, n_init=3, random_state=seed).fit(x[unlabeled])
    cluster = km.predict(x)
    val = labeled_split_rows(ds, targets, "val")
    test = labeled_split_rows(ds, targets, "test")
    soft, _ = match_clusters(cluster[val], targets[val], k)
    rows = np.concatenate([val, test])
    table = predictions_table(ds, rows, classes, soft[cluster[rows]])
    classes_, parts = predictions_splits(table, "k-means")
    scored = score(classes_, parts["val"], parts["test"], EvaluateConfig(bootstrap=1000))
    combos = label_combinations(targets[test])
    sizes = np.bincount(cluster[unlabeled], minlength=k) / len(unlabeled)
    return {
        "metrics": {
            **scored.metrics,
            "test_nmi": nmi(combos, cluster[test]),
            "test_purity": purity(combos, cluster[test]),
        },
        "sizes": sorted(sizes.tolist(), reverse=True),
        "y": parts["test"].y,
        "pred": scored.test_pred,
        "exams": parts["test"].exams,
    }


def ci_text(ci) -> str:
    return f"{ci.estimate:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--epochs", type=int, default=10, help="pre-training epochs per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=["lsd", "pica"])
    parser.add_argument("--label-fraction", type=float, default=0.1)
    parser.add_argument("--work", type=Path, default=Path(".cache/studies/deep-clustering"))
    parser.add_argument("--out", type=Path, default=Path("reports/studies/deep-clustering"))
    args = parser.parse_args()
    params = load_params()
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = str(work / "cache")
    splits = dataset(work, args.size)
    ds = Dataset.open(splits)
    counts = ds.manifest["split"].value_counts().to_dict()
    log(f"dataset {splits}: {counts}")
    started = time.perf_counter()
    results: dict = {
        "dataset": {"size": args.size, "fractions": STUDY_FRACTIONS, "rows": counts},
        "budget": {"pretrain_epochs": args.epochs, "seeds": args.seeds},
        "paper_table1_weighted": PAPER_TABLE1,
        "clustering": {},
        "finetune": {},
    }
    decisions: dict[str, list[np.ndarray]] = {}
    y_test = exams = None
    for method in args.methods:
        for seed in args.seeds:
            run = work / f"{method}-s{seed}"
            if not (run / "metrics.json").is_file():
                log(f"pretrain {method} seed {seed} ({args.epochs} epochs)")
                # DeepCluster trains with paper 001's loop (SGD 0.05, batches of 256)
                loop = DeepCluster.paper_loop if method == "deepcluster" else {}
                cfg = params.pretrain.model_copy(
                    update={
                        **loop,
                        "method": method,
                        "seed": seed,
                        "max_epochs": args.epochs,
                        "cache_dir": cache_dir,
                        "max_steps": None,
                    }
                )
                pretrain(splits, run, cfg, hparams=params.method_params(method), progress=False)
            y_test, pred, exams, metrics = test_decisions(run)
            decisions.setdefault(method, []).append(pred)
            history = (run / "history.csv").read_text()
            sizes = json.loads((run / "clusters.json").read_text())["clusters"]
            own = json.loads((run / "metrics.json").read_text())
            results["clustering"][f"{method}-s{seed}"] = {
                "metrics": metrics,
                "nmi": own.get("test_nmi"),
                "purity": own.get("test_purity"),
                "sizes": sorted((c["share"] for c in sizes), reverse=True),
                "epochs": history.count("\n") - 1,
            }
    k = int(json.loads((work / f"{args.methods[0]}-s{args.seeds[0]}" / "clusters.json")
                       .read_text())["k"])  # fmt: skip
    log(f"k-means on raw pixels, K={k}")
    km = kmeans_raw_pixels(splits, k, 0, cache_dir)
    results["clustering"]["kmeans-raw"] = {
        "metrics": km["metrics"],
        "nmi": km["metrics"]["test_nmi"],
        "purity": km["metrics"]["test_purity"],
        "sizes": km["sizes"],
    }
    assert y_test is not None and exams is not None
    prevalence = np.broadcast_to(np.ones(y_test.shape[1], dtype=bool), y_test.shape)
    comparisons = {}
    for method in args.methods:
        comparisons[f"{method} - prevalence"] = bootstrap_paired_difference(
            y_test, decisions[method], [prevalence], exams
        )
        comparisons[f"{method} - kmeans-raw"] = bootstrap_paired_difference(
            y_test, decisions[method], [km["pred"]], exams
        )
    if {"lsd", "pica"} <= set(decisions):
        comparisons["lsd - pica"] = bootstrap_paired_difference(
            y_test, decisions["lsd"], decisions["pica"], exams
        )

    # §3.3.2: fine-tuning from the LSD encoder vs random initialisation, same seeds and budget
    ft: dict[str, list[np.ndarray]] = {"lsd-init": [], "random-init": []}
    for seed in args.seeds:
        for name, init in (("lsd-init", "checkpoint"), ("random-init", "random")):
            run = work / f"finetune-{name}-s{seed}"
            if not (run / "train.json").is_file():
                log(f"fine-tune {name} seed {seed} at {args.label_fraction:g} labels")
                weights = (
                    str(work / f"lsd-s{seed}" / "encoder.pt") if init == "checkpoint" else None
                )
                cfg = TrainConfig(
                    **{
                        **params.train.model_dump(),
                        "init": init,
                        "weights": weights,
                        "seed": seed,
                        "label_fraction": args.label_fraction,
                        "cache_dir": cache_dir,
                    }
                )
                train(splits, run, cfg, progress=False)
            y_ft, pred, exams_ft, metrics = test_decisions(run)
            ft[name].append(pred)
            results["finetune"][f"{name}-s{seed}"] = {"metrics": metrics}
    comparisons["finetune lsd-init - random-init"] = bootstrap_paired_difference(
        y_ft, ft["lsd-init"], ft["random-init"], exams_ft
    )
    results["comparisons"] = {
        k: {"estimate": c.estimate, "low": c.low, "high": c.high} for k, c in comparisons.items()
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "study.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "study.md").write_text(markdown(results, comparisons))
    print(markdown(results, comparisons))


def table1(results: dict, methods: list[str]) -> list[str]:
    """Paper 000 Table 1 layout: per class and weighted, best and mean over seeds, in %."""
    runs = {m: [r for k, r in results["clustering"].items() if k.startswith(f"{m}-s")]
            for m in methods}  # fmt: skip
    classes = list(next(iter(runs.values()))[0]["metrics"]["per_class"])
    head = "| metric | method | " + " | ".join(f"{c} best | {c} mean" for c in classes)
    lines = [head + " | weighted best | weighted mean |", "|---" * (2 + 2 * len(classes) + 2) + "|"]
    for metric in ("f1", "precision", "recall"):
        for m in methods:
            cells = []
            for c in classes:
                values = [100 * r["metrics"]["per_class"][c][metric] for r in runs[m]]
                cells += [f"{max(values):.1f}", f"{np.mean(values):.1f}"]
            w = [100 * r["metrics"][f"test_{metric}_weighted"] for r in runs[m]]
            cells += [f"{max(w):.1f}", f"{np.mean(w):.1f}"]
            lines.append(f"| {metric} | {m} | " + " | ".join(cells) + " |")
    support = next(iter(runs.values()))[0]["metrics"]["per_class"]
    lines.append("| nlabels | | " + " | ".join(f"{support[c]['support']} | " for c in classes)
                 + f" {sum(support[c]['support'] for c in classes)} | |")  # fmt: skip
    return lines


def markdown(results: dict, comparisons: dict) -> str:
    lines = ["| unsupervised classifier | test weighted F1 | precision | recall | NMI | purity |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results["clustering"].items():
        m = r["metrics"]
        lines.append(
            f"| {name} | {m['test_f1_weighted']:.3f} | {m['test_precision_weighted']:.3f} | "
            f"{m['test_recall_weighted']:.3f} | {r['nmi']:.3f} | {r['purity']:.3f} |"
        )
    first = next(iter(results["clustering"].values()))["metrics"]
    lines.append(f"| label prevalence | {first['test_prevalence_f1_weighted']:.3f} | | | | |")
    lines += ["", "| fine-tuning at 10 % labels | test weighted F1 |", "|---|---|"]
    for name, r in results["finetune"].items():
        lines.append(f"| {name} | {r['metrics']['test_f1_weighted']:.3f} |")
    lines += ["", "| paired difference (mean over seeds) | Δ weighted F1 [95 % CI] |", "|---|---|"]
    for name, c in comparisons.items():
        lines.append(f"| {name} | {ci_text(c)} |")
    methods = [
        m for m in ("lsd", "pica") if any(k.startswith(f"{m}-s") for k in results["clustering"])
    ]
    if methods:
        lines += ["", "Paper 000 Table 1 layout (test, %, best and mean over seeds):", ""]
        lines += table1(results, methods)
    lines += ["", "cluster sizes (largest first, share of images):"]
    for name, r in results["clustering"].items():
        lines.append(f"- {name}: " + " ".join(f"{s:.2f}" for s in r["sizes"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
