"""Every user or environment mistake, driven through the real command line, is ONE line naming the
thing and what to do, with the documented exit code (medssl.errors): 2 input/config, 3
environment, 130 interrupted. `--debug` adds the traceback."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from cli_helpers import MEDSSL, cli, expect_error, medssl, medssl_on_tmpfs
from medssl.config import EvaluateConfig, TrainConfig
from medssl.errors import EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_USAGE
from medssl.stages.evaluate import evaluate
from medssl.stages.split import split
from medssl.stages.train import train

TRAIN_FAST = ["-S", "train.device=cpu", "-S", "train.max_epochs=1", "-S", "train.batch_exams=2"]
TRAIN_FAST += ["-S", "train.init=random"]  # params.yaml starts from models/pretrain/encoder.pt


def closed_port_uri() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


@pytest.fixture(scope="module")
def model(tiny_split, tmp_path_factory) -> Path:
    """A trained tiny model folder with its own evaluation in MODEL_DIR/eval (read-only)."""
    root = tmp_path_factory.mktemp("model")
    cfg = TrainConfig(
        device="cpu", cache_dir=str(root / "cache"), max_epochs=1, batch_exams=2, lr=1e-3
    )
    train(tiny_split, root / "model", cfg, progress=False)
    evaluate(root / "model", None, EvaluateConfig(bootstrap=20))
    return root / "model"


@pytest.fixture
def own_split(tiny_archive, tiny_params, tmp_path) -> Path:
    """A private copy of the tiny archive and its split dataset (safe to break)."""
    archive = tmp_path / "archive"
    shutil.copytree(tiny_archive, archive)
    split(archive, tmp_path / "split", tiny_params.split)
    return tmp_path / "split"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Work in an empty folder with the default (sqlite, working directory) MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path


def train_args(dataset: Path, out: Path, cache: Path, *more: str) -> list[str]:
    return ["train", dataset, "--out", out, *TRAIN_FAST, "-S", f"train.cache_dir={cache}", *more]


# ------------------------------------------------------------------ input files (exit code 2)


def test_train_on_a_dataset_with_a_missing_image(capsys, own_split, in_tmp):
    manifest = pd.read_parquet(own_split / "manifest.parquet")
    image = (own_split / "../archive" / manifest["image"].iloc[5]).resolve()
    image.unlink()
    outcome = cli(capsys, *train_args(own_split, in_tmp / "m", in_tmp / "c", "--no-track"))
    expect_error(outcome, EXIT_USAGE, str(image), "missing", "medssl validate")
    assert not (in_tmp / "m").exists()


def test_train_on_a_dataset_with_a_corrupt_image(capsys, own_split, in_tmp):
    manifest = pd.read_parquet(own_split / "manifest.parquet")
    image = (own_split / "../archive" / manifest["image"].iloc[7]).resolve()
    image.write_bytes(b"\x89PNG\r\n\x1a\n but then not an image at all")
    outcome = cli(capsys, *train_args(own_split, in_tmp / "m", in_tmp / "c", "--no-track"))
    expect_error(outcome, EXIT_USAGE, str(image), "cannot decode", "medssl validate")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "no/such/dataset", "--no-track"], ["not a dataset folder"]),
        (["validate", "no/such/dataset"], ["not a dataset folder"]),
        (["split", "no/such/dataset", "--out", "s"], ["not a dataset folder"]),
        (["evaluate", "no/such/model", "--no-track"], ["predictions file not found"]),
        (["ingest", "no/such/export", "--out", "d"], ["no/such/export"]),
        (["config", "show", "--params", "bad.yaml"], ["bad.yaml", "not valid YAML"]),
        (["pipeline", "compile", "--pipeline-file", "nope.py"], ["nope.py", "not found"]),
        (["pipeline", "run", "--cluster"], ["pipeline submit"]),
    ],
)
def test_missing_or_corrupt_inputs(capsys, in_tmp, monkeypatch, args, fragments):
    (in_tmp / "bad.yaml").write_text("train: [unclosed\n")
    monkeypatch.setenv("MEDSSL_INGEST_SALT", "a-test-salt-of-some-length")
    expect_error(cli(capsys, *args), EXIT_USAGE, *fragments)


def test_evaluate_a_corrupt_predictions_file(capsys, in_tmp):
    (in_tmp / "m").mkdir()
    (in_tmp / "m" / "predictions.parquet").write_bytes(b"PAR1 not parquet")
    outcome = cli(capsys, "evaluate", in_tmp / "m", "--no-track")
    expect_error(outcome, EXIT_USAGE, "predictions.parquet", "not a readable parquet file")


def test_split_a_corrupt_manifest(capsys, own_split, in_tmp):
    (own_split / "manifest.parquet").write_bytes(b"garbage")
    outcome = cli(capsys, "split", own_split, "--out", in_tmp / "s")
    expect_error(outcome, EXIT_USAGE, "manifest.parquet", "not a readable parquet file")


def test_register_refuses_metrics_of_another_model(capsys, model, in_tmp):
    other = in_tmp / "other"
    shutil.copytree(model, other)
    table = pd.read_parquet(other / "predictions.parquet")
    table.iloc[:, -1] = 1 - table.iloc[:, -1]  # other predictions: its eval is not this one's
    table.to_parquet(other / "predictions.parquet", index=False)
    outcome = cli(capsys, "register", other, "--eval", model / "eval")
    expect_error(outcome, EXIT_USAGE, "scored another model", f"medssl evaluate {other}")
    # the default --eval is the model's own folder: a copied eval of another model is refused
    outcome = cli(capsys, "register", other)
    expect_error(outcome, EXIT_USAGE, "scored another model")
    missing = cli(capsys, "register", in_tmp / "nothing")
    expect_error(missing, EXIT_USAGE, "metrics.json", "run `medssl evaluate`")
    assert not (in_tmp / "mlflow.db").exists()  # inputs are checked before MLflow is touched


# ------------------------------------------------------------------ MLflow (exit code 3 / 2)


def test_unreachable_mlflow_is_one_line_without_slow_retries(capsys, model, in_tmp, monkeypatch):
    uri = closed_port_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for args in (
        ["models", "list"],
        ["models", "compare", "1", "2"],
        ["models", "promote", "1", "--reason", "x"],
        ["evaluate", model, "--out", in_tmp / "e"],
        ["register", model],
    ):
        expect_error(cli(capsys, *args), EXIT_ENVIRONMENT, "cannot reach", uri)
    outcome = cli(capsys, "train", model.parent / "nowhere", "--out", in_tmp / "m")
    assert outcome.code == EXIT_USAGE  # the dataset is checked before MLflow is needed


def test_misconfigured_mlflow_uri(capsys, in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:./mlruns")
    expect_error(cli(capsys, "models", "list"), EXIT_ENVIRONMENT, "no file store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp}/no/such/folder/mlflow.db")
    expect_error(cli(capsys, "models", "list"), EXIT_ENVIRONMENT, "does not exist")


def test_read_only_commands_create_no_mlflow_db(capsys, in_tmp):
    assert cli(capsys, "--help").code == 0
    assert cli(capsys, "models", "--help").code == 0
    outcome = cli(capsys, "models", "list")
    expect_error(outcome, EXIT_USAGE, "no MLflow store", "nothing was registered")
    expect_error(cli(capsys, "models", "compare", "1", "2"), EXIT_USAGE, "no MLflow store")
    assert not (in_tmp / "mlflow.db").exists()
    assert sorted(p.name for p in in_tmp.iterdir()) == []


def test_debug_adds_the_traceback(capsys, in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_uri())
    monkeypatch.setenv("MEDSSL_DEBUG", "0")  # --debug sets it: restored after the test
    outcome = cli(capsys, "--debug", "models", "list")
    assert outcome.code == EXIT_ENVIRONMENT
    assert "Traceback" in outcome.err and "ServiceError" in outcome.err
    assert outcome.err.strip().splitlines()[-1].startswith("error: cannot reach")
    monkeypatch.setenv("MEDSSL_DEBUG", "1")
    assert "Traceback" in cli(capsys, "models", "list").err  # the variable does the same


def test_s3_artifact_store_unreachable(capsys, model, in_tmp, monkeypatch):
    """Artifacts to an S3 endpoint that does not answer (client-side upload): one line."""
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.MlflowClient(uri).create_experiment("medssl", artifact_location="s3://bucket/art")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", closed_port_uri())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    outcome = cli(capsys, "register", model)
    expect_error(outcome, EXIT_ENVIRONMENT, "S3")


# ------------------------------------------------------------------ output folders (exit code 3)


@pytest.mark.parametrize("stage", ["synth", "split", "evaluate", "train"])
def test_read_only_output_folder(stage, tiny_archive, tiny_split, model, tmp_path):
    ro = tmp_path / "ro"
    args = {
        "synth": ["data", "synth", "--size", "tiny", "--out", ro / "archive"],
        "split": ["split", tiny_archive, "--out", ro / "splits"],
        "evaluate": ["evaluate", model, "--out", ro / "eval", "--no-track"],
        "train": train_args(tiny_split, ro / "model", tmp_path / "cache", "--no-track"),
    }[stage]
    outcome = medssl_on_tmpfs(ro, "ro", *args)
    expect_error(outcome, EXIT_ENVIRONMENT, str(ro), "read-only file system")


@pytest.mark.parametrize("stage", ["split", "train"])
def test_full_output_folder(stage, tiny_archive, tiny_split, tmp_path):
    full = tmp_path / "full"
    args = {
        "split": ["split", tiny_archive, "--out", full / "splits"],
        "train": train_args(tiny_split, full / "model", tmp_path / "cache", "--no-track"),
    }[stage]
    outcome = medssl_on_tmpfs(full, "size=16k", *args)
    expect_error(outcome, EXIT_ENVIRONMENT, str(full), "no space left")


# ------------------------------------------------------------------ memory, Ctrl-C


def test_cuda_out_of_memory_names_the_knob(capsys, tiny_split, in_tmp, monkeypatch):
    """The real exception type CUDA raises (no GPU here: raised from the training step)."""
    from medssl.methods.supervised import Supervised

    def oom(self, model, batch, ctx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Supervised, "loss", oom)
    outcome = cli(capsys, *train_args(tiny_split, in_tmp / "m", in_tmp / "c", "--no-track"))
    expect_error(outcome, EXIT_ENVIRONMENT, "out of GPU memory", "train.max_batch_images=32")
    assert not (in_tmp / "m").exists()


def test_ctrl_c_keeps_the_checkpoint_and_resume_continues(tiny_split, tmp_path):
    out, cache = tmp_path / "model", tmp_path / "cache"
    args = train_args(
        tiny_split,
        out,
        cache,
        "--no-track",
        "-S",
        "train.max_epochs=40",
        "-S",
        "train.checkpoint_every=2",
    )
    proc = subprocess.Popen(
        [MEDSSL, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a terminal's Ctrl-C: the default SIGINT disposition, even when the test itself runs
        # as a background job (which inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = tmp_path / ".model.partial" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.is_file(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and lines[-1].startswith("error: interrupted at step"), err
    assert "--resume" in lines[-1] and str(checkpoint.parent) in lines[-1]
    assert not out.exists()  # no half-written model folder

    resumed = medssl(*args[:-4], "-S", "train.max_epochs=2", "--resume")
    assert resumed.code == 0, resumed.err
    summary = json.loads((out / "train.json").read_text())
    assert summary["resumed_from_step"] >= 2 and summary["epochs"] == 2
    assert not checkpoint.parent.parent.exists()  # the partial run became the model folder
