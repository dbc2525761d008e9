"""Remote storage for real, against an S3-compatible server on loopback (moto's standalone
server): a DVC remote on S3 (dvc-s3) and an MLflow tracking server whose artifacts live in S3
(`--artifacts-destination s3://…`, proxied to clients that hold no S3 credentials).

The MLflow server starts when this module starts (~15 s to come up) while the DVC test runs."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

import mlflow_server as mlflow_server_proc
from medssl.config import load_params
from medssl.tracking import stage_run
from medssl.tracking.registry import CHALLENGER, log_and_register
from model_files import images_and_expected, saved_classifier
from s3server import commit_all, init_repo, sh, tree_digest

DATASET = "data/abdominal-us"


# ---------------------------------------------------------------------------------------------
# DVC remote on S3


def test_dvc_push_then_pull_into_a_fresh_clone(s3, tiny_archive, tmp_path):
    bucket = s3.make_bucket("dvc")
    env = s3.subprocess_env()  # credentials only: the endpoint is in the committed config
    src = init_repo(tmp_path / "src", env)
    _copy_subset(tiny_archive, src / DATASET, exams=8)
    sh("dvc", "add", DATASET, cwd=src, env=env)
    sh("dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/dvc", cwd=src, env=env)
    sh("dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint, cwd=src, env=env)
    commit_all(src, env, "dataset and remote")
    pushed = sh("dvc", "push", cwd=src, env=env).stdout
    expected = tree_digest(src / DATASET)
    assert len(expected) > 50 and sum(name.endswith(".png") for name in expected) > 40
    assert f"{len(expected) + 1} files pushed" in pushed  # every file + the folder's .dir
    keys = s3.keys(bucket, "dvc/")
    assert len(keys) == len(expected) + 1  # content-addressed: no duplicate files here
    assert sum(k.endswith(".dir") for k in keys) == 1
    assert all(k.startswith("dvc/files/md5/") for k in keys)
    # an object is a file's bytes under their md5
    key = next(k for k in keys if not k.endswith(".dir"))
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert key.replace("/", "").endswith(hashlib.md5(body).hexdigest())

    shutil.rmtree(src / ".dvc" / "cache")  # nothing local to fall back on
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", src, clone, cwd=tmp_path, env=env)
    assert not (clone / DATASET).exists()
    pulled = sh("dvc", "pull", cwd=clone, env=env).stdout
    assert f"{len(expected) + 1} files fetched" in pulled
    assert tree_digest(clone / DATASET) == expected

    # the credentials come from the environment, not the repository
    bare = tmp_path / "no-credentials"
    sh("git", "clone", "-q", src, bare, cwd=tmp_path, env=env)
    failed = sh("dvc", "pull", cwd=bare, env=s3.subprocess_env(credentials=False), check=False)
    assert failed.returncode != 0 and not (bare / DATASET / "dataset.yaml").exists()


def _copy_subset(archive: Path, dest: Path, exams: int) -> None:
    """The archive's tables and the images of its first `exams` exams (PNG, 8/16-bit)."""
    shutil.copytree(archive, dest, ignore=shutil.ignore_patterns("images"))
    for exam in sorted((archive / "images").iterdir())[:exams]:
        shutil.copytree(exam, dest / "images" / exam.name)


# ---------------------------------------------------------------------------------------------
# MLflow tracking server with S3 artifacts


