"""Paper 001 Table 1 on the generated cardiac-MR archive: DeepCluster's clusters of the last
model's features against the images' true categories (NMI t vs labels, cluster purity CP, eq. 2-3)
and their stability (NMI t vs t−1), for setting (i) (3 balanced long-axis views, size `small-3`)
and setting (iii) (13 imbalanced categories, size `small`), beside k-means on raw pixels and the
DICOM headers (`series_description`, wrong for data.metadata_error of the series).

    python benchmarks/cardiac_clustering_study.py --sizes small-3 small --epochs 12 --seeds 0 \
        --out docs/results/deepcluster

Every image that DeepCluster clusters (pretrain.rows = unlabeled+train, ~94 % of the archive) is
scored against the generator's truth, which the archive hides on its unlabeled rows (the study
re-plans the archive to read it); the paper scores all its images the same way. Differences are
paired over the same images and come with a 95 % CI from resampling exams (contingency tables per
exam, so purity's majority mapping is recomputed in every resample). Runs go through the stage
functions (synth, split, pretrain) with paper 001's loop settings (SGD, lr 0.05, momentum 0.9,
weight decay 1e-5, batches of 256); a rerun reuses finished runs in --work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.config import DataConfig, PretrainConfig, SplitConfig, load_params
from medssl.data.cache import open_cache
from medssl.data.contract import Dataset
from medssl.data.synth.cardiac import plan_cardiac
from medssl.kmeans import kmeans
from medssl.methods.deepcluster import DeepCluster
from medssl.metrics.clustering import nmi, purity
from medssl.stages.pretrain import pretrain
from medssl.stages.split import split
from medssl.stages.synth import synth

# labels on a small development subset only (the archive's point); val follows training
FRACTIONS = {"unlabeled": 0.90, "train": 0.04, "val": 0.03, "test": 0.03}
# paper 001 Table 1 (200 epochs): dataset → (images, classes, clusters, NMI t/t-1, NMI labels, CP)
PAPER_TABLE1 = {
    "(i) 3 balanced": (47_637, 3, 24, 0.675, 0.519, 0.997),
    "(ii) 13 imbalanced": (192_272, 13, 104, 0.782, 0.605, 0.991),
    "(iii) 13 imbalanced": (23_943, 13, 104, 0.745, 0.609, 0.994),
}
CURVE_KEYS = (
    "epoch", "train_loss", "nmi_prev", "val_nmi", "val_purity", "clusters_empty",
    "feature_seconds", "kmeans_seconds", "seconds",
)  # fmt: skip
SETTING = {"small-3": "(i) 3 balanced", "small": "(iii) 13 imbalanced", "tiny": "tiny"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dataset(work: Path, size: str) -> tuple[Path, np.ndarray]:
    """The split archive and every manifest row's true category (hidden on unlabeled rows)."""
    raw, splits = work / size / "archive", work / size / "splits"
    fractions = SplitConfig(fractions=FRACTIONS)  # type: ignore[arg-type]
    data = DataConfig(kind="cardiac-mr", size=size, seed=0)
    if not (raw / "manifest.parquet").is_file():
        log(f"synth cardiac-mr {size}")
        synth(raw, data, fractions, progress=False)
    if not (splits / "manifest.parquet").is_file():
        split(raw, splits, fractions)
    plan = plan_cardiac(size, 0, FRACTIONS, data.metadata_error)
    truth = pd.Series(plan.category, index=plan.manifest["image"].to_numpy())
    images = Dataset.open(splits).manifest["image"].to_numpy()
    return splits, truth.loc[images].to_numpy()


