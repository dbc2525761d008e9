"""`medssl study label-fractions` (paper 000 Fig. 6): the preset's grid of strategies, a real
study on `tiny` through the tune machinery (one MLflow sweep run, the report, the plot, resume),
and the report's numbers against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import medssl
from medssl.config import EvaluateConfig, load_params
from medssl.metrics.bootstrap import bootstrap_weighted_f1
from medssl.stages.study import PRESET, STRATEGIES, VARIANT_KEY
from medssl.stages.tune import plan_sweep
from medssl.tuning import apply_to_params, build_space, trial_values

REPO = Path(__file__).resolve().parents[1]


def test_a_variant_dimension_sets_its_keys_item_by_item():
    dims = build_space(
        {VARIANT_KEY: [["supervised", "random"], ["fixmatch-twohead", "checkpoint"]]}, 1
    )
    assert dims[0].zipped and dims[0].short == "method,init"
    values = trial_values({VARIANT_KEY: ["fixmatch-twohead", "checkpoint"]}, dims)
    assert values == {"train.method": "fixmatch-twohead", "train.init": "checkpoint"}


def test_a_variant_with_the_wrong_number_of_items_is_one_line():
    from medssl.errors import ConfigError

    with pytest.raises(ConfigError, match="variant 2 has 1 item"):
        build_space({VARIANT_KEY: [["supervised", "random"], "supervised"]}, 1)
    with pytest.raises(ConfigError, match="variant 1 has 3 item"):
        build_space({VARIANT_KEY: [["supervised", "random", "x"]]}, 1)


def test_without_resamples_a_cell_has_its_mean_and_no_interval():
    from medssl.metrics.bootstrap import bootstrap_paired_difference

    y = np.array([[1, 0], [0, 1], [1, 1]])
    ci = bootstrap_paired_difference(y, [y.copy()], [], np.array(["a", "b", "b"]), 0)
    assert ci.estimate == 1.0 and np.isnan(ci.low) and np.isnan(ci.high)


def test_the_preset_is_strategies_1_to_4_at_every_label_fraction():
    params = load_params(REPO / "params.yaml")
    plan = plan_sweep(params, params.tune.with_preset(PRESET), {"train.weights": "/x/encoder.pt"})
    variant = next(d for d in plan.dims if d.key == VARIANT_KEY)
    names = {STRATEGIES[tuple(v)] for v in variant.values}
    assert names == {
        "1 supervised", "2 encoder + supervised", "3 One-Head", "3 Two-Head",
        "4 encoder + One-Head", "4 encoder + Two-Head",
    }  # fmt: skip
    fractions = next(d for d in plan.dims if d.key == "train.label_fraction")
    assert fractions.values == tuple(params.split.label_fractions)
    assert plan.trials == 6 * len(fractions.values) * params.tune.with_preset(PRESET).seeds


def test_a_cluster_address_is_refused_in_one_line(tiny_split, tmp_path):
    result = medssl(
        "study", "label-fractions", str(tiny_split), "--out", str(tmp_path / "s"),
        "--encoder", str(tmp_path / "none.pt"), "--no-track",
        "-S", "tune.address=http://ray-head:8265",
    )  # fmt: skip
    assert result.code == 2 and "not supported yet" in result.err
    assert len(result.err.strip().splitlines()) == 1


STUDY_PARAMS = {
    "pretrain": {"device": "cpu", "max_steps": 2, "batch_exams": 4, "tsne_points": 0},
    "train": {"device": "cpu", "batch_exams": 2, "max_batch_images": 32, "lr": 0.001},
    "evaluate": {"bootstrap": 50},
}


def test_the_study_runs_every_cell_reports_and_resumes(tiny_split, tmp_path):
    """2 strategies × 2 fractions × 1 seed on tiny through `medssl study label-fractions`: one
    MLflow sweep run with a child run per cell and the report as artifacts; the report's means
    equal the cells' own test F1; a rerun with --resume trains nothing again."""
    from mlflow import MlflowClient

    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    for section, values in STUDY_PARAMS.items():
        apply_to_params(params_file, {f"{section}.{k}": v for k, v in values.items()})
    cache = str(tmp_path / "cache")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "MEDSSL_TRACKING": "1"}
    space = (
        "{'train.method,train.init': [[supervised, checkpoint], [fixmatch-twohead, checkpoint]],"
        " train.label_fraction: [0.5, 1.0], train.max_steps: 4,"
        " fixmatch-twohead.mu: 1, fixmatch-twohead.tau: 0.5}"
    )
    out = tmp_path / "study"
    args = [
        "study", "label-fractions", str(tiny_split), "--out", str(out), "--params",
        str(params_file), "--seeds", "1", "--max-concurrent", "2",
        "-S", f"tune.presets.{PRESET}.space={space}",
        "-S", f"pretrain.cache_dir={cache}", "-S", f"train.cache_dir={cache}",
    ]  # fmt: skip
    first = medssl(*args, env=env, timeout=600)
    assert first.code == 0, first.err[-3000:]
    assert (out / "encoder" / "encoder.pt").is_file()  # pre-trained once, in the study folder
    for name in ("study.md", "study.json", "fig6.png", "sweep/results.csv"):
        assert (out / name).is_file(), name
    report = json.loads((out / "study.json").read_text())
    table = pd.DataFrame(report["table"])
    assert len(table) == 4 and set(table["seeds"]) == {1}
    assert set(table["strategy"]) == {"2 encoder + supervised", "4 encoder + Two-Head"}
    assert (table["ci_low"] <= table["f1_weighted"]).all()
    assert (table["f1_weighted"] <= table["ci_high"]).all()
    effects = pd.DataFrame(report["effects"])
    assert list(effects["effect"].unique()) == ["Two-Head − supervised (encoder init)"]
    assert len(effects) == 2
    # every cell's mean is its trial's own test weighted F1, scored like `medssl evaluate`
    results = pd.read_csv(out / "sweep" / "results.csv")
    assert (results["status"] == "completed").all() and len(results) == 4
    for row in results.to_dict(orient="records"):
        method = row[VARIANT_KEY].split("/")[0]
        name = "2 encoder + supervised" if method == "supervised" else "4 encoder + Two-Head"
        cell = table[
            (table["strategy"] == name) & (table["label_fraction"] == row["train.label_fraction"])
        ]
        assert cell["f1_weighted"].item() == pytest.approx(row["test_f1_weighted"], abs=1e-4)
        summary = json.loads(
            (out / "sweep" / "trials" / row["trial"] / "train" / "train.json").read_text()
        )
        assert summary["init"] == "checkpoint" and summary["method"] == method
        assert cell["labeled"].item() == summary["train_images"]
    # MLflow: the sweep run is the study run, with every cell as a child and the report
    mc = MlflowClient(uri)
    runs = mc.search_runs([mc.get_experiment_by_name("medssl").experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("medssl.kind") == "sweep"]
    assert len(sweeps) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweeps[0].info.run_id]
    assert len(children) == 4
    artifacts = {a.path for a in mc.list_artifacts(sweeps[0].info.run_id, "study")}
    assert {"study/study.md", "study/fig6.png"} <= artifacts
    # resumable: nothing is trained again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("sweep/trials/*/train/model.pt")}
    again = medssl(*args, "--resume", env=env, timeout=600)
    assert again.code == 0, again.err[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_cell_ci_is_the_exam_bootstrap_of_its_f1():
    """With one seed, a cell's CI is the percentile bootstrap over test exams of its F1 (the
    evaluate stage's interval), so the study and `medssl evaluate` agree; with two seeds the
    estimate is the mean of their F1."""
    from medssl.metrics.multilabel import weighted_f1
    from medssl.stages.study import _Cell, strategy_table

    rng = np.random.default_rng(0)
    y = rng.random((300, 5)) < 0.3
    exams = np.repeat(np.arange(30), 10)
    a, b = (np.where(rng.random(y.shape) < p, ~y, y) for p in (0.2, 0.4))
    cfg = EvaluateConfig(bootstrap=200, seed=3)
    row = strategy_table({("s", 1.0): _Cell("s", 1.0, 10, y, exams, [a])}, cfg).iloc[0]
    ci = bootstrap_weighted_f1(y, a, exams, 200, 0.95, 3)
    assert row["f1_weighted"] == pytest.approx(weighted_f1(y, a), abs=1e-4)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-4)
    two = strategy_table({("s", 1.0): _Cell("s", 1.0, 10, y, exams, [a, b])}, cfg).iloc[0]
    mean = (weighted_f1(y, a) + weighted_f1(y, b)) / 2
    assert two["seeds"] == 2 and two["f1_weighted"] == pytest.approx(mean, abs=1e-4)
