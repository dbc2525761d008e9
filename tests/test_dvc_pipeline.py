"""The DVC pipeline of the repository, run on the `tiny` archive in a scratch git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medssl.metrics.multilabel import weighted_f1

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, ok: bool = True) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode != 0, f"{' '.join(cmd)} should have failed:\n{proc.stdout}"
    return proc.stdout + proc.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repo's pipeline (dvc.yaml, params.yaml, .gitignore, code deps) on `tiny`."""
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["size"] = "tiny"
    # enough labeled exams that the kidney task (paper 002 stages) has both classes in train
    params["split"]["fractions"] = {"unlabeled": 0.4, "train": 0.3, "val": 0.1, "test": 0.2}
    # the smallest budgets that still write every output DVC expects: one step of each training,
    # and a t-SNE of 10 images (tsne.png is an output of pretrain, so tsne_points must stay > 0;
    # t-SNE of 50 images cost up to 30 s of the pretrain stage on 2 busy cores)
    params["train"].update(max_epochs=1, checkpoint_every=5)
    params["pretrain"].update(max_steps=1, checkpoint_every=5, tsne_points=10)
    params["evaluate"]["bootstrap"] = 20
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], tmp_path)
    commit(tmp_path, "init")
    return tmp_path


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], project)


def versions(project: Path) -> dict[str, dict[str, str]]:
    """version → tags of every registered version in the project's own mlflow.db."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    found = client.search_model_versions("name = 'abdominal-organs'")
    return {str(v.version): dict(v.tags) for v in found}


def test_repro_then_nothing_then_queued_experiment(project: Path):
    out = run(["dvc", "repro"], project)
    stages = ("synth", "validate", "split", "pretrain", "train", "evaluate", "train-scratch",
              "evaluate-scratch", "register", "pairs", "organ-task", "convirt", "train-kidney",
              "evaluate-kidney", "register-kidney")  # fmt: skip
    for stage in stages:
        assert f"Running stage '{stage}'" in out
    # train starts from the pretrain stage's encoder, the baseline from random weights
    assert (
        json.loads((project / "models/supervised/train.json").read_text())["init"] == "checkpoint"
    )
    assert json.loads((project / "models/scratch/train.json").read_text())["init"] == "random"
    assert "weighted avg" in (project / "models/pretrain/table.txt").read_text()
    assert (project / "data/splits/splits.json").is_file()
    assert (project / "reports/validate/report.json").is_file()
    # metrics.json holds the weighted F1 of the model's own predictions at the val thresholds
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    preds = pd.read_parquet(project / "models/supervised/predictions.parquet")
    thresholds = pd.read_csv(project / "reports/evaluate/thresholds.csv")
    test = preds[preds["split"] == "test"]
    y = test[[f"label_{c}" for c in thresholds["class"]]].to_numpy(int)
    scores = test[[f"score_{c}" for c in thresholds["class"]]].to_numpy()
    decided = scores >= thresholds["threshold"].fillna(np.inf).to_numpy()
    assert metrics["test_f1_weighted"] == pytest.approx(weighted_f1(y, decided))
    first = json.loads((project / "reports/register.json").read_text())
    assert first["version"] == "1" and first["gate_decision"] == "promoted"
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["synth"]["params"]["params.yaml"]["data"]["size"] == "tiny"
    # paper 002: ConVIRT on the kidney pairs, the kidney model fine-tuned from it with GCE
    kidney = json.loads((project / "models/kidney/train.json").read_text())
    assert kidney["init"] == "checkpoint" and kidney["hyperparameters"]["loss"] == "gce"
    assert "macro avg" in (project / "reports/evaluate-kidney/table.txt").read_text()
    assert json.loads((project / "reports/register-kidney.json").read_text())["name"] == (
        "kidney-abnormal"
    )

    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again

    # the small metric and plot files are in git, so DVC can compare them across commits
    commit(project, "lock")
    tracked = run(["git", "ls-files", "reports", "models"], project).split()
    assert "reports/evaluate/metrics.json" in tracked
    assert "models/supervised/history.csv" in tracked
    assert {"models/pretrain/metrics.json", "models/pretrain/clusters.json"} <= set(tracked)
    assert any(p.startswith("reports/evaluate/pr/") and p.endswith(".csv") for p in tracked)
    assert not any(p.endswith((".pt", ".parquet")) for p in tracked)  # DVC's cache holds those

    # a training hyperparameter invalidates the three trainings only, never the data stages nor
    # pretrain (checked without running: the queued experiment below changes a cheaper one)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = 0.001
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    changed = set(json.loads(run(["dvc", "status", "--json"], project)))
    assert changed == {"train", "train-scratch", "train-kidney"}
    run(["git", "checkout", "params.yaml"], project)

    # a queued experiment runs in a temporary copy of the repository (.dvc/tmp/exps): its MLflow
    # runs and model still land in the repository's mlflow.db and mlruns/. It changes the gate's
    # margin: register must run again (v2), while the upstream stages come from DVC's cache.
    margin = 0.01
    run(["dvc", "exp", "run", "--queue", "-S", f"register.margin={margin}", "-n", "m01"], project)
    ran = run(["dvc", "exp", "run", "--run-all", "-j", "1"], project)
    for stage in ("synth", "validate", "split", "pretrain"):
        assert f"Running stage '{stage}'" not in ran
    assert "Running stage 'register'" in ran, ran
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert any("m01" in json.dumps(e) for e in exps), shown
    assert "test_f1_weighted" in json.dumps(exps)
    registered = versions(project)
    assert set(registered) == {"1", "2"}
    second = registered["2"]
    assert second["medssl.gate.champion_version"] == "1"
    assert second["medssl.gate.champion_source"] == "rescored"  # v1 scored on v2's test split
    challenger = float(second["medssl.gate.challenger_test_f1_weighted"])
    champion = float(second["medssl.gate.champion_test_f1_weighted"])
    assert float(second["medssl.gate.margin"]) == margin  # the queued override reached register
    expected = "promoted" if challenger > champion + margin else "refused"
    assert second["medssl.gate.decision"] == expected, second["medssl.gate.reason"]
    # the same split, so the rescored champion equals its own recorded number
    assert champion == pytest.approx(float(registered["1"]["medssl.metric.test_f1_weighted"]))
    artifacts = (project / "mlruns").resolve()
    assert artifacts.is_dir() and any(artifacts.rglob("MLmodel"))
    assert not list((project / ".dvc").rglob("mlflow.db"))


def test_a_failed_validation_stops_the_pipeline(project: Path):
    # tiny images are 32 px: demanding 64 px makes every image-size check fail
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["validate"]["min_image_side"] = 64
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(["dvc", "repro"], project, ok=False)
    assert "Running stage 'validate'" in out
    assert "FAILED" in out and "image" in out
    assert "Running stage 'split'" not in out
    assert not (project / "data/splits").exists()
