"""Paper 000 Fig. 5 on the generated archive: how sensitive PICA and LSD are to λ, from the sweep
folders `medssl tune --preset lambda-sensitivity` (and `alpha-sensitivity`) wrote.

    medssl tune .cache/studies/deep-clustering/splits --preset lambda-sensitivity \
        --out .cache/studies/tune/lambda-sensitivity
    medssl tune .cache/studies/deep-clustering/splits --preset alpha-sensitivity \
        --out .cache/studies/tune/alpha-sensitivity
    python benchmarks/lambda_sensitivity.py --sweep .cache/studies/tune/lambda-sensitivity \
        --alpha .cache/studies/tune/alpha-sensitivity --out docs/results/lambda-sensitivity

For every completed trial, the Algorithm-1 test decisions are re-scored from its
predictions.parquet exactly like `medssl evaluate`; then, with test exams resampled once for every
cell (a paired bootstrap, 1,000 resamples):
  * per loss and λ: the mean weighted F1 over seeds;
  * per loss: the sensitivity to λ = max − min over λ of those means, and PICA's minus LSD's;
  * per λ and pooled: LSD − PICA (mean over seeds) with its 95 % CI.
Writes study.json, study.md and the sweep's box plot (sweep.png) to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from deep_clustering_study import test_decisions

from medssl.metrics.bootstrap import (
    bootstrap_paired_difference,
    group_confusion,
    resample_multiplicities,
    weighted_f1_from_counts,
)

LAMBDA = "pica.lambda,lsd.lambda"
METHOD = "pretrain.method"
# paper 000 Fig. 5 (read from the figure): LSD's weighted F1 varies less over λ ∈ {0.5 … 10} and
# its median is higher than PICA's
PAPER = "LSD is less sensitive to λ than PICA and has the higher median weighted F1 (Fig. 5)"


def load_cells(sweep: Path, keys: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
    """{(values of keys): [test decisions per seed]}, y_test, test exams."""
    results = pd.read_csv(sweep / "results.csv")
    done = results[results["status"] == "completed"]
    cells: dict[tuple, list[np.ndarray]] = {}
    y = exams = None
    for _, row in done.iterrows():
        y_t, pred, ex, _ = test_decisions(sweep / "trials" / row["trial"] / "pretrain")
        if y is None:
            y, exams = y_t, ex
        assert np.array_equal(y, y_t), "every trial must be scored on the same test rows"
        cells.setdefault(tuple(row[k] for k in keys), []).append(pred)
    assert y is not None and exams is not None, f"no completed trial in {sweep}"
    return cells, y, exams


def bootstrap_cells(
    cells: dict, y: np.ndarray, exams: np.ndarray, n: int = 1000, seed: int = 0
) -> tuple[dict, dict]:
    """Per cell: the seed-mean weighted F1 on the full test set, and its n bootstrap replicates
    (the same exam resamples for every cell)."""
    confusions = {
        key: [group_confusion(y, p, exams)[:3] for p in preds] for key, preds in cells.items()
    }
    n_groups = next(iter(confusions.values()))[0][0].shape[0]
    weights = resample_multiplicities(n_groups, n, np.random.default_rng(seed)).astype(float)
    ones = np.ones((1, n_groups))

    def mean_f1(w: np.ndarray, cms: list) -> np.ndarray:
        return np.mean([weighted_f1_from_counts(*(w @ c for c in cm)) for cm in cms], axis=0)

    point = {k: float(mean_f1(ones, cm)[0]) for k, cm in confusions.items()}
    reps = {k: mean_f1(weights, cm) for k, cm in confusions.items()}
    return point, reps


def ci(samples: np.ndarray, estimate: float) -> dict:
    lo, hi = np.quantile(samples, [0.025, 0.975])
    return {"estimate": estimate, "low": float(lo), "high": float(hi)}


def _ci(c) -> dict:
    return {"estimate": c.estimate, "low": c.low, "high": c.high}


def ci_text(c: dict) -> str:
    return f"{c['estimate']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"


def lambda_study(sweep: Path) -> tuple[dict, list[str]]:
    cells, y, exams = load_cells(sweep, [METHOD, LAMBDA])
    point, reps = bootstrap_cells(cells, y, exams)
    lambdas = sorted({lam for _, lam in cells})
    methods = [m for m in ("pica", "lsd") if any(k[0] == m for k in cells)]
    results = pd.read_csv(sweep / "results.csv")
    done = results[results["status"] == "completed"]
    out: dict = {"cells": {}, "sensitivity": {}, "lsd_minus_pica": {}, "seeds": {}}
    lines = [
        "| loss | " + " | ".join(f"λ = {lam:g}" for lam in lambdas) + " | median (all) | "
        "IQR | sensitivity: max − min over λ [95 % CI] |",
        "|---|" + "---|" * (len(lambdas) + 3),
    ]
    sens_reps = {}
    for m in methods:
        keys = [(m, lam) for lam in lambdas if (m, lam) in point]
        means = np.array([point[k] for k in keys])
        rep = np.stack([reps[k] for k in keys])
        sens_reps[m] = rep.max(axis=0) - rep.min(axis=0)
        sens = ci(sens_reps[m], float(means.max() - means.min()))
        f1 = done.loc[done[METHOD] == m, "test_f1_weighted"]
        q25, med, q75 = np.quantile(f1, [0.25, 0.5, 0.75])
        out["sensitivity"][m] = sens
        out["cells"][m] = {f"{lam:g}": point[(m, lam)] for lam in lambdas if (m, lam) in point}
        out["seeds"][m] = {f"{lam:g}": len(cells[(m, lam)]) for lam in lambdas if (m, lam) in cells}
        out[f"median_{m}"] = float(med)
        lines.append(
            f"| {m.upper()} | "
            + " | ".join(f"{point[(m, lam)]:.3f}" if (m, lam) in point else "" for lam in lambdas)
            + f" | {med:.3f} | {q25:.3f}–{q75:.3f} | {sens['estimate']:.3f} "
            f"[{sens['low']:.3f}, {sens['high']:.3f}] |"
        )
    lines += [
        "",
        "| paired difference (mean over seeds, same test exams) | Δ [95 % CI] |",
        "|---|---|",
    ]
    if len(methods) == 2:
        diff = ci(
            sens_reps["pica"] - sens_reps["lsd"],
            out["sensitivity"]["pica"]["estimate"] - out["sensitivity"]["lsd"]["estimate"],
        )
        out["pica_minus_lsd_sensitivity"] = diff
        lines.append(
            f"| sensitivity to λ: PICA − LSD (> 0: LSD less sensitive) | {ci_text(diff)} |"
        )
        for lam in lambdas:
            if ("lsd", lam) in cells and ("pica", lam) in cells:
                c = bootstrap_paired_difference(y, cells[("lsd", lam)], cells[("pica", lam)], exams)
                out["lsd_minus_pica"][f"{lam:g}"] = _ci(c)
                lines.append(f"| weighted F1 LSD − PICA at λ = {lam:g} | {ci_text(_ci(c))} |")
        pooled_l = [p for (m, _), ps in cells.items() if m == "lsd" for p in ps]
        pooled_p = [p for (m, _), ps in cells.items() if m == "pica" for p in ps]
        c = bootstrap_paired_difference(y, pooled_l, pooled_p, exams)
        out["lsd_minus_pica"]["pooled"] = _ci(c)
        lines.append(f"| weighted F1 LSD − PICA, all λ and seeds | {ci_text(_ci(c))} |")
    prevalence = float(done["test_prevalence_f1_weighted"].iloc[0])
    out["prevalence_f1_weighted"] = prevalence
    lines += ["", f"Label-prevalence baseline on the same test set: weighted F1 {prevalence:.3f}."]
    return out, lines


def alpha_study(sweep: Path) -> tuple[dict, list[str]]:
    cells, y, exams = load_cells(sweep, ["lsd.alpha"])
    point, reps = bootstrap_cells(cells, y, exams)
    alphas = sorted(k[0] for k in cells)
    lines = [
        "| LSD, λ = 2 | " + " | ".join(f"α = {a:g}" for a in alphas) + " |",
        "|---|" + "---|" * len(alphas),
        "| weighted F1 (mean over seeds) | "
        + " | ".join(f"{point[(a,)]:.3f}" for a in alphas)
        + " |",
    ]
    rep = np.stack([reps[(a,)] for a in alphas])
    means = np.array([point[(a,)] for a in alphas])
    sens = ci(rep.max(axis=0) - rep.min(axis=0), float(means.max() - means.min()))
    lines += ["", f"Sensitivity to α (max − min over α, 95 % CI): {ci_text(sens)}."]
    return {"cells": {f"{a:g}": point[(a,)] for a in alphas}, "sensitivity": sens}, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, required=True, help="the lambda-sensitivity sweep")
    parser.add_argument("--alpha", type=Path, help="the alpha-sensitivity sweep")
    parser.add_argument("--out", type=Path, default=Path("reports/studies/lambda-sensitivity"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result, lines = lambda_study(args.sweep)
    sweep_info = json.loads((args.sweep / "sweep.json").read_text())
    result["budget"] = sweep_info["budget"]
    result["paper"] = PAPER
    md = ["## λ sensitivity (paper 000 Fig. 5), test weighted F1 of Algorithm 1", "", *lines]
    if args.alpha:
        alpha, alpha_lines = alpha_study(args.alpha)
        result["alpha"] = alpha
        md += ["", "## α of LSD's Dirichlet prior", "", *alpha_lines]
        if (args.alpha / "sweep.png").is_file():
            shutil.copy2(args.alpha / "sweep.png", args.out / "alpha.png")
    if (args.sweep / "sweep.png").is_file():
        shutil.copy2(args.sweep / "sweep.png", args.out / "sweep.png")
    (args.out / "study.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (args.out / "study.md").write_text("\n".join(md) + "\n")
    print(json.dumps({k: result[k] for k in ("sensitivity", "lsd_minus_pica") if k in result}))


if __name__ == "__main__":
    main()
