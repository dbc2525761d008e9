"""MLflow tracking, registry and promotion gate, against a sqlite store in a temp dir and against a
real `mlflow server` on a loopback port (started when this module starts: it takes ~15 s to come
up, during which the sqlite tests run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

import mlflow_server
from medssl.config import RegisterConfig, load_params
from medssl.errors import ConfigError, MedsslError
from medssl.fileio import sha256_file
from medssl.models import load_model
from medssl.stages.evaluate import scored_inputs
from medssl.tracking import NullTracker, Tracker, stage_run
from medssl.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    ChampionScore,
    compare,
    format_compare,
    format_versions,
    gate,
    list_versions,
    log_and_register,
    promote,
)
from medssl.tracking.runs import (
    PIPELINE_RUN_ENV,
    MlflowTracker,
    data_hash,
    git_commit,
    tracking_uri,
)
from model_files import images_and_expected, saved_classifier

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# stores


@pytest.fixture(scope="module", autouse=True)
def _server(tmp_path_factory):
    """Start `mlflow server` as soon as this module starts; `server_uri` waits for it."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server.start(root, str(root / "artifacts"), dict(os.environ)) as server:
        yield server


@pytest.fixture(scope="module")
def server_uri(_server):
    return _server.wait_healthy()


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-sqlite")
    return root, f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture
