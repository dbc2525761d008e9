"""`medssl pipeline run --local`: the Kubeflow DAG end to end with kfp.local on the tiny archive,
MLflow on sqlite; the exit handler; the data step on a DVC-tracked repository; the MLflow parent
run helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medssl import __version__
from medssl.config import load_params
from medssl.orchestration import (
    TAG_KFP_RUN,
    finish_pipeline_run,
    prepare_data,
    start_pipeline_run,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MEDSSL = str(BIN / "medssl")
TINY = ["-S", "data.size=tiny", "-S", "data.workers=1", "-S", "validate.workers=1"]
FAST = ["-S", "train.max_epochs=1", "-S", "train.workers=1", "-S", "evaluate.bootstrap=20"]
FAST += ["-S", "pretrain.max_steps=2", "-S", "pretrain.workers=1", "-S", "pretrain.tsne_points=0"]


def run_local(
    tmp_path: Path, *args: str, pipeline: str = "training"
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MEDSSL_PIPELINE_RUN_ID", None)
    cmd = [
        MEDSSL,
        "pipeline",
        "run",
        "--local",
        "--pipeline-file",
        str(ROOT / "pipelines" / f"{pipeline}.py"),
    ]
    cmd += ["--root", str(tmp_path / "kfp"), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)


def mlflow_client(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def all_runs(client) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps) if exps else []


@pytest.mark.slow
def test_run_local_end_to_end_registers_the_model(tmp_path):
    # the pretrain branch (params.yaml's train_init; the built-in default is random)
    proc = run_local(tmp_path, *TINY, *FAST, "-S", "train.init=checkpoint")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "registered version 1 (promoted): models:/abdominal-organs/1" in proc.stdout
    run_dir = Path(proc.stdout.split("outputs: ", 1)[1].splitlines()[0])
    assert run_dir.parent == tmp_path / "kfp"

    # the terminal gets one line per step event; the steps' full output is in the log
    assert "Task 'register' finished with status SUCCESS" in proc.stdout
    assert '"outputFile"' not in out and "have no effect" not in out
    log = Path(proc.stdout.split("log: ", 1)[1].splitlines()[0]).read_text()
    assert '"outputFile"' in log and "have no effect in the current local runner" in log

    # typed artifacts on disk: the model folder, the Markdown reports, the test metrics
    assert (run_dir / "train" / "model" / "model.pt").is_file()
    # train_init=checkpoint: pretrain ran and train started from its encoder
    assert (run_dir / "pretrain" / "encoder" / "encoder.pt").is_file()
    train_summary = json.loads((run_dir / "train" / "model" / "train.json").read_text())
    assert train_summary["init"] == "checkpoint"
    assert (run_dir / "validate" / "report").read_text().startswith("# Data validation")
    evaluation = (run_dir / "evaluate" / "report").read_text()
    assert evaluation.startswith("# Evaluation") and "(data:image/png;base64," in evaluation
    executor = json.loads((run_dir / "evaluate" / "executor_output.json").read_text())
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    own = json.loads((run_dir / "evaluate" / "evaluation" / "metrics.json").read_text())
    assert metrics["test_f1_weighted"] == own["test_f1_weighted"]  # the same names and numbers
    classification = executor["artifacts"]["classification"]["artifacts"][0]["metadata"]
    matrix = classification["confusionMatrix"]["rows"]
    assert sum(map(sum, (r["row"] for r in matrix))) == own["test_images"] * len(own["per_class"])
    assert classification["confidenceMetrics"]

    client = mlflow_client(tmp_path)
    champion = client.get_model_version_by_alias("abdominal-organs", "champion")
    assert str(champion.version) == "1"
    runs = all_runs(client)
    (parent,) = [r for r in runs if r.data.tags.get("medssl.kind") == "pipeline"]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["medssl.data.source"] == "synth" and tags["medssl.data.size"] == "tiny"
    assert tags[TAG_KFP_RUN] and len(tags["medssl.data.hash"]) == 64
    assert parent.data.params["train.max_epochs"] == "1"
    stages = {
        r.data.tags["medssl.stage"]: r for r in runs if r.data.tags.get("medssl.kind") == "stage"
    }
    assert set(stages) == {"pretrain", "train", "evaluate", "register"}
    for stage in stages.values():
        assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert stage.info.status == "FINISHED"
    assert champion.run_id == stages["register"].info.run_id


@pytest.mark.slow
def test_run_local_failed_step_marks_the_parent_run_failed(tmp_path):
    """Images smaller than validate.min_image_side fail validation: the step fails, nothing
    after it runs, and the exit handler ends the MLflow parent run FAILED."""
    proc = run_local(tmp_path, *TINY, "-S", "validate.min_image_side=1000", "--no-cache")
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pipeline failed") and "validate" in last, proc.stderr[-2000:]
    run_dir = Path(proc.stdout.split("outputs: ", 1)[1].splitlines()[0])
    assert not (run_dir / "train").exists() and not (run_dir / "split").exists()
    assert (run_dir / "finish-run").is_dir()

    client = mlflow_client(tmp_path)
    (parent,) = [r for r in all_runs(client) if r.data.tags.get("medssl.kind") == "pipeline"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["medssl.kfp.state"] == "FAILED"
    assert not client.search_registered_models()


@pytest.mark.slow
def test_batch_inference_labels_the_data_with_the_champion(tmp_path, monkeypatch):
    """The second pipeline: the current champion (resolved when the step runs) labels the
    synthetic archive; the predictions are a Dataset artifact, the summary Markdown."""
    from medssl.data.synth.archive import CLASSES
    from medssl.tracking.registry import gate, log_and_register
    from model_files import saved_classifier

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, spec = saved_classifier(tmp_path / "model.pt", list(CLASSES), image_size=32)
    version = log_and_register(tmp_path / "model.pt", spec, {"m": 0.5}, "abdominal-organs")
    assert gate("abdominal-organs", version, "m").promoted
    proc = run_local(tmp_path, *TINY, pipeline="batch_inference")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run_dir = Path(proc.stdout.split("outputs: ", 1)[1].splitlines()[0])
    assert run_dir.name.startswith("medssl-batch-inference")
    table = pd.read_parquet(run_dir / "predict" / "predictions" / "predictions.parquet")
    assert len(table) == 330 and set(table["model_version"]) == {version}
    assert list(table.columns[-3:]) == ["model_name", "model_version", "model_run_id"]
    summary = (run_dir / "predict" / "summary").read_text()
    assert summary.startswith("# Batch predictions") and "| liver |" in summary
    assert not (run_dir / "train").exists()  # nothing but config, data and predict ran


def test_pipeline_run_helpers_open_and_close_the_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_params(Path("/nonexistent"), ["register.experiment=kfp-test"])
    run_id = start_pipeline_run("job-1", cfg, {"medssl.data.rev": "abc", "other": "dropped"})
    client = mlflow_client(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["medssl.data.rev"] == "abc" and "other" not in run.data.tags
    assert run.data.tags["medssl.version"] == __version__
    assert run.data.tags["medssl.kind"] == "pipeline"
    assert finish_pipeline_run("job-1", "kfp-test", "SUCCEEDED") == "FINISHED"
    assert client.get_run(run_id).info.status == "FINISHED"
    # a pipeline that failed before it had a parent run still gets one, FAILED
    assert finish_pipeline_run("job-2", "kfp-test", "FAILED") == "FAILED"
    (orphan,) = [r for r in all_runs(client) if r.data.tags.get(TAG_KFP_RUN) == "job-2"]
    assert orphan.info.status == "FAILED"
    assert orphan.data.tags["medssl.kfp.state"] == "FAILED"
    assert client.get_run(run_id).data.tags["medssl.kfp.state"] == "SUCCEEDED"


def test_data_step_fetches_a_dvc_tracked_revision(tiny_archive, tmp_path):
    """prepare_data with a data repo: the dataset at a git revision of a DVC repository (its own
    cache, no remote), tagged with the resolved commit and DVC hash."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def sh(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    shutil.copytree(tiny_archive, repo / "data" / "abdominal-us")
    sh("dvc", "add", "-q", "data/abdominal-us")
    sh("git", "add", "-A")
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data")
    sha = sh("git", "rev-parse", "HEAD")

    out = tmp_path / "fetched"
    tags = prepare_data(out, load_params(Path("/nonexistent")), str(repo), sha, "data/abdominal-us")
    assert (out / "manifest.parquet").read_bytes() == (
        tiny_archive / "manifest.parquet"
    ).read_bytes()
    assert tags["medssl.data.rev"] == sha and tags["medssl.data.source"] == "dvc"
    assert tags["medssl.data.path"] == "data/abdominal-us"
    assert tags["medssl.data.dvc_hash"].endswith(".dir")
