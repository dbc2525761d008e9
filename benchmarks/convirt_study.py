"""Paper 002 Table 1 and Fig. 4 on the generated archive: image-text pairs from deep clusters and
report sentences, ConVIRT pre-training on them, then normal/abnormal kidney fine-tuning with the
generalized cross-entropy from ConVIRT, LSD and random initialisation.

    python benchmarks/convirt_study.py --seeds 0 1 2 --out docs/results/convirt

Data: the `small` archive re-split like the deep-clustering study (55 % unlabeled, test ~80
exams). Steps, all through the stage functions (what `medssl data pairs`, `medssl data
organ-task`, `medssl pretrain`, `medssl train` and `medssl evaluate` call):
1. LSD deep clustering on the unlabeled rows (reused from --clusters when it was trained on the
   same archive, e.g. the deep-clustering study's lsd-s0);
2. `make_pairs`: kidney clusters (soft label > --threshold) × kidney sentences → image-text pairs;
   their kidney precision is measured against the generator's truth; and "oracle" pairs, made by
   the same function from a copy of the dataset whose unlabeled rows show their true organ
   labels (what pairs would be with clusters as good as the paper's: a bound, not a method);
   and "shuffled" pairs: the cluster pairs with the descriptions permuted across exams (an exam's
   images still share one text, which no longer says anything about them: a control);
3. ConVIRT on each set of pairs (one run per seed);
4. the labeled kidney images as a binary task (`organ_task`, target kidney_abnormal);
5. frozen features of each encoder: a linear probe (logistic regression, train → test) and t-SNE
   of the test images coloured normal/abnormal (Fig. 4);
6. fine-tuning (GCE, q from params.yaml) from random, LSD and ConVIRT weights × seeds; the
   Table 1 layout and paired exam-bootstrap CIs of the differences (seeds averaged per side).
A rerun reuses the finished runs in --work. Writes study.json, study.md and tsne.png to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.config import DataConfig, EvaluateConfig, SplitConfig, TrainConfig, load_params
from medssl.data.augment import to_float
from medssl.data.cache import open_cache
from medssl.data.contract import PREDICTIONS_FILE, Dataset
from medssl.data.synth.archive import CLASSES, plan_archive
from medssl.metrics.binary import (
    accuracy_from_counts,
    balanced_accuracy_from_counts,
    macro_f1_from_counts,
    roc_auc,
)
from medssl.metrics.bootstrap import bootstrap_paired_difference
from medssl.models import build_classifier
from medssl.models.scoring import batched_logits
from medssl.plots import plot_embedding
from medssl.stages.evaluate import score_predictions
from medssl.stages.pairs import make_pairs, organ_task
from medssl.stages.pretrain import pretrain
from medssl.stages.split import split
from medssl.stages.synth import synth
from medssl.stages.train import train

STUDY_FRACTIONS = {"unlabeled": 0.55, "train": 0.15, "val": 0.10, "test": 0.20}
INITS = ("random", "lsd", "convirt", "convirt-oracle", "convirt-shuffled")
# paper 002 Table 1 (test, 603 images of 131 exams): ImageNet baseline vs ConVIRT
PAPER = {
    "baseline": {
        "npv": 0.91,
        "precision": 0.49,
        "specificity": 0.63,
        "sensitivity": 0.85,
        "f1_negative": 0.74,
        "f1": 0.62,
        "accuracy": 0.69,
        "precision_macro": 0.70,
        "balanced_accuracy": 0.74,
        "f1_macro": 0.68,
    },
    "convirt": {
        "npv": 0.92,
        "precision": 0.60,
        "specificity": 0.77,
        "sensitivity": 0.84,
        "f1_negative": 0.84,
        "f1": 0.70,
        "accuracy": 0.79,
        "precision_macro": 0.76,
        "balanced_accuracy": 0.80,
        "f1_macro": 0.77,
    },
}
STATISTICS = {
    "accuracy": accuracy_from_counts,
    "balanced_accuracy": balanced_accuracy_from_counts,
    "f1_macro": macro_f1_from_counts,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def archive(work: Path) -> Path:
    raw, splits = work / "archive", work / "splits"
    fractions = SplitConfig(fractions=STUDY_FRACTIONS)  # type: ignore[arg-type]
    if not (raw / "manifest.parquet").is_file():
        log("synth small archive")
        synth(raw, DataConfig(size="small", seed=0), fractions, progress=False)  # type: ignore[arg-type]
    if not (splits / "manifest.parquet").is_file():
        split(raw, splits, fractions)
    return splits


def same_images(splits: Path, clusters: Path) -> bool:
    """Whether a pretrain folder's assignments cover exactly this dataset's images."""
    path = clusters / "assignments.parquet"
    if not path.is_file():
        return False
    images = pd.read_parquet(path, columns=["image"])["image"]
    return set(images) == set(Dataset.open(splits).manifest["image"])


def oracle_dataset(splits: Path, plan, out: Path) -> Path:
    """A copy of the split dataset whose unlabeled rows carry their true organ labels (the
    generator's), so that `make_pairs` selects by label instead of by cluster (study only)."""
    if (out / "manifest.parquet").is_file():
        return out
    ds = Dataset.open(splits)
    truth = pd.DataFrame(plan.truth().astype("int8"), columns=[f"label_{c}" for c in CLASSES])
    truth.index = plan.manifest["image"]
    m = ds.manifest.copy()
    for c in truth.columns:
        m[c] = pd.array(truth.loc[m["image"], c].to_numpy(), dtype="Int8")
    image_root = str(ds.image_dir.resolve())
    info = ds.info.model_copy(update={"image_root": image_root})
    Dataset(out, info, m, ds.reports).save()
    return out


def shuffled_pairs(pairs_dir: Path, out: Path) -> Path:
    """The pairs with whole exams' descriptions permuted across exams (seed 0): a control."""
    import shutil

    ds = Dataset.open(pairs_dir)
    m = ds.manifest.copy()
    texts = m.groupby("exam_id", sort=True)["text"].first()
    permuted = pd.Series(np.random.default_rng(0).permutation(texts.to_numpy()), texts.index)
    m["text"] = m["exam_id"].map(permuted).astype("string")
    info = ds.info.model_copy(update={"image_root": str(ds.image_dir.resolve())})
    Dataset(out, info, m, ds.reports).save()
    shutil.copytree(pairs_dir / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    return out


def features(encoder: Path | None, cache, rows: np.ndarray, backbone: str) -> np.ndarray:
    """Backbone features (float64 [len(rows), D]) of un-augmented images; None: random init."""
    import torch

    torch.manual_seed(0)
    init = "checkpoint" if encoder else "random"
    model = build_classifier(backbone, 1, cache.channels, init=init, weights=encoder).eval()

    def images(chunk: np.ndarray) -> torch.Tensor:
        return to_float(torch.from_numpy(cache.take(chunk)))

    with torch.inference_mode():
        out = batched_logits(model.features, images, rows, 256, model.feature_dim)
    return out.astype(np.float64)


def probe_and_tsne(
    encoders: dict[str, Path | None], kidney: Path, cache_dir: str, backbone: str, out: Path
) -> dict[str, dict[str, float]]:
    """Linear probe (train → test AUC, balanced accuracy) and t-SNE panels (Fig. 4)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    ds = Dataset.open(kidney)
    m = ds.manifest
    y = m["target"].to_numpy(dtype=np.int64)
    cache = open_cache(ds, cache_dir, progress=False)
    train_rows = np.flatnonzero((m["split"] == "train").to_numpy())
    test_rows = np.flatnonzero((m["split"] == "test").to_numpy())
    results, panels = {}, {}
    for name, encoder in encoders.items():
        both = features(encoder, cache, np.concatenate([train_rows, test_rows]), backbone)
        f_train, f_test = both[: len(train_rows)], both[len(train_rows) :]
        scaler = StandardScaler().fit(f_train)
        clf = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")
        clf.fit(scaler.transform(f_train), y[train_rows])
        p = clf.predict_proba(scaler.transform(f_test))[:, 1]
        pred = p >= 0.5
        yt = y[test_rows].astype(bool)
        results[name] = {
            "probe_auc": roc_auc(yt, p),
            "probe_balanced_accuracy": float(
                ((pred & yt).sum() / yt.sum() + (~pred & ~yt).sum() / (~yt).sum()) / 2
            ),
        }
        # §5.1: scikit-learn's t-SNE with its defaults
        xy = TSNE(2, random_state=0).fit_transform(f_test)
        panels[f"{name} (probe AUC {results[name]['probe_auc']:.2f})"] = (
            y[test_rows],
            ["normal", "abnormal"],
            xy,
        )
        log(f"probe {name}: {results[name]}")
    plot_embedding(
        None, panels, out / "tsne.png", "t-SNE of the encoders' features, test kidney images"
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--clusters", type=Path, default=Path(".cache/studies/deep-clustering/lsd-s0")
    )
    parser.add_argument("--lsd-epochs", type=int, default=15, help="when --clusters is unusable")
    parser.add_argument("--threshold", type=float, default=None, help="pairs.threshold")
    parser.add_argument("--convirt-steps", type=int, default=400)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path(".cache/studies/convirt"))
    parser.add_argument("--out", type=Path, default=Path("reports/studies/convirt"))
    args = parser.parse_args()
    params = load_params()
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = str(work / "cache")
    started = time.perf_counter()
    splits = archive(work)

    clusters = args.clusters
    if not same_images(splits, clusters):
        clusters = work / "lsd-s0"
        if not (clusters / "clusters.json").is_file():
            log(f"pretrain lsd ({args.lsd_epochs} epochs)")
            cfg = params.pretrain.model_copy(
                update={
                    "method": "lsd",
                    "seed": 0,
                    "max_epochs": args.lsd_epochs,
                    "max_steps": None,
                    "cache_dir": cache_dir,
                }
            )
            pretrain(splits, clusters, cfg, hparams=params.method_params("lsd"), progress=False)
    log(f"clusters: {clusters}")

    pairs_cfg = params.pairs
    if args.threshold is not None:
        pairs_cfg = pairs_cfg.model_copy(update={"threshold": args.threshold})
    pairs_dir = work / f"pairs-t{pairs_cfg.threshold}"
    if not (pairs_dir / "flow.json").is_file():
        make_pairs(splits, clusters, pairs_dir, pairs_cfg)
    flow = json.loads((pairs_dir / "flow.json").read_text())
    # how many paired images really show a kidney (the generator's truth)
    plan = plan_archive("small", 0, STUDY_FRACTIONS)
    truth = pd.Series(plan.truth()[:, CLASSES.index("kidney")], index=plan.manifest["image"])
    paired = Dataset.open(pairs_dir).manifest
    flow["pairs_kidney_precision"] = float(truth.loc[paired["image"]].mean())
    unlabeled = plan.manifest["split"] == "unlabeled"
    flow["unlabeled_kidney_share"] = float(truth[unlabeled.to_numpy()].mean())
    log(f"pairs: {flow}")

    oracle_dir = work / "pairs-oracle"
    if not (oracle_dir / "flow.json").is_file():
        make_pairs(oracle_dataset(splits, plan, work / "splits-oracle"), clusters, oracle_dir,
                   pairs_cfg)  # fmt: skip
    oracle_flow = json.loads((oracle_dir / "flow.json").read_text())
    oracle_flow["pairs_kidney_precision"] = float(
        truth.loc[Dataset.open(oracle_dir).manifest["image"]].mean()
    )
    log(f"oracle pairs: {oracle_flow}")

    shuffled_dir = work / "pairs-shuffled"
    if not (shuffled_dir / "manifest.parquet").is_file():
        shuffled_pairs(pairs_dir, shuffled_dir)

    kidney = work / "kidney"
    if not (kidney / "counts.json").is_file():
        organ_task(splits, kidney, pairs_cfg)
    counts = json.loads((kidney / "counts.json").read_text())

    encoders: dict[str, dict[int, Path | None]] = {name: {} for name in INITS}
    for seed in args.seeds:
        sources = (
            ("convirt", pairs_dir),
            ("convirt-oracle", oracle_dir),
            ("convirt-shuffled", shuffled_dir),
        )
        for name, source in sources:
            run = work / f"{name}-s{seed}"
            if not (run / "encoder.pt").is_file():
                log(f"{name} seed {seed} ({args.convirt_steps} steps)")
                cfg = params.pretrain.model_copy(
                    update={
                        "method": "convirt",
                        "seed": seed,
                        "max_steps": args.convirt_steps,
                        "cache_dir": cache_dir,
                        "tsne_points": 0,
                    }
                )
                hp = params.method_params("convirt")
                pretrain(source, run, cfg, hparams=hp, progress=False)
            encoders[name][seed] = run / "encoder.pt"
        encoders["lsd"][seed] = clusters / "encoder.pt"
        encoders["random"][seed] = None
    first = args.seeds[0]
    first_encoders = {k: v[first] for k, v in encoders.items()}
    probe = probe_and_tsne(first_encoders, kidney, cache_dir, params.pretrain.backbone, out)

    supervised = params.method_params("supervised")
    decisions: dict[str, list[np.ndarray]] = {k: [] for k in INITS}
    metrics: dict[str, list[dict]] = {k: [] for k in INITS}
    y = exams = None
    for seed in args.seeds:
        for name in INITS:
            run = work / f"finetune-{name}-s{seed}"
            if not (run / "train.json").is_file():
                log(f"fine-tune from {name}, seed {seed}")
                weights = encoders[name][seed]
                cfg = TrainConfig(
                    **{
                        **params.train.model_dump(),
                        "init": "checkpoint" if weights else "random",
                        "weights": str(weights) if weights else None,
                        "seed": seed,
                        "max_steps": args.finetune_steps,
                        "cache_dir": cache_dir,
                    }
                )
                train(kidney, run, cfg, hparams=supervised, progress=False)
            test, scored = score_predictions(run / PREDICTIONS_FILE, EvaluateConfig(bootstrap=0))
            y, exams = test.y, test.exams
            decisions[name].append(scored.test_pred)
            metrics[name].append({k: v for k, v in scored.metrics.items() if k != "per_class"})
    assert y is not None and exams is not None
    comparisons = {}
    pairs_ = (("convirt", "random"), ("convirt", "lsd"), ("lsd", "random"),
              ("convirt-oracle", "random"), ("convirt-oracle", "convirt"),
              ("convirt-shuffled", "random"), ("convirt", "convirt-shuffled"))  # fmt: skip
    for a, b in pairs_:
        for stat, fn in STATISTICS.items():
            ci = bootstrap_paired_difference(y, decisions[a], decisions[b], exams, statistic=fn)
            comparisons[f"{a} - {b}: {stat}"] = {
                "estimate": ci.estimate,
                "low": ci.low,
                "high": ci.high,
            }
    means = {
        name: {k: float(np.nanmean([m[k] for m in ms])) for k in ms[0] if _number(ms[0][k])}
        for name, ms in metrics.items()
    }
    stds = {
        name: {k: float(np.nanstd([m[k] for m in ms])) for k in ms[0] if _number(ms[0][k])}
        for name, ms in metrics.items()
    }
    results = {
        "budget": {
            "seeds": args.seeds,
            "convirt_steps": args.convirt_steps,
            "finetune_steps": args.finetune_steps,
            "clusters": str(clusters),
            "supervised": supervised.model_dump() if supervised else None,
            "convirt": params.method_params("convirt").model_dump(by_alias=True),  # type: ignore[union-attr]
        },
        "flow": flow,
        "oracle_flow": oracle_flow,
        "kidney_task": counts,
        "probe": probe,
        "finetune_mean": means,
        "finetune_std": stds,
        "finetune_runs": metrics,
        "comparisons": comparisons,
        "paper": PAPER,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "study.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    text = markdown(results)
    (out / "study.md").write_text(text)
    print(text)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def markdown(r: dict) -> str:
    rows = [
        ("normal: precision (NPV)", "npv"),
        ("normal: recall (specificity)", "specificity"),
        ("normal: F1", "f1_negative"),
        ("abnormal: precision", "precision"),
        ("abnormal: recall (sensitivity)", "sensitivity"),
        ("abnormal: F1", "f1"),
        ("accuracy", "accuracy"),
        ("macro avg precision", "precision_macro"),
        ("macro avg recall (balanced accuracy)", "balanced_accuracy"),
        ("macro avg F1", "f1_macro"),
        ("AUC", "auc"),
    ]
    mean, std, paper = r["finetune_mean"], r["finetune_std"], r["paper"]
    lines = [
        "| test | random init | LSD init | ConVIRT init | ConVIRT, oracle pairs "
        "| ConVIRT, shuffled texts | paper: ImageNet | paper: ConVIRT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in rows:
        k = f"test_{key}"
        cells = [f"{mean[n].get(k, float('nan')):.2f} ± {std[n].get(k, 0):.2f}" for n in INITS]
        p = [f"{paper[s][key]:.2f}" if key in paper[s] else "–" for s in ("baseline", "convirt")]
        lines.append(f"| {label} | " + " | ".join(cells + p) + " |")
    lines += ["", "| paired difference (seeds averaged) | estimate | 95 % CI |", "|---|---|---|"]
    for name, c in r["comparisons"].items():
        lines.append(f"| {name} | {c['estimate']:+.3f} | [{c['low']:+.3f}, {c['high']:+.3f}] |")
    lines += ["", "| frozen features | probe AUC | probe balanced accuracy |", "|---|---|---|"]
    for name, p in r["probe"].items():
        lines.append(f"| {name} | {p['probe_auc']:.3f} | {p['probe_balanced_accuracy']:.3f} |")
    lines += ["", "```", json.dumps(r["flow"]), json.dumps(r["oracle_flow"]),
              json.dumps(r["kidney_task"]), "```", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