def store(request, sqlite_store, monkeypatch, tmp_path):
    """MLFLOW_TRACKING_URI → the sqlite store (default) or the server (param "server"); the
    working directory is a temp dir (no mlflow.db / mlruns in the repo, no git commit)."""
    kind = getattr(request, "param", "sqlite")
    uri = request.getfixturevalue("server_uri") if kind == "server" else sqlite_store[1]
    for var in (PIPELINE_RUN_ENV, "MEDSSL_TRACKING", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(sqlite_store[0] if kind == "sqlite" else tmp_path)
    assert mlflow.active_run() is None
    yield uri
    while mlflow.active_run() is not None:  # never leak an active run into the next test
        mlflow.end_run()


def _params(experiment: str, *overrides: str):
    return load_params(Path("/nonexistent"), [f"register.experiment={experiment}", *overrides])


def _new_process() -> None:
    """What a fresh `medssl <stage>` process starts from: no active run in MLflow's fluent API
    (stage_run keeps no other state between calls)."""
    while mlflow.active_run() is not None:
        mlflow.end_run()
    assert mlflow.active_run() is None


META = {
    "method": "supervised",
    "backbone": "tiny",
    "classes": [f"c{i}" for i in range(7)],
    "in_channels": 1,
    "image_size": 16,
    "task": "multilabel",
}


def _metrics(f1: float, classes: list[str] = META["classes"]) -> dict:
    per_class = {
        c: {"precision": f1, "recall": f1, "f1": f1, "support": 5, "threshold": 0.5}
        for c in classes
    }
    return {
        "test_f1_weighted": f1,
        "test_precision_weighted": f1 - 0.01,
        "test_recall_weighted": f1 + 0.01,
        "test_images": 20,
        "per_class": per_class,
    }


# ---------------------------------------------------------------------------------------------
# runs


def test_tracking_uri_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri() == "http://127.0.0.1:1"


def test_null_tracker_and_switch(monkeypatch, tmp_path):
    assert isinstance(NullTracker(), Tracker)
    monkeypatch.setenv("MEDSSL_TRACKING", "off")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    with stage_run("train", _params("tracking-off")) as tracker:
        assert isinstance(tracker, NullTracker)
        tracker.log_metrics({"loss": 1.0}, step=0)
    assert not (tmp_path / "never.db").exists()


def test_stage_runs_nest_under_one_parent(store, tmp_path):
    params = _params("nesting", "train.lr=0.001")
    mc = MlflowClient()
    with stage_run("train", params, dataset_dir=tmp_path / "nowhere") as train:
        assert isinstance(train, MlflowTracker) and isinstance(train, Tracker)
        assert mlflow.active_run().info.run_id == train.run_id
        for epoch in range(3):
            train.log_metrics({"train_loss": 1.0 / (epoch + 1), "val_f1_weighted": 0.1}, step=epoch)
        train.log_params({"extra": {"k": 1}})
    _new_process()
    assert mc.get_run(train.parent_run_id).info.status == "RUNNING"
    with stage_run("evaluate", params) as evaluate:
        pass
    _new_process()
    with stage_run("register", params) as register:
        pass
    assert train.parent_run_id == evaluate.parent_run_id == register.parent_run_id
    parent = mc.get_run(train.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["medssl.kind"] == "pipeline"

    run = mc.get_run(train.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["medssl.stage"] == "train"
    assert run.data.tags["medssl.version"]
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.params["register.experiment"] == "nesting"
    assert run.data.params["split.fractions.train"] == "0.03"
    assert run.data.params["extra.k"] == "1"
    history = mc.get_metric_history(train.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert [a.path for a in mc.list_artifacts(train.run_id)] == ["config.json"]
    config = json.loads(
        Path(mc.download_artifacts(train.run_id, "config.json", tmp_path)).read_text()
    )
    assert config == params.dump()
    # no system-metrics sampler was started
    assert not any(k.startswith("system/") for k in run.data.metrics)

    # a FINISHED pipeline is not reused: the next `dvc repro` gets a new parent
    with stage_run("train", params) as again:
        pass
    assert again.parent_run_id != train.parent_run_id


def test_parent_found_from_another_process(store):
    params = _params("cross-process", "train.seed=7")
    with stage_run("train", params) as train:
        pass
    code = (
        "from pathlib import Path\n"
        "from medssl.config import load_params\n"
        "from medssl.tracking import stage_run\n"
        "p = load_params(Path('/nonexistent'), "
        "['register.experiment=cross-process', 'train.seed=7'])\n"
        "with stage_run('evaluate', p) as t:\n"
        "    print(t.parent_run_id, t.run_id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    parent, child = out.stdout.split()[-2:]
    assert parent == train.parent_run_id
    assert MlflowClient().get_run(child).data.tags["mlflow.parentRunId"] == parent


def test_explicit_parent_from_env(store, monkeypatch):
    mc = MlflowClient()
    params = _params("explicit")
    exp = mc.get_experiment_by_name("explicit") or mc.get_experiment(
        mc.create_experiment("explicit")
    )
    parent = mc.create_run(exp.experiment_id, run_name="orchestrator").info.run_id
    monkeypatch.setenv(PIPELINE_RUN_ENV, parent)
    with stage_run("train", params) as tracker:
        pass
    assert tracker.parent_run_id == parent
    monkeypatch.setenv(PIPELINE_RUN_ENV, "0" * 32)
    with pytest.raises(ConfigError, match=PIPELINE_RUN_ENV), stage_run("train", params):
        pass


def test_failing_stage_fails_nested_and_parent(store):
    params = _params("failing")
    mc = MlflowClient()
    with pytest.raises(RuntimeError, match="boom"), stage_run("train", params) as tracker:
        tracker.log_metrics({"train_loss": 1.0}, step=0)
        raise RuntimeError("boom")
    assert mlflow.active_run() is None
    run = mc.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["medssl.failure"] == "RuntimeError"  # the type only, never the text
    assert mc.get_run(tracker.parent_run_id).info.status == "FAILED"
    # `dvc repro` again re-runs the failed stage in the same pipeline run (parent reopened)
    with stage_run("train", params) as retry:
        pass
    assert retry.parent_run_id == tracker.parent_run_id
    assert mc.get_run(retry.parent_run_id).info.status == "RUNNING"


def test_data_hash_from_dvc_lock_or_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = tmp_path / "data" / "splits"
    ds.mkdir(parents=True)
    (ds / "dataset.yaml").write_text("task: multilabel\n")
    (ds / "manifest.parquet").write_bytes(b"rows-v1")
    first = data_hash(ds)
    assert first is not None and first[1].startswith("sha256")
    assert data_hash(Path("data/splits")) == first  # relative or absolute: same hash
    (ds / "manifest.parquet").write_bytes(b"rows-v2")
    assert data_hash(ds)[0] != first[0]
    lock = {
        "schema": "2.0",
        "stages": {
            "split": {"outs": [{"path": "data/splits", "hash": "md5", "md5": "abc123.dir"}]}
        },
    }
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    assert data_hash(Path("data/splits")) == ("abc123.dir", "dvc.lock:split")
    assert data_hash(tmp_path / "empty") is None


def test_data_hash_covers_the_images(tiny_archive, tiny_params, tmp_path, monkeypatch):
    """A split dataset points at its input's images: its hash changes when an image does, also
    when the manifest does not (content fallback and dvc.lock alike)."""
    import shutil

    from medssl.stages.split import split

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_archive, tmp_path / "archive")
    split(tmp_path / "archive", tmp_path / "splits", tiny_params.split)
    before, source = data_hash(tmp_path / "splits")
    assert source == (
        "sha256(dataset.yaml+manifest.parquet) + images sha256(dataset.yaml+manifest.parquet"
        "+images)"
    )
    image = next((tmp_path / "archive" / "images").rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")  # edited in place
    assert data_hash(tmp_path / "splits")[0] != before
    lock = {
        "schema": "2.0",
        "stages": {
            "synth": {"outs": [{"path": "archive", "md5": "a1.dir"}]},
            "split": {"outs": [{"path": "splits", "md5": "s1.dir"}]},
        },
    }
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    one = data_hash(tmp_path / "splits")
    assert one[1] == "dvc.lock:split + images dvc.lock:synth"
    lock["stages"]["synth"]["outs"][0]["md5"] = "a2.dir"  # new images, same split tables
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    assert data_hash(tmp_path / "splits")[0] != one[0]


def test_git_commit_of_the_repo():
    commit = git_commit(REPO)
    if (REPO / ".git").exists():
        assert commit is not None and len(commit) == 40
    assert git_commit(Path("/")) is None


# ---------------------------------------------------------------------------------------------
# registry and gate (sqlite store and HTTP server)


def _log(name: str, f1: float, lr: str, seed: int) -> tuple[str, torch.nn.Module, str]:
    params = _params(f"registry-{name}", f"train.lr={lr}")
    with tempfile.TemporaryDirectory() as tmp:
        model, spec = saved_classifier(Path(tmp) / "model.pt", META["classes"], seed=seed)
        with stage_run("register", params) as tracker:
            version = log_and_register(Path(tmp) / "model.pt", spec, _metrics(f1), name, tracker)
    return version, model, tracker.run_id


def _tags(name: str, version: str) -> dict:
    return MlflowClient().get_model_version(name, version).tags


def _alias(name: str, alias: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, alias).version)


@pytest.mark.parametrize("store", ["sqlite", "server"], indirect=True)
def test_registry_flow_and_gate(store, tmp_path):
    name = f"organs-{'http' if store.startswith('http') else 'sqlite'}"
    mc = MlflowClient()
    metric, margin = "test_f1_weighted", 0.02

    # 1. the first version becomes champion
    v1, _, run1 = _log(name, 0.60, "0.001", 1)
    assert _alias(name, CHALLENGER) == v1
    tags = _tags(name, v1)
    assert tags["medssl.metric.test_f1_weighted"] == "0.6"
    assert tags["medssl.run_id"] == run1
    assert json.loads(tags["medssl.metrics"])["per_class"]["c0"]["f1"] == 0.6
    d1 = gate(name, v1, metric, margin)
    assert d1.promoted and d1.decision == "promoted" and d1.champion is None
    assert _alias(name, CHAMPION) == v1
    assert _tags(name, v1)["medssl.gate.champion_test_f1_weighted"] == "none"

    # 2. a worse challenger is refused; both numbers and the decision are in its tags
    v2, _, _ = _log(name, 0.50, "0.002", 2)
    d2 = gate(name, v2, metric, margin)
    assert not d2.promoted and d2.decision == "refused"
    tags = _tags(name, v2)
    assert tags["medssl.gate.decision"] == "refused"
    assert float(tags["medssl.gate.challenger_test_f1_weighted"]) == 0.5
    assert float(tags["medssl.gate.champion_test_f1_weighted"]) == 0.6
    assert tags["medssl.gate.champion_source"] == "recorded"
    assert tags["medssl.gate.champion_version"] == v1
    assert float(tags["medssl.gate.margin"]) == margin
    assert _alias(name, CHAMPION) == v1 and _alias(name, CHALLENGER) == v2

    # 3. a better one (beyond the margin) is promoted; the old champion keeps its history
    v3, _, _ = _log(name, 0.70, "0.003", 3)
    d3 = gate(name, v3, metric, margin)
    assert d3.promoted and d3.champion == 0.6 and d3.champion_version == v1
    assert _alias(name, CHAMPION) == v3
    old = _tags(name, v1)
    assert old["medssl.gate.decision"] == "promoted"  # how it won, still there
    assert old["medssl.champion.lost_to"] == v3 and old["medssl.champion.lost_at"]
    assert old["medssl.champion.lost_reason"].startswith("gate:")
    aliases = mc.get_registered_model(name).aliases
    assert CHALLENGER not in aliases  # the challenger became champion

    # 4. a challenger inside the margin is refused
    v4, model4, _ = _log(name, 0.71, "0.003", 4)
    d4 = gate(name, v4, metric, margin)
    assert not d4.promoted and d4.decision == "refused"
    assert "<=" in d4.reason and _alias(name, CHAMPION) == v3

    # 5. manual promotion is logged as such
    d5 = promote(name, v4, "reviewed by radiology")
    assert d5.decision == "manual" and d5.promoted
    tags = _tags(name, v4)
    assert tags["medssl.gate.decision"] == "manual"
    assert tags["medssl.gate.reason"] == "reviewed by radiology"
    assert float(tags["medssl.gate.champion_test_f1_weighted"]) == 0.7
    assert _alias(name, CHAMPION) == v4
    assert _tags(name, v3)["medssl.champion.lost_reason"].startswith("manual promotion")
    history = json.loads(_tags(name, v3)["medssl.champion.history"])
    assert [e["event"] for e in history] == ["won", "lost"] and history[1]["to"] == v4
    # winning the alias back clears the current "lost" tags; the history keeps them
    assert promote(name, v1, "rollback drill").decision == "manual"
    assert "medssl.champion.lost_to" not in _tags(name, v1)
    events = json.loads(_tags(name, v1)["medssl.champion.history"])
    assert [e["event"] for e in events] == ["won", "lost", "won"]
    assert promote(name, v4, "end of drill").promoted and _alias(name, CHAMPION) == v4
    with pytest.raises(ConfigError):
        promote(name, v3, "  ")

    # 6. list and compare
    table = list_versions(name)
    assert list(table["version"]) == [4, 3, 2, 1]
    assert dict(zip(table["version"], table["aliases"], strict=True))[4] == CHAMPION
    text = format_versions(name, table)
    assert "champion" in text and "0.7100" in text
    cmp = compare(name, v3, CHAMPION)
    assert cmp["metrics"]["test_f1_weighted"] == (0.70, 0.71)
    assert cmp["per_class"]["c0"]["f1"] == (0.70, 0.71)
    assert cmp["config_diff"] == {}  # same lr for v3 and v4
    assert compare(name, v1, v2)["config_diff"]["train.lr"] == ("0.001", "0.002")
    out = format_compare(cmp)
    assert f"v{v3}" in out and f"v{v4} (champion)" in out and "c0" in out
    with pytest.raises(MedsslError, match="no version"):
        compare(name, "99", v1)
    with pytest.raises(MedsslError, match="no registered model"):
        list_versions("no-such-model")

    # 7. the champion loads back as a pyfunc that labels images with the same probabilities
    images, expected = images_and_expected(model4)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    out = loaded.predict(pd.DataFrame({"image": images}))
    classes = META["classes"]
    np.testing.assert_allclose(out[[f"{c}_prob" for c in classes]], expected, atol=1e-6)
    assert (out[classes].to_numpy() == (expected >= 0.5)).all()
    info = mlflow.models.get_model_info(f"models:/{name}/{v4}")
    assert [c.name for c in info.signature.inputs.inputs] == ["image"]
    assert len(info.signature.outputs.inputs) == 2 * len(classes)


def test_fair_gate_scores_the_champion_on_the_challengers_data(store):
    """Planted: a worse challenger whose own number beats the champion's recorded number (the
    champion was tested on harder data). Scored on the challenger's test split the champion is
    better, so the challenger is refused; an unscorable champion, or recorded numbers from
    different data, refuse too. Never a worse challenger promoted."""
    name = "fair-gate"
    metric = "test_f1_weighted"
    v1, _, _ = _log(name, 0.55, "0.001", 1)  # champion; 0.55 on its own (harder) test data
    assert gate(name, v1, metric).promoted
    mc = MlflowClient()
    v2, _, _ = _log(name, 0.60, "0.002", 2)  # 0.60 > 0.55 as recorded, but worse on its data

    def rescored(value, note=""):
        return lambda champ: ChampionScore(value, "rescored", note)

    d2 = gate(name, v2, metric, scorer=rescored(0.72))
    assert not d2.promoted and d2.champion == 0.72 and d2.champion_recorded == 0.55
    tags = _tags(name, v2)
    assert tags["medssl.gate.champion_source"] == "rescored"
    assert float(tags["medssl.gate.champion_test_f1_weighted"]) == 0.72
    assert float(tags["medssl.gate.champion_recorded_test_f1_weighted"]) == 0.55
    assert "on this version's test split" in tags["medssl.gate.reason"]
    assert _alias(name, CHAMPION) == v1

    blocked = gate(name, v2, metric, scorer=rescored(None, "its classes differ"))
    assert not blocked.promoted and "its classes differ" in blocked.reason
    # without rescoring, numbers measured on other data are not compared
    mc.set_model_version_tag(name, v1, "medssl.data.hash", "aaa")
    mc.set_model_version_tag(name, v2, "medssl.data.hash", "bbb")
    other_data = gate(name, v2, metric)
    assert not other_data.promoted and "other test data" in other_data.reason
    # the fair comparison promotes a challenger that really is better
    better = gate(name, v2, metric, scorer=rescored(0.58))
    assert better.promoted and _alias(name, CHAMPION) == v2


# ---------------------------------------------------------------------------------------------
# the register stage


@pytest.fixture
def model_dir(tmp_path):
    from medssl.models import build_classifier, save_model

    torch.manual_seed(0)
    classes = ["liver", "kidney", "spleen"]
    model = build_classifier("resnet18", len(classes), 1).eval()
    out = tmp_path / "model"
    out.mkdir()
    meta = {**META, "backbone": "resnet18", "classes": classes, "image_size": 32}
    save_model(out / "model.pt", model, meta)
    (out / "train.json").write_text(json.dumps({"method": "supervised", "label_fraction": 0.5}))
    pd.DataFrame({"image": ["a.png"], "score_liver": [0.5]}).to_parquet(out / "predictions.parquet")
    return out


def _eval_dir(root: Path, f1: float, model_dir: Path) -> Path:
    """An evaluate folder with this model's own inputs and the given weighted F1."""
    out = root / f"eval-{f1}"
    out.mkdir()
    classes = load_model(model_dir / "model.pt")[1]["classes"]
    metrics = {**_metrics(f1, classes), "inputs": scored_inputs(model_dir)}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


def test_register_stage(store, model_dir, tmp_path):
    from medssl.stages.register import register

    cfg = RegisterConfig(
        model_name="stage-organs", experiment="stage", margin=0.01, rescore_champion=False
    )
    params = _params("stage", "register.model_name=stage-organs", "register.margin=0.01")
    record = tmp_path / "reports" / "register.json"  # its folder does not exist yet
    with stage_run("register", params) as tracker:
        result = register(
            model_dir,
            _eval_dir(tmp_path, 0.8, model_dir),
            None,
            cfg,
            tracker=tracker,
            record=record,
        )
    assert result.promoted and result.version == "1" and result.challenger == 0.8
    assert "promoted to champion" in result.describe() and "\n" not in result.describe()
    assert json.dumps(result.to_json())
    written = json.loads(record.read_text())
    assert written == json.loads(json.dumps(result.to_json(), default=str))
    assert written["version"] == "1" and written["gate_decision"] == "promoted"
    assert [p.name for p in record.parent.iterdir()] == ["register.json"]  # no temporary left
    tags = _tags("stage-organs", "1")
    assert tags["medssl.train.label_fraction"] == "0.5"
    assert tags["medssl.model.backbone"] == "resnet18"
    run = MlflowClient().get_run(result.run_id)
    # the names of metrics.json, as the evaluate run and the version tags use them
    assert run.data.metrics["test_f1_weighted"] == 0.8
    assert run.data.metrics["test_f1_liver"] == 0.8
    assert run.data.metrics["gate_challenger"] == 0.8
    assert tags["medssl.metric.test_f1_weighted"] == "0.8"
    assert tags["medssl.model.sha256"] == sha256_file(model_dir / "model.pt")
    assert run.data.tags["medssl.gate.decision"] == "promoted"

    model, _ = load_model(model_dir / "model.pt")
    images, expected = images_and_expected(model, size=32)
    out = mlflow.pyfunc.load_model(result.model_uri).predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(out.filter(like="_prob"), expected, atol=1e-6)

    # NullTracker: the model is still registered (no run); a worse one is refused
    second = register(
        model_dir, _eval_dir(tmp_path, 0.805, model_dir), None, cfg, tracker=NullTracker()
    )
    assert not second.promoted and second.champion == 0.8 and second.run_id is None
    assert "stays challenger" in second.describe()

    bad = RegisterConfig(model_name="stage-organs", metric="auc")
    with pytest.raises(ConfigError, match=r"register\.metric=.auc."):
        register(model_dir, _eval_dir(tmp_path, 0.9, model_dir), None, bad, tracker=NullTracker())


def test_a_retried_register_in_the_same_pipeline_run_registers_once(
    store, model_dir, tmp_path, monkeypatch
):
    """KFP retries register: the same model.pt under the same parent run (the KFP run's, given
    as MEDSSL_PIPELINE_RUN_ID) gives the same version and decision; another pipeline run
    registers a new version."""
    from medssl.stages.register import register

    cfg = RegisterConfig(model_name="retried", experiment="retried", rescore_champion=False)
    params = _params("retried", "register.model_name=retried")
    eval_dir = _eval_dir(tmp_path, 0.7, model_dir)
    mc = MlflowClient()
    exp = mc.get_experiment_by_name("retried") or mc.get_experiment(mc.create_experiment("retried"))
    kfp_runs = [mc.create_run(exp.experiment_id).info.run_id for _ in range(2)]
    monkeypatch.setenv(PIPELINE_RUN_ENV, kfp_runs[0])
    with stage_run("register", params) as tracker:
        first = register(model_dir, eval_dir, None, cfg, tracker=tracker)
    _new_process()
    with stage_run("register", params) as tracker:  # the retry
        again = register(model_dir, eval_dir, None, cfg, tracker=tracker)
    assert again.version == first.version == "1"
    assert again.decision.decision == first.decision.decision == "promoted"
    assert len(mc.search_model_versions("name = 'retried'")) == 1
    monkeypatch.setenv(PIPELINE_RUN_ENV, kfp_runs[1])
    with stage_run("register", params) as tracker:
        other = register(model_dir, eval_dir, None, cfg, tracker=tracker)
    assert other.version == "2" and other.decision.decision == "refused"