@pytest.fixture(scope="module", autouse=True)
def _mlflow_server(s3, tmp_path_factory):
    """`mlflow server` with a sqlite backend store and artifacts in s3://<bucket>/mlflow, started
    as soon as this module starts; `mlflow_server` waits until it is healthy. Only the server has
    the S3 credentials and endpoint."""
    root = tmp_path_factory.mktemp("mlflow-s3")
    bucket = s3.make_bucket("mlflow")
    env = {**s3.subprocess_env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    with mlflow_server_proc.start(root, f"s3://{bucket}/mlflow", env) as server:
        yield server, bucket


@pytest.fixture(scope="module")
def mlflow_server(_mlflow_server):
    server, bucket = _mlflow_server
    return server.wait_healthy(), bucket


def test_mlflow_server_stores_models_in_s3(s3, mlflow_server, monkeypatch, tmp_path):
    uri, bucket = mlflow_server
    # the client knows only the server's URL: no AWS credentials, no S3 endpoint
    for var in [v for v in os.environ if v.startswith(("AWS_", "MLFLOW_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    params = load_params(Path("/nonexistent"), ["register.experiment=remote-artifacts"])
    metrics = {"test_f1_weighted": 0.5, "test_precision_weighted": 0.5, "test_recall_weighted": 0.5}
    classes = ["liver", "kidney", "spleen"]
    model, spec = saved_classifier(tmp_path / "model.pt", classes)
    try:
        with stage_run("register", params) as tracker:  # the register stage's own path
            version = log_and_register(tmp_path / "model.pt", spec, metrics, "s3-organs", tracker)
            tracker.log_artifact(_write(tmp_path / "note.txt", "run artifact\n"))
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()

    mc = MlflowClient()
    run = mc.get_run(tracker.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied through the server
    mv = mc.get_model_version("s3-organs", version)
    assert mc.get_model_version_by_alias("s3-organs", CHALLENGER).version == mv.version

    keys = s3.keys(bucket, "mlflow/")
    assert mv.source.startswith("models:/m-")  # the version points at a LoggedModel
    model_id = mv.source.removeprefix("models:/")
    model_dir = f"mlflow/{run.info.experiment_id}/models/{model_id}/artifacts/"
    stored = {k[len(model_dir) :] for k in keys if k.startswith(model_dir)}
    # the self-contained pyfunc: weights, inference spec, the medssl code, requirements
    assert {
        "MLmodel",
        "artifacts/model.pt",
        "artifacts/inference.json",
        "requirements.txt",
    } <= stored
    assert "code/medssl/models/pyfunc.py" in stored and "input_example.json" in stored
    assert any(k.endswith(f"{tracker.run_id}/artifacts/note.txt") for k in keys)
    assert any(k.endswith(f"{tracker.run_id}/artifacts/config.json") for k in keys)
    text = s3.client().get_object(Bucket=bucket, Key=model_dir + "MLmodel")["Body"].read().decode()
    assert "python_function" in text and "medssl" in text  # flavor and medssl metadata

    # loaded back through the server (which reads S3), the model gives the same outputs
    loaded = mlflow.pyfunc.load_model(f"models:/s3-organs@{CHALLENGER}")
    images, expected = images_and_expected(model)
    out = loaded.predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(out[[f"{c}_prob" for c in classes]], expected, atol=1e-6)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Ray Tune trial storage on S3 (what a sweep on a cluster needs)


def test_a_sweep_keeps_its_trials_and_summary_in_s3(s3, tiny_split, tmp_path):
    import json

    import yaml

    from cli_helpers import medssl
    from medssl.stages.tune import fetch_summary
    from test_tune import SWEEP_PARAMS

    bucket = s3.make_bucket("sweeps")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(SWEEP_PARAMS))
    storage = f"s3://{bucket}/sweeps"
    outcome = medssl(
        "tune", tiny_split, "--params", params, "--out", tmp_path / "sweep", "--name", "s3",
        "-S", "lsd.lambda=[1,4]", "-S", "pretrain.max_epochs=2", "-S", "pretrain.max_steps=null",
        "-S", f"pretrain.cache_dir={tmp_path / 'cache'}", "--storage", storage, "--no-track",
        "-S", "pretrain.checkpoint_every=1", "--scheduler", "fifo",
        env={**s3.subprocess_env(endpoint=True), "MEDSSL_TRACKING": "0"}, timeout=600,
    )  # fmt: skip
    assert outcome.code == 0, outcome.err[-3000:]
    keys = s3.keys(bucket, "sweeps/s3/")
    assert any("experiment_state" in k or k.endswith("tuner.pkl") for k in keys), keys[:20]
    ckpts = {k.split("/")[2] for k in keys if "/checkpoint_" in k and k.endswith("last.pt")}
    assert len(ckpts) == 2, "\n".join(keys)  # each trial's training checkpoint reached the storage
    assert "sweeps/s3/summary/best.json" in keys
    os.environ.update(s3.subprocess_env(endpoint=True))
    try:
        fetch_summary(storage, "s3", tmp_path / "back")
    finally:
        for key in s3.subprocess_env(endpoint=True):
            if key.startswith("AWS_"):
                os.environ.pop(key, None)
    best = json.loads((tmp_path / "back" / "best.json").read_text())
    assert best["params"]["lsd.lambda"] in (1, 4)