def contingency(exams: np.ndarray, truth: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """[exams, K, C] counts of (cluster, category) per exam."""
    _, e = np.unique(exams, return_inverse=True)
    k, c = int(clusters.max()) + 1, int(truth.max()) + 1
    out = np.zeros((e.max() + 1, k, c))
    np.add.at(out, (e, clusters, truth), 1)
    return out


def purity_nmi(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Purity (eq. 3) and NMI (eq. 2, arithmetic normalisation) of [..., K, C] count tables."""
    n = table.sum(axis=(-2, -1))
    pur = table.max(axis=-1).sum(axis=-1) / n
    p = table / n[..., None, None]
    pk, pc = p.sum(axis=-1), p.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = np.nansum(p * np.log(p / (pk[..., :, None] * pc[..., None, :])), axis=(-2, -1))
        hk = -np.nansum(pk * np.log(pk), axis=-1)
        hc = -np.nansum(pc * np.log(pc), axis=-1)
    return pur, 2 * mi / (hk + hc)


def paired_ci(
    exams: np.ndarray, truth: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0
) -> dict[str, dict[str, float]]:
    """95 % exam-bootstrap CIs of purity(a) − purity(b) and NMI(a) − NMI(b) on the same images."""
    ta, tb = contingency(exams, truth, a), contingency(exams, truth, b)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(ta), np.full(len(ta), 1 / len(ta)), size=1000)
    out = {}
    da = [purity_nmi(np.tensordot(weights, t, axes=1)) for t in (ta, tb)]
    full = [purity_nmi(t.sum(axis=0)) for t in (ta, tb)]
    for i, name in enumerate(("purity", "nmi")):
        diff = da[0][i] - da[1][i]
        out[name] = {
            "estimate": float(full[0][i] - full[1][i]),
            "low": float(np.quantile(diff, 0.025)),
            "high": float(np.quantile(diff, 0.975)),
        }
    return out


def raw_pixel_clusters(splits: Path, rows: np.ndarray, k: int, cache_dir: str) -> np.ndarray:
    """k-means (medssl.kmeans, same K) on every image's z-scored, ℓ2-normalised raw pixels."""
    ds = Dataset.open(splits)
    cache = open_cache(ds, cache_dir, progress=False)
    x = cache.take(rows).reshape(len(rows), -1).astype(np.float32)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return kmeans(x, k, iterations=20, seed=0).labels


def run_size(args: argparse.Namespace, size: str) -> dict:
    work = args.work
    splits, truth_all = dataset(work, size)
    ds = Dataset.open(splits)
    m = ds.manifest
    classes = list(ds.info.classes)
    header = pd.Series(range(len(classes)), index=classes)
    header_all = header.loc[m["series_description"].to_numpy()].to_numpy()
    params = load_params()
    base = params.pretrain.model_dump()
    out: dict = {"size": size, "setting": SETTING.get(size, size), "runs": {}}
    cache_dir = str(work / "cache")
    clustered = np.flatnonzero(m["split"].isin(["unlabeled", "train"]).to_numpy())
    truth = truth_all[clustered]
    for seed in args.seeds:
        run = work / size / f"deepcluster-s{seed}"
        if not (run / "metrics.json").is_file():
            log(f"pretrain deepcluster on {size}, seed {seed}, {args.epochs} epochs")
            cfg = PretrainConfig(
                **{
                    **base,
                    **DeepCluster.paper_loop,
                    "method": "deepcluster",
                    "backbone": args.backbone,
                    "rows": "unlabeled+train",
                    "seed": seed,
                    "max_epochs": args.epochs,
                    "max_steps": None,
                    "cache_dir": cache_dir,
                }
            )
            pretrain(splits, run, cfg, hparams=DeepCluster.Hyperparameters(), progress=False)
        assignments = pd.read_parquet(run / "assignments.parquet")
        own = json.loads((run / "metrics.json").read_text())
        history = pd.read_csv(run / "history.csv")
        clusters = assignments["cluster"].to_numpy()[clustered]
        out["runs"][f"s{seed}"] = {
            "clusters": own["clusters"],
            "nmi_prev": own.get("nmi_prev"),
            "nmi_labels": nmi(truth, clusters),
            "purity": purity(truth, clusters),
            "clusters_used": own["clusters_used"],
            "largest_cluster_share": own["largest_cluster_share"],
            "history": history[[c for c in CURVE_KEYS if c in history]].to_dict(orient="list"),
        }
    first = out["runs"][f"s{args.seeds[0]}"]
    k = int(first["clusters"])
    log(f"k-means on raw pixels of {size}, K={k}")
    pixels = raw_pixel_clusters(splits, clustered, k, cache_dir)
    exams = m["exam_id"].to_numpy()[clustered]
    out["kmeans_raw"] = {"nmi_labels": nmi(truth, pixels), "purity": purity(truth, pixels)}
    headers = header_all[clustered]
    out["headers"] = {
        "nmi_labels": nmi(truth, headers),
        "purity": purity(truth, headers),
        "accuracy": float((headers == truth).mean()),
    }
    out["images"] = len(clustered)
    out["classes"] = len(classes)
    out["comparisons"] = {}
    for seed in args.seeds:
        run = work / size / f"deepcluster-s{seed}"
        dc = pd.read_parquet(run / "assignments.parquet")["cluster"].to_numpy()[clustered]
        out["comparisons"][f"s{seed} - kmeans-raw"] = paired_ci(exams, truth, dc, pixels)
        out["comparisons"][f"s{seed} - headers"] = paired_ci(exams, truth, dc, headers)
    return out


def markdown(results: dict) -> str:
    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = [
        "| dataset | source | # images | # classes | # clusters | NMI t vs t−1 | NMI t vs labels "
        "| cluster purity |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in PAPER_TABLE1.items():
        n, c, k, a, b, p = row
        lines.append(f"| {name} | paper 001, 200 epochs | {n:,} | {c} | {k} | {a} | {b} | {p} |")
    for res in results["sizes"]:
        for seed, r in res["runs"].items():
            lines.append(
                f"| {res['setting']} | medssl `{res['size']}`, {results['epochs']} epochs, "
                f"seed {seed[1:]} | {res['images']:,} | {res['classes']} | {r['clusters']} | "
                f"{f(r['nmi_prev'])} | {f(r['nmi_labels'])} | {f(r['purity'])} |"
            )
        km, hd = res["kmeans_raw"], res["headers"]
        k = next(iter(res["runs"].values()))["clusters"]
        lines.append(
            f"| {res['setting']} | k-means on raw pixels | {res['images']:,} | {res['classes']} "
            f"| {k} | – | {f(km['nmi_labels'])} | {f(km['purity'])} |"
        )
        lines.append(
            f"| {res['setting']} | DICOM headers (accuracy {hd['accuracy']:.3f}) | "
            f"{res['images']:,} | {res['classes']} | {res['classes']} | – | "
            f"{f(hd['nmi_labels'])} | {f(hd['purity'])} |"
        )
    lines += ["", "Paired differences (95 % CI, exam bootstrap over the same images):", ""]
    for res in results["sizes"]:
        for name, cmp in res["comparisons"].items():
            parts = [
                f"{metric} {c['estimate']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
                for metric, c in cmp.items()
            ]
            lines.append(f"- {res['setting']}, DeepCluster {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["small-3", "small"])
    parser.add_argument("--epochs", type=int, default=12, help="DeepCluster epochs per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--backbone", default="resnet18", help="paper: vgg16_bn (GPU)")
    parser.add_argument("--work", type=Path, default=Path(".cache/studies/deepcluster"))
    parser.add_argument("--out", type=Path, default=Path("reports/studies/deepcluster"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {
        "epochs": args.epochs,
        "seeds": args.seeds,
        "backbone": args.backbone,
        "fractions": FRACTIONS,
        "paper_table1": PAPER_TABLE1,
        "sizes": [run_size(args, size) for size in args.sizes],
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "study.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "study.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
