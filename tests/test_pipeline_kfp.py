"""The Kubeflow pipeline: committed spec vs a fresh compile, Kubernetes settings in the spec,
`medssl pipeline submit` against a local server that records the KFP REST calls, the component
bodies (the tune body: a 2-trial sweep on a local Ray) and the orchestration helpers (no cluster,
no kfp.local run: see test_pipeline_local.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from medssl.cli_pipeline import (
    all_pipeline_files,
    check_cron,
    load_pipeline,
    pipeline_arguments,
    split_params,
)
from medssl.config import load_params
from medssl.errors import ConfigError
from medssl.orchestration import (
    SCALAR_PARAMS,
    ValidationFailed,
    evaluation_markdown,
    link_split_images,
    params_argument,
    resolve_params,
    scalar_defaults,
    step_config,
)

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "compiled" / "training.yaml"
PIPELINE = ROOT / "pipelines" / "training.py"
MEDSSL = str(Path(sys.executable).parent / "medssl")
REGENERATE = "regenerate with `medssl pipeline compile` (MEDSSL_IMAGE unset) and commit it"
REQUIRED_SECRET_KEYS = {
    "MLFLOW_TRACKING_URI",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
}
SECRET_KEYS = REQUIRED_SECRET_KEYS | {
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
}
STEPS = [
    "resolve-config",
    "data",
    "validate",
    "split",
    "start-run",
    "pretrain",
    "train",
    "evaluate",
    "register",
    "finish-run",
]


def medssl(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MEDSSL, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def spec_docs(path: Path) -> tuple[dict, dict]:
    pipeline, platform = yaml.safe_load_all(path.read_text())
    return pipeline, platform["platforms"]["kubernetes"]


def tasks(pipeline: dict) -> dict[str, dict]:
    """Every task of the spec, by name (root DAG and the exit handler's sub-DAG)."""
    out = {}
    for comp in [pipeline["root"], *pipeline["components"].values()]:
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


# ------------------------------------------------------------------------------ compiled spec


@pytest.mark.parametrize("module", [p.stem for p in all_pipeline_files(ROOT)])
def test_committed_spec_equals_a_fresh_compile(tmp_path, monkeypatch, module):
    """Byte-equal, for every pipeline of pipelines/: the compile is deterministic (see also the
    two-process test below)."""
    monkeypatch.delenv("MEDSSL_IMAGE", raising=False)
    committed = ROOT / "pipelines" / "compiled" / f"{module}.yaml"
    assert committed.is_file(), f"{committed} is missing: {REGENERATE}"
    fresh = load_pipeline(ROOT / "pipelines" / f"{module}.py").compile_pipeline(
        tmp_path / f"{module}.yaml"
    )
    assert fresh.read_text() == committed.read_text(), (
        f"{committed.relative_to(ROOT)} differs from a fresh compile of pipelines/{module}.py, "
        f"components/ and params.yaml: {REGENERATE}"
    )


def test_batch_inference_spec_predicts_on_the_gpu_pool():
    pipeline, k8s = spec_docs(ROOT / "pipelines" / "compiled" / "batch_inference.yaml")
    assert set(tasks(pipeline)) == {"resolve-config", "data", "predict"}
    inputs = pipeline["root"]["inputDefinitions"]["parameters"]
    assert inputs["model_uri"]["defaultValue"] == "models:/abdominal-organs@champion"
    assert {"data_repo", "data_rev", "data_path", "params"} <= set(inputs)
    resources = pipeline["deploymentSpec"]["executors"]["exec-predict"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    predict = k8s["deploymentSpec"]["executors"]["exec-predict"]
    assert predict["nodeSelector"]["labels"] == {"medssl.io/pool": "gpu"}
    assert not tasks(pipeline)["predict"]["cachingOptions"].get("enableCache")
    outputs = pipeline["components"]["comp-predict"]["outputDefinitions"]["artifacts"]
    assert outputs["predictions"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert outputs["summary"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_sweep_spec_tunes_on_the_ray_cluster_and_trains_on_the_best_config():
    pipeline, k8s = spec_docs(ROOT / "pipelines" / "compiled" / "sweep.yaml")
    all_tasks = tasks(pipeline)
    assert set(all_tasks) - {"exit-handler-1"} == {*STEPS, "tune"}
    inputs = pipeline["root"]["inputDefinitions"]["parameters"]
    # the in-cluster Ray Jobs API (test_infra checks it names the RayCluster's head service)
    assert inputs["ray_address"]["defaultValue"] == "http://medssl-ray-head-svc.medssl.svc:8265"
    assert inputs["storage"]["defaultValue"] == ""
    presets = load_params(ROOT / "params.yaml").tune.presets
    assert inputs["preset"]["defaultValue"] in presets
    assert not inputs["metric"]["defaultValue"].startswith("test_")
    assert inputs["trial_gpus"]["defaultValue"] == 1
    assert {"data_repo", "data_rev", "params", *SCALAR_PARAMS} - set(inputs) == {"train_init"}
    config = all_tasks["resolve-config"]["inputs"]["parameters"]["train_init"]
    assert config["runtimeValue"]["constant"] == "checkpoint"  # always from the encoder

    tune = all_tasks["tune"]["inputs"]
    for name in ("ray_address", "storage", "preset", "metric", "trial_gpus", "max_concurrent"):
        assert tune["parameters"][name]["componentInputParameter"].endswith(name)
    assert tune["parameters"]["params"]["taskOutputParameter"]["producerTask"] == "resolve-config"
    assert tune["artifacts"]["splits"]["taskOutputArtifact"]["producerTask"] == "split"
    # every step after it runs on the params with the best configuration applied
    for step in ("pretrain", "train", "evaluate", "register"):
        params = all_tasks[step]["inputs"]["parameters"]["params"]["taskOutputParameter"]
        assert params == {"outputParameterKey": "params", "producerTask": "tune"}, step
    encoder = all_tasks["train"]["inputs"]["artifacts"]["encoder"]["taskOutputArtifact"]
    assert encoder["producerTask"] == "pretrain"

    # tune is a CPU pod that waits for the Ray Job: no GPU, never cached, not retried
    executors = pipeline["deploymentSpec"]["executors"]
    assert "accelerator" not in executors["exec-tune"]["container"]["resources"]
    assert "nodeSelector" not in k8s["deploymentSpec"]["executors"]["exec-tune"]
    assert not all_tasks["tune"]["cachingOptions"].get("enableCache")
    assert "retryPolicy" not in all_tasks["tune"]
    for name in ("exec-pretrain", "exec-train"):
        assert executors[name]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    outputs = pipeline["components"]["comp-tune"]["outputDefinitions"]
    assert set(outputs["parameters"]) == {"params", "best"}
    kinds = {k: v["artifactType"]["schemaTitle"] for k, v in outputs["artifacts"].items()}
    assert kinds == {
        "summary": "system.Markdown", "metrics": "system.Metrics", "sweep": "system.Artifact"
    }  # fmt: skip


def test_label_fractions_spec_pretrains_then_runs_the_study():
    """data → validate → split → pretrain → study, the study reading the pretrain step's encoder,
    on the GPU pool, neither cached nor retried (a retry would run every cell again)."""
    pipeline, k8s = spec_docs(ROOT / "pipelines" / "compiled" / "label_fractions.yaml")
    assert pipeline["pipelineInfo"]["name"] == "medssl-label-fractions"
    all_tasks = tasks(pipeline)
    steps = {"resolve-config", "data", "validate", "split", "start-run", "pretrain", "study"}
    assert set(all_tasks) - {"exit-handler-1"} == {*steps, "finish-run"}

    def after(task: str) -> set[str]:
        return set(all_tasks[task].get("dependentTasks", []))

    assert "data" in after("validate") and "validate" in after("split")
    assert "split" in after("pretrain") and "pretrain" in after("study")
    study = all_tasks["study"]["inputs"]
    assert study["artifacts"]["encoder"]["taskOutputArtifact"] == {
        "outputArtifactKey": "encoder", "producerTask": "pretrain"
    }  # fmt: skip
    assert study["artifacts"]["splits"]["taskOutputArtifact"]["producerTask"] == "split"
    assert study["artifacts"]["images"]["taskOutputArtifact"]["producerTask"] == "data"
    for step in ("pretrain", "study"):
        params = all_tasks[step]["inputs"]["parameters"]["params"]["taskOutputParameter"]
        assert params["producerTask"] == "resolve-config", step
        parent = all_tasks[step]["inputs"]["parameters"]["parent_run_id"]["taskOutputParameter"]
        assert parent["producerTask"] == "start-run", step
    for name in ("seeds", "trial_cpus", "trial_gpus", "max_concurrent"):
        assert study["parameters"][name]["componentInputParameter"].endswith(name)

    inputs = pipeline["root"]["inputDefinitions"]["parameters"]
    preset = load_params(ROOT / "params.yaml").tune.with_preset("label-fractions")
    assert inputs["seeds"]["defaultValue"] == preset.seeds
    assert inputs["trial_gpus"]["defaultValue"] == 1  # one GPU per cell on the cluster
    assert {"data_repo", "data_rev", "data_path", "params", "data_size", "pretrain_method"} <= set(
        inputs
    )
    assert "ray_address" not in inputs and "register_margin" not in inputs

    executors = pipeline["deploymentSpec"]["executors"]
    for name in ("exec-pretrain", "exec-study"):
        assert executors[name]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
        assert k8s["deploymentSpec"]["executors"][name]["nodeSelector"]["labels"] == {
            "medssl.io/pool": "gpu"
        }  # fmt: skip
    for step in ("pretrain", "study"):
        assert not all_tasks[step]["cachingOptions"].get("enableCache"), step
        assert "retryPolicy" not in all_tasks[step], step
    finish = pipeline["root"]["dag"]["tasks"]["finish-run"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"

    comp = pipeline["components"]["comp-study"]
    kinds = {
        k: v["artifactType"]["schemaTitle"]
        for k, v in comp["inputDefinitions"]["artifacts"].items()
    }
    assert kinds == {
        "splits": "system.Dataset",
        "images": "system.Dataset",
        "encoder": "system.Model",
    }
    outputs = comp["outputDefinitions"]["artifacts"]
    kinds = {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()}
    assert kinds == {
        "summary": "system.Markdown", "metrics": "system.Metrics", "study": "system.Artifact"
    }  # fmt: skip


def test_image_text_spec_chains_clusters_pairs_convirt_and_the_kidney_task():
    """Paper 002: pretrain (clusters) → pairs → pretrain-2 (ConVIRT, its own config) and split →
    organ-task → train (from the ConVIRT encoder, the kidney config) → evaluate → register."""
    pipeline, k8s = spec_docs(ROOT / "pipelines" / "compiled" / "image_text.yaml")
    assert pipeline["pipelineInfo"]["name"] == "medssl-image-text"
    all_tasks = tasks(pipeline)

    def source(task: str, artifact: str) -> str:
        return all_tasks[task]["inputs"]["artifacts"][artifact]["taskOutputArtifact"][
            "producerTask"
        ]

    def params(task: str) -> str:
        return all_tasks[task]["inputs"]["parameters"]["params"]["taskOutputParameter"][
            "producerTask"
        ]

    assert source("pairs", "encoder") == "pretrain" and source("pairs", "splits") == "split"
    assert source("pretrain-2", "splits") == "pairs" and params("pretrain-2") == "override-params"
    assert params("pretrain") == "resolve-config" and source("organ-task", "splits") == "split"
    assert source("train", "splits") == "organ-task" and source("train", "encoder") == "pretrain-2"
    assert params("train") == params("register") == "override-params-2"
    assert source("register", "model") == "train" and source("evaluate", "model") == "train"
    root = pipeline["root"]["inputDefinitions"]["parameters"]
    assert root["convirt_overrides"]["defaultValue"] == ["pretrain.method=convirt"]
    assert "supervised.loss=gce" in root["kidney_overrides"]["defaultValue"]
    # the three training steps, and only they, run on the GPU pool
    executors = k8s["deploymentSpec"]["executors"]
    gpu = {name for name, executor in executors.items() if "nodeSelector" in executor}
    assert gpu == {"exec-pretrain", "exec-pretrain-2", "exec-train"}


def test_override_params_component_body():
    c = _components()
    base = params_argument(load_params(Path("/nonexistent")))
    out = c.override_params.python_func(params=base, overrides=["pretrain.method=convirt"])
    assert out["pretrain"]["method"] == "convirt" and out["train"] == base["train"]
    with pytest.raises(ConfigError, match=r"convirt\.lamda"):
        c.override_params.python_func(params=base, overrides=["convirt.lamda=2"])


@pytest.mark.parametrize("module", [p.stem for p in all_pipeline_files(ROOT)])
def test_every_spec_takes_credentials_from_the_secret_only(module):
    """Every step of every spec gets the credentials secret as env vars (the MinIO endpoints
    optional), and the spec holds no credential: no step sets a credential variable itself, no
    URL carries a user:password, no cloud key."""
    path = ROOT / "pipelines" / "compiled" / f"{module}.yaml"
    pipeline, k8s = spec_docs(path)
    for name, executor in pipeline["deploymentSpec"]["executors"].items():
        keys = {}
        for entry in k8s["deploymentSpec"]["executors"][name]["secretAsEnv"]:
            assert entry["secretName"] == "medssl-credentials", name
            for pair in entry["keyToEnv"]:
                assert pair["secretKey"] == pair["envVar"]
                keys[pair["secretKey"]] = entry["optional"]
        assert set(keys) == SECRET_KEYS, name
        required = {k for k, optional in keys.items() if not optional}
        assert required == REQUIRED_SECRET_KEYS, name
        own_env = {e["name"] for e in executor["container"].get("env", [])}
        assert not own_env & SECRET_KEYS, name
    text = path.read_text()
    assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"]+@|AKIA[0-9A-Z]{16}|CHANGE_ME", text)


def test_compile_is_deterministic_across_processes(tmp_path):
    """Two `medssl pipeline compile` processes (different hash seeds) write the same bytes;
    --image sets every step's image."""
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"spec-{seed}.yaml"
        proc = medssl(
            "pipeline",
            "compile",
            "--out",
            str(out),
            "--image",
            "registry.example/medssl:abc",
            env={"PYTHONHASHSEED": seed},
        )
        assert proc.returncode == 0, proc.stderr
        assert "registry.example/medssl:abc" in proc.stdout
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    pipeline = next(yaml.safe_load_all(outs[0]))
    images = {e["container"]["image"] for e in pipeline["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/medssl:abc"}


def test_spec_gpu_secret_retry_and_cache_settings():
    pipeline, k8s = spec_docs(COMPILED)
    all_tasks = tasks(pipeline)
    assert set(STEPS) <= set(all_tasks), sorted(all_tasks)
    executors = pipeline["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"ghcr.io/medssl/medssl:latest"}

    # the GPU step: accelerator, node selector and toleration of the GPU pool
    resources = executors["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
    train = k8s["deploymentSpec"]["executors"]["exec-train"]
    assert train["nodeSelector"]["labels"] == {"medssl.io/pool": "gpu"}
    assert train["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    # only pretrain and train (in either branch) ask for a GPU
    gpu_steps = {"exec-pretrain", "exec-train", "exec-train-2"}
    for name in gpu_steps:
        assert executors[name]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
        assert k8s["deploymentSpec"]["executors"][name]["nodeSelector"] == train["nodeSelector"]
    for name, executor in executors.items():
        if name not in gpu_steps:
            assert "accelerator" not in executor["container"].get("resources", {}), name
            assert "nodeSelector" not in k8s["deploymentSpec"]["executors"][name], name

    # retries with backoff where failures can be transient and a retry is safe (start-run and
    # register find what the first attempt made); none on verdicts about the inputs, nor on
    # train (a retried pod has lost its checkpoints and would train from scratch)
    for step in ("data", "start-run", "evaluate", "register", "finish-run"):
        policy = all_tasks[step]["retryPolicy"]
        assert policy["maxRetryCount"] >= 1 and policy["backoffDuration"], step
    for step in ("resolve-config", "validate", "split", "pretrain", "train", "train-2"):
        assert "retryPolicy" not in all_tasks[step], step

    # caching: deterministic data steps yes; register (and the MLflow-tracked steps) never
    for step in ("resolve-config", "data", "validate", "split"):
        assert all_tasks[step]["cachingOptions"].get("enableCache") is True, step
    for step in ("register", "pretrain", "train", "evaluate", "start-run", "finish-run"):
        assert not all_tasks[step]["cachingOptions"].get("enableCache"), step

    # train_init=checkpoint: pretrain → train from its encoder; otherwise train from scratch
    encoder = all_tasks["train"]["inputs"]["artifacts"]["encoder"]["taskOutputArtifact"]
    assert encoder == {"outputArtifactKey": "encoder", "producerTask": "pretrain"}
    assert "encoder" not in all_tasks["train-2"]["inputs"].get("artifacts", {})

    # the exit handler gets the final status of the steps group
    finish = pipeline["root"]["dag"]["tasks"]["finish-run"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert "taskFinalStatus" in finish["inputs"]["parameters"]["status"]
    assert (
        finish["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"]
        == "{{$.pipeline_job_uuid}}"
    )

    # typed artifacts between the steps
    comps = pipeline["components"]

    def artifact_type(comp: str, kind: str, name: str) -> str:
        defs = comps[comp][f"{kind}Definitions"]["artifacts"][name]
        return defs["artifactType"]["schemaTitle"]

    assert artifact_type("comp-data", "output", "dataset") == "system.Dataset"
    assert artifact_type("comp-validate", "output", "report") == "system.Markdown"
    assert artifact_type("comp-split", "output", "splits") == "system.Dataset"
    assert artifact_type("comp-train", "input", "splits") == "system.Dataset"
    assert artifact_type("comp-train", "output", "model") == "system.Model"
    assert artifact_type("comp-pretrain", "output", "encoder") == "system.Model"
    assert artifact_type("comp-evaluate", "output", "metrics") == "system.Metrics"
    assert artifact_type("comp-evaluate", "output", "report") == "system.Markdown"
    assert artifact_type("comp-evaluate", "output", "classification") == (
        "system.ClassificationMetrics"
    )


def test_spec_parameters_default_to_params_yaml():
    pipeline, _ = spec_docs(COMPILED)
    inputs = pipeline["root"]["inputDefinitions"]["parameters"]
    expected = {"data_repo", "data_rev", "data_path", "params", *SCALAR_PARAMS}
    assert set(inputs) == expected
    cfg = load_params(ROOT / "params.yaml")
    assert inputs["train_lr"]["defaultValue"] == cfg.train.lr
    assert inputs["data_size"]["defaultValue"] == cfg.data.size
    assert inputs["train_lr"]["parameterType"] == "NUMBER_DOUBLE"
    assert inputs["train_max_epochs"]["parameterType"] == "NUMBER_INTEGER"
    # the `params` mapping resolves back to params.yaml
    assert resolve_params(inputs["params"]["defaultValue"]) == cfg


# ------------------------------------------------------------------------------ submit


class FakeKfp(ThreadingHTTPServer):
    """Answers the KFP v2beta1 REST calls kfp.Client makes and records each one."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), KfpHandler)
        self.requests: list[dict] = []
        self.experiments: list[dict] = []
        self.token: str | None = None  # when set, every call needs "Bearer <token>"
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def calls(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


class KfpHandler(BaseHTTPRequestHandler):
    server: FakeKfp

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _record(self, method: str) -> tuple[str, dict, dict]:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        auth = self.headers.get("Authorization")
        self.server.requests.append(
            {"method": method, "path": url.path, "query": query, "body": body, "auth": auth}
        )
        return url.path, query, body

    def _refused(self) -> bool:
        token = self.server.token
        if token is None or self.headers.get("Authorization") == f"Bearer {token}":
            return False
        self._send(401, {"error": "unauthenticated"})
        return True

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path, query, _ = self._record("GET")
        if self._refused():
            return
        if path == "/apis/v2beta1/healthz":
            self._send(200, {"multi_user": False})
        elif path == "/apis/v2beta1/experiments":
            predicates = json.loads(query.get("filter") or '{"predicates": []}')["predicates"]
            names = {p["stringValue"] for p in predicates if p["key"] == "display_name"}
            found = [e for e in self.server.experiments if not names or e["display_name"] in names]
            self._send(200, {"experiments": found, "total_size": len(found)})
        else:
            self._send(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:
        path, _, body = self._record("POST")
        if self._refused():
            return
        if path == "/apis/v2beta1/experiments":
            exp = {
                "experiment_id": f"exp-{len(self.server.experiments) + 1}",
                "display_name": body["display_name"],
            }
            self.server.experiments.append(exp)
            self._send(200, exp)
        elif path == "/apis/v2beta1/runs":
            self._send(
                200,
                {
                    "run_id": "run-42",
                    "experiment_id": body.get("experiment_id"),
                    "display_name": body.get("display_name"),
                },
            )
        elif path == "/apis/v2beta1/recurringruns":
            self._send(
                200,
                {
                    "recurring_run_id": "rr-7",
                    "experiment_id": body.get("experiment_id"),
                    "display_name": body.get("display_name"),
                },
            )
        else:
            self._send(404, {"error": f"no route {path}"})


@pytest.fixture
def kfp_server():
    server = FakeKfp()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def submit(server: FakeKfp, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # HOME: kfp.Client reads ~/.config/kfp/context.json
    return medssl("pipeline", "submit", "--host", server.url, *args, env={"HOME": str(tmp_path)})


def test_submit_creates_a_run_with_spec_and_parameters(kfp_server, tmp_path):
    proc = submit(
        kfp_server,
        tmp_path,
        "--experiment",
        "medssl-ci",
        "--data-repo",
        "https://github.com/example/medssl.git",
        "--data-rev",
        "0123456789abcdef0123",
        "--param",
        "train_lr=0.001",
        "--param",
        "evaluate.bootstrap=50",
        "-S",
        "train.max_epochs=3",
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"run: {kfp_server.url}/#/runs/details/run-42"

    assert kfp_server.calls("GET", "/apis/v2beta1/healthz")
    lookups = kfp_server.calls("GET", "/apis/v2beta1/experiments")
    assert "medssl-ci" in lookups[0]["query"]["filter"]
    (created,) = kfp_server.calls("POST", "/apis/v2beta1/experiments")
    assert created["body"]["display_name"] == "medssl-ci"

    (run,) = kfp_server.calls("POST", "/apis/v2beta1/runs")
    body = run["body"]
    assert body["experiment_id"] == "exp-1"
    assert body["display_name"] == "medssl-training 0123456789ab"
    spec = body["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "medssl-training"
    train_k8s = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert train_k8s["exec-train"]["nodeSelector"]["labels"] == {"medssl.io/pool": "gpu"}
    compiled = tasks(spec["pipeline_spec"])  # caching as compiled (no --cache/--no-cache)
    assert compiled["data"]["cachingOptions"]["enableCache"] is True
    assert not compiled["register"]["cachingOptions"].get("enableCache")
    params = body["runtime_config"]["parameters"]
    assert params["data_repo"] == "https://github.com/example/medssl.git"
    assert params["data_rev"] == "0123456789abcdef0123"
    assert params["train_lr"] == 0.001 and params["params"]["train"]["lr"] == 0.001
    assert params["train_max_epochs"] == 3
    assert params["params"]["evaluate"]["bootstrap"] == 50
    assert set(params) == {"data_repo", "data_rev", "params", *SCALAR_PARAMS}


def test_submit_schedule_creates_a_recurring_run(kfp_server, tmp_path):
    kfp_server.experiments.append({"experiment_id": "exp-9", "display_name": "medssl"})
    proc = submit(kfp_server, tmp_path, "--schedule", "0 0 3 * * *", "--no-cache")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"run: {kfp_server.url}/#/recurringrun/details/rr-7"
    assert not kfp_server.calls("POST", "/apis/v2beta1/experiments")  # found, not created
    assert not kfp_server.calls("POST", "/apis/v2beta1/runs")
    (rr,) = kfp_server.calls("POST", "/apis/v2beta1/recurringruns")
    body = rr["body"]
    assert body["experiment_id"] == "exp-9"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["mode"] == "ENABLE" and body["no_catchup"] is True
    assert str(body["max_concurrency"]) == "1"
    tasks_ = tasks(body["pipeline_spec"]["pipeline_spec"])  # --no-cache reaches nested steps
    assert "data" in tasks_ and all(
        not t.get("cachingOptions", {}).get("enableCache") for t in tasks_.values()
    )
    assert body["runtime_config"]["parameters"]["data_size"] == "small"


def test_submit_to_a_multi_user_kubeflow_with_a_namespace_and_token(kfp_server, tmp_path):
    kfp_server.token = "s3cret-token"
    refused = submit(kfp_server, tmp_path, "--namespace", "team-a")
    assert refused.returncode == 3 and "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "refused the request (HTTP 401)" in line and "KFP_TOKEN" in line
    assert not kfp_server.calls("POST", "/apis/v2beta1/runs")

    proc = medssl(
        "pipeline", "submit", "--host", kfp_server.url, "--namespace", "team-a",
        env={"HOME": str(tmp_path), "KFP_TOKEN": "s3cret-token"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "s3cret-token" not in proc.stdout + proc.stderr
    ok = [r for r in kfp_server.requests if r["auth"] == "Bearer s3cret-token"]
    assert {r["path"] for r in ok} >= {"/apis/v2beta1/healthz", "/apis/v2beta1/runs"}
    (created,) = kfp_server.calls("POST", "/apis/v2beta1/experiments")
    assert created["body"]["namespace"] == "team-a"

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    in_pod = submit(kfp_server, tmp_path, "--namespace", "team-a", "--sa-token", str(token_file))
    assert in_pod.returncode == 0, in_pod.stderr


def test_submit_errors_are_one_line(tmp_path):
    bad_cron = medssl(
        "pipeline", "submit", "--host", "http://127.0.0.1:9", "--schedule", "0 3 * * *"
    )
    assert bad_cron.returncode == 2 and "6 fields" in bad_cron.stderr
    assert len(bad_cron.stderr.strip().splitlines()) == 1

    unreachable = medssl("pipeline", "submit", "--host", "http://127.0.0.1:9")
    assert unreachable.returncode == 3, unreachable.stderr  # environment, not input
    lines = unreachable.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the KFP API" in lines[0], unreachable.stderr

    unknown = medssl("pipeline", "submit", "--host", "http://x", "--param", "lr=1")
    assert unknown.returncode == 2 and "unknown pipeline parameter" in unknown.stderr

    no_file = medssl("pipeline", "compile", cwd=tmp_path)
    assert no_file.returncode == 2 and "--pipeline-file" in no_file.stderr
    assert "Traceback" not in no_file.stderr


def test_submit_arguments_helpers():
    assert check_cron(" 0  0 3 * * * ") == "0 0 3 * * *"
    with pytest.raises(ConfigError, match="6 fields"):
        check_cron("0 3 * * *")
    overrides, data = split_params(["train_lr=0.1", "split.seed=3", "data_rev=abc"])
    assert overrides == ["train.lr=0.1", "split.seed=3"] and data == {"data_rev": "abc"}
    _, sweep = split_params(["ray_address=http://ray:8265", "trial_gpus=1", "max_concurrent=2"])
    assert sweep == {"ray_address": "http://ray:8265", "trial_gpus": 1.0, "max_concurrent": 2}
    assert split_params(["seeds=3"])[1] == {"seeds": 3}  # the label-fractions pipeline's
    with pytest.raises(ConfigError, match="expected a number"):
        split_params(["trial_gpus=many"])
    args = pipeline_arguments(load_params(Path("/nonexistent"), ["train.max_steps=7"]))
    assert args["train_max_steps"] == 7 and "data_repo" not in args


# ------------------------------------------------------------------------------ orchestration


def test_resolve_params_layers_and_sentinels():
    base = params_argument(load_params(Path("/nonexistent"), ["train.lr=0.5", "data.seed=4"]))
    assert "max_steps" not in base["train"]  # None is left out (KFP cannot carry null)
    cfg = resolve_params(base, train_lr=0.01, train_max_steps=0, register_model_name="")
    assert cfg.train.lr == 0.01 and cfg.data.seed == 4  # scalars win over `params`
    assert cfg.train.max_steps is None and cfg.register_.model_name is None
    assert resolve_params(base, train_max_steps=5).train.max_steps == 5
    assert scalar_defaults(cfg)["train_max_steps"] == 0
    with pytest.raises(ConfigError, match=r"train\.lr"):
        resolve_params(base, train_lr=-1.0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        resolve_params({"train": {"lrr": 1}})
    # cached steps see only what they read
    assert set(step_config(cfg, "data")) == {"data", "split"}
    assert set(step_config(cfg, "data")["split"]) == {"fractions"}
    assert resolve_params(step_config(cfg, "data")).data.seed == 4


def test_evaluation_markdown_embeds_its_plots(tmp_path):
    png = b"\x89PNG\r\n\x1a\nfake"
    (tmp_path / "plot.png").write_bytes(png)
    md = "# Evaluation\n\n| | a |\n|---|---:|\n| F1 | 0.5 |\n\n![curves](plot.png) ![x](gone.png)\n"
    page = evaluation_markdown(md, tmp_path)
    assert page.startswith("# Evaluation\n\n| | a |")  # Markdown stays Markdown
    assert f"![curves](data:image/png;base64,{base64.b64encode(png).decode()})" in page
    assert "![x](gone.png)" in page  # a missing file stays a link


def test_link_split_images_when_the_relative_path_breaks(tiny_archive, tmp_path, tiny_params):
    from medssl.data.contract import Dataset
    from medssl.stages.split import split

    images = tmp_path / "a" / "dataset"
    shutil.copytree(tiny_archive, images)
    split(images, tmp_path / "b" / "splits", tiny_params.split)
    # as on a cluster where artifacts land elsewhere: move the split output away
    moved = tmp_path / "elsewhere" / "deep" / "splits"
    moved.parent.mkdir(parents=True)
    shutil.move(tmp_path / "b" / "splits", moved)
    view = link_split_images(moved, images, tmp_path / "view")
    ds = Dataset.open(view)
    assert ds.image_path(ds.manifest["image"].iloc[0]).is_file()
    assert len(ds.manifest) == len(Dataset.open(moved).manifest)
    # when it resolves, the split folder is used as it is
    split(images, tmp_path / "c" / "splits", tiny_params.split)
    assert link_split_images(tmp_path / "c" / "splits", images, tmp_path / "v2") == (
        tmp_path / "c" / "splits"
    )


# ------------------------------------------------------------------------------ component bodies


def _components():
    load_pipeline(PIPELINE)
    import components

    return components


def test_resolve_config_component_body():
    c = _components()
    base = params_argument(load_params(Path("/nonexistent")))
    scalars = scalar_defaults(load_params(Path("/nonexistent"), ["data.size=tiny"]))
    out = c.resolve_config.python_func(params=base, **scalars)
    assert out.params["data"]["size"] == "tiny" and out.data["data"]["size"] == "tiny"
    assert set(out.validate) == {"validate"} and set(out.split) == {"split"}
    with pytest.raises(ConfigError):
        c.resolve_config.python_func(params=base, **{**scalars, "train_backbone": "resnet7"})


def test_data_and_validate_component_bodies(tmp_path):
    """The data body synthesizes the tiny archive (no data repo) and tags it; the validate body
    writes its Markdown report and fails the step on a broken dataset."""
    from kfp.dsl import Artifact, Dataset, Markdown

    c = _components()
    cfg = load_params(Path("/nonexistent"), ["data.size=tiny", "data.workers=1"])
    dataset = Dataset(name="dataset", uri=str(tmp_path / "data" / "dataset"))
    c.data.python_func(
        config=step_config(cfg, "data"),
        data_repo="",
        data_rev="",
        data_path="",
        dataset=dataset,
    )
    assert (Path(dataset.path) / "manifest.parquet").is_file()
    assert dataset.metadata["medssl.data.source"] == "synth"
    assert dataset.metadata["medssl.data.size"] == "tiny"
    assert len(dataset.metadata["medssl.data.hash"]) == 64
    with pytest.raises(ConfigError, match="needs data_repo"):
        c.data.python_func(config={}, data_repo="", data_rev="abc", data_path="", dataset=dataset)

    # break it: one image file missing
    first = next((Path(dataset.path) / "images").rglob("*.png"))
    first.unlink()
    report = Markdown(name="report", uri=str(tmp_path / "validate" / "report"))
    results = Artifact(name="results", uri=str(tmp_path / "validate" / "results"))
    Path(report.path).parent.mkdir(parents=True)
    with pytest.raises(ValidationFailed, match="failed validation"):
        c.validate.python_func(
            dataset=dataset,
            config=step_config(cfg, "validate"),
            report=report,
            results=results,
        )
    page = Path(report.path).read_text()
    assert page.startswith("# Data validation") and "| **FAILED** |" in page
    assert "| expectation | view | result | unexpected | examples |" in page
    assert (Path(results.path) / "report.json").is_file()


TUNE_BUDGET = [
    "pretrain.device=cpu", "pretrain.method=lsd", "pretrain.batch_exams=8",
    "pretrain.max_batch_images=64", "pretrain.max_epochs=2", "pretrain.max_steps=null",
    "pretrain.tsne_points=0", "evaluate.bootstrap=20", "tune.space={lsd.lambda: [1, 4]}",
]  # fmt: skip


def _tune_outputs(root: Path) -> dict:
    from kfp.dsl import Artifact, Markdown, Metrics

    root.mkdir(parents=True, exist_ok=True)
    return {
        "summary": Markdown(name="summary", uri=str(root / "summary")),
        "metrics": Metrics(name="metrics", uri=str(root / "metrics")),
        "sweep": Artifact(name="sweep", uri=str(root / "sweep")),
    }


def test_tune_component_body_passes_the_best_config_on(
    tiny_archive, tiny_split, tmp_path, monkeypatch
):
    """Without a Ray address the body sweeps here (local Ray): 2 trials over lsd.lambda; its
    params output is its input with the best lambda applied, and nothing else changed; the
    sweep's MLflow run nests under the step's stage run, under the pipeline's parent run."""
    import ray
    from kfp.dsl import Dataset
    from mlflow import MlflowClient

    from medssl.orchestration import start_pipeline_run

    c = _components()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    budget = [*TUNE_BUDGET, f"pretrain.cache_dir={tmp_path / 'cache'}"]
    cfg = load_params(Path("/nonexistent"), budget)
    parent = start_pipeline_run("kfp-test", cfg, {})
    args = {
        "splits": Dataset(name="splits", uri=str(tiny_split)),
        "images": Dataset(name="dataset", uri=str(tiny_archive)),
        "params": params_argument(cfg),
        "parent_run_id": parent,
        "kfp_run_id": "kfp-test",
        "preset": "",
        "metric": "",
        "ray_address": "",
        "storage": "",
        "trial_cpus": 1.0,
        "trial_gpus": 0.0,
        "max_concurrent": 2,
    }
    with pytest.raises(ConfigError, match="leaks the test set"):  # refused before any work
        c.tune.python_func(**{**args, "metric": "test_f1_weighted"}, **_tune_outputs(tmp_path))
    outputs = _tune_outputs(tmp_path / "tune")
    try:
        out = c.tune.python_func(**args, **outputs)
    finally:
        ray.shutdown()

    best = json.loads((Path(outputs["sweep"].path) / "best.json").read_text())
    assert out.best == best["params"] == {"lsd.lambda": best["values"]["lsd.lambda"]}
    assert best["params"]["lsd.lambda"] in (1, 4) and best["metric"] == "val_nmi"
    applied = load_params(Path("/nonexistent"), [*budget, f"lsd.lambda={out.best['lsd.lambda']}"])
    assert resolve_params(out.params) == applied
    sweep_files = {p.name for p in Path(outputs["sweep"].path).iterdir()}
    assert {"results.csv", "summary.md", "best.json", "sweep.json", "sweep.png"} <= sweep_files
    assert "trials" not in sweep_files and "ray" not in sweep_files  # only the summary
    page = Path(outputs["summary"].path).read_text()
    assert page.startswith("# Sweep sweep-kfp-test") and "(data:image/png;base64," in page
    assert outputs["metrics"].metadata["trials"] == 2
    assert outputs["metrics"].metadata["best_val_nmi"] == pytest.approx(best["value"])

    mc = MlflowClient(uri)
    runs = mc.search_runs([mc.get_experiment_by_name("medssl").experiment_id])
    (stage,) = [r for r in runs if r.data.tags.get("medssl.stage") == "tune"]
    (sweep,) = [r for r in runs if r.data.tags.get("medssl.kind") == "sweep"]
    assert stage.data.tags["mlflow.parentRunId"] == parent
    assert sweep.data.tags["mlflow.parentRunId"] == stage.info.run_id
    assert float(stage.data.params["best.lsd.lambda"]) == out.best["lsd.lambda"]
