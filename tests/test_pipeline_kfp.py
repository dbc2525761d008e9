"""The Kubeflow pipeline: committed spec vs a fresh compile, Kubernetes settings in the spec,
`medssl pipeline submit` against a local server that records the KFP REST calls, the component
bodies and the orchestration helpers (no cluster, no kfp.local run: see test_pipeline_local.py)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from medssl.cli_pipeline import check_cron, load_pipeline, pipeline_arguments, split_params
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


def test_committed_spec_equals_a_fresh_compile(tmp_path, monkeypatch):
    """Byte-equal: the compile is deterministic (see also the two-process test below)."""
    monkeypatch.delenv("MEDSSL_IMAGE", raising=False)
    assert COMPILED.is_file(), f"{COMPILED} is missing: {REGENERATE}"
    fresh = load_pipeline(PIPELINE).compile_pipeline(tmp_path / "training.yaml")
    assert fresh.read_text() == COMPILED.read_text(), (
        f"{COMPILED.relative_to(ROOT)} differs from a fresh compile of pipelines/training.py, "
        f"components/ and params.yaml: {REGENERATE}"
    )


def test_batch_inference_spec_is_committed_and_predicts_on_the_gpu_pool(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSSL_IMAGE", raising=False)
    committed = ROOT / "pipelines" / "compiled" / "batch_inference.yaml"
    fresh = load_pipeline(ROOT / "pipelines" / "batch_inference.py").compile_pipeline(
        tmp_path / "batch.yaml"
    )
    assert fresh.read_text() == committed.read_text(), REGENERATE
    pipeline, k8s = spec_docs(committed)
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

    # every step gets the credentials secret as env vars (the MinIO endpoints optional)
    for name in executors:
        secret_env = k8s["deploymentSpec"]["executors"][name]["secretAsEnv"]
        keys = {}
        for entry in secret_env:
            assert entry["secretName"] == "medssl-credentials", name
            for pair in entry["keyToEnv"]:
                assert pair["secretKey"] == pair["envVar"]
                keys[pair["secretKey"]] = entry["optional"]
        assert set(keys) == SECRET_KEYS, name
        required = {k for k, optional in keys.items() if not optional}
        assert required == REQUIRED_SECRET_KEYS, name

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
