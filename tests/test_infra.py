"""infra/: every kustomize overlay rendered with `kubectl kustomize` and validated against the
Kubernetes schemas (kubernetes-validate, strict); the RayCluster (a CRD) checked for KubeRay's
required fields with its pod templates validated as core/v1 pod templates; secrets are templates;
requests/limits everywhere; the tracking DB is private; Terraform's GPU pool scales to zero."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import hcl2
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
TF = ROOT / "infra" / "terraform" / "gke"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.32"  # GKE regular channel / kubectl here; bundled by kubernetes-validate
CRDS = {("ray.io/v1", "RayCluster"), ("serving.kserve.io/v1beta1", "InferenceService")}
IMAGE = "ghcr.io/medssl/medssl"
CREDENTIAL_KEYS = {
    "MLFLOW_TRACKING_URI",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
}
GPU_SELECTOR = {"medssl.io/pool": "gpu"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not installed (CI installs it: .github/workflows/ci.yml)")
    return path


def copy_infra(tmp: Path, *, fill_secrets: bool) -> Path:
    """infra/k8s without any filled-in secret file; with fill_secrets, each *.env.example is
    copied to its *.env (the templates as they are: CHANGE_ME values)."""
    dest = tmp / "k8s"
    shutil.copytree(
        K8S,
        dest,
        ignore=lambda d, names: [
            n for n in names if Path(d).name == "secrets" and n.endswith(".env")
        ],
    )
    if fill_secrets:
        for example in dest.rglob("*.env.example"):
            shutil.copy(example, example.with_suffix(""))
    return dest


def render(overlay_dir: Path) -> list[dict]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(overlay_dir)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    k8s = copy_infra(tmp_path_factory.mktemp("infra"), fill_secrets=True)
    return {name: render(k8s / "overlays" / name) for name in OVERLAYS}


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template in a workload or a RayCluster."""
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        groups = [("head", spec["headGroupSpec"])]
        groups += [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        return [(f"RayCluster/{w}", g["template"]["spec"]) for w, g in groups]
    if doc["kind"] == "InferenceService":
        return [(f"InferenceService/{doc['metadata']['name']}", spec["predictor"])]
    if doc["kind"] == "Pod":
        return [("Pod", spec)]
    if "template" in spec:
        return [(f"{doc['kind']}/{doc['metadata']['name']}", spec["template"]["spec"])]
    return []


def labels_match(selector: dict, labels: dict) -> bool:
    """matchLabels semantics (the only selector form used here); {} matches everything."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def lock_version(name: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == name)


# --- rendering and schemas ------------------------------------------------------------------


def test_overlays_exist():
    assert {"local", "gke"} <= set(OVERLAYS)


def test_overlay_does_not_render_without_filled_secrets(tmp_path):
    """No credentials in the repo, and no silent deploy of placeholders: an overlay needs the
    gitignored secrets/*.env files an operator fills from the templates."""
    k8s = copy_infra(tmp_path, fill_secrets=False)
    for name in OVERLAYS:
        proc = subprocess.run(
            [kubectl(), "kustomize", str(k8s / "overlays" / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and "secrets/" in proc.stderr, (name, proc.stderr)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schema(rendered, overlay):
    docs = rendered[overlay]
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "NetworkPolicy"} <= {
        d["kind"] for d in docs
    }
    for doc in docs:
        assert doc["metadata"].get("namespace", "medssl") == "medssl"
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        # raises SchemaNotFoundError for a kind the schemas do not know: that fails too
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_typo(rendered):
    deployment = dict(one(rendered["local"], "Deployment", "mlflow"))
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# --- RayCluster -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_has_kuberay_required_fields(rendered, overlay):
    """Hand-checked against the ray.io/v1 RayCluster CRD (KubeRay's published schema is not
    available offline): spec.headGroupSpec.template required; each worker group needs groupName,
    minReplicas, maxReplicas, template; rayStartParams is a string->string map. The pod templates
    themselves are validated as core/v1 pod templates."""
    (rc,) = of_kind(rendered[overlay], "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["rayVersion"] == lock_version("ray")  # the image's Ray
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        params = group.get("rayStartParams", {})
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
        assert group["template"]["spec"]["containers"]
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": group["template"],
        }
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names)) and all(names)
    for g in spec["workerGroupSpecs"]:
        assert isinstance(g["minReplicas"], int) and isinstance(g["maxReplicas"], int)
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].startswith(IMAGE)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_worker_group_runs_on_the_gpu_pool_and_scales_to_zero(rendered, overlay):
    (rc,) = of_kind(rendered[overlay], "RayCluster")
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    pod = gpu["template"]["spec"]
    assert pod["nodeSelector"] == GPU_SELECTOR
    assert GPU_TOLERATION in pod["tolerations"]
    resources = pod["containers"][0]["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    head = spec["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in head and "tolerations" not in head  # head stays on CPU nodes


# --- secrets, resources, images -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_templates_with_the_contract_keys(rendered, overlay):
    secrets = {s["metadata"]["name"]: s for s in of_kind(rendered[overlay], "Secret")}
    assert {"medssl-credentials", "medssl-postgres"} <= set(secrets)
    creds = secrets["medssl-credentials"]["data"]
    assert set(creds) >= CREDENTIAL_KEYS
    assert set(creds) - CREDENTIAL_KEYS <= {
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL",
        "AWS_REQUEST_CHECKSUM_CALCULATION",
        "AWS_RESPONSE_CHECKSUM_VALIDATION",
    }
    for secret in secrets.values():
        assert "stringData" not in secret
        for key, value in secret["data"].items():
            plain = base64.b64decode(value).decode()
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", key):
                assert plain == "CHANGE_ME", f"{secret['metadata']['name']}.{key} is not a template"


def test_no_credentials_committed():
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "infra/k8s/overlays/local/secrets/credentials.env"],
        cwd=ROOT,
    )
    assert ignored.returncode == 0, "filled secrets/*.env must be gitignored"
    for path in (ROOT / "infra").rglob("*"):
        if not path.is_file() or ".terraform" in path.parts:
            continue
        rel = path.relative_to(ROOT).as_posix()
        assert not rel.endswith((".tfstate", ".tfvars")), f"{rel} must not be committed"
        assert not (path.parent.name == "secrets" and rel.endswith(".env")), rel
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|GOOG[0-9A-Z]{10,}|BEGIN [A-Z ]*PRIVATE KEY", text)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(rendered, overlay):
    checked = 0
    for doc in rendered[overlay]:
        for where, pod in pod_specs(doc):
            for c in pod.get("initContainers", []) + pod["containers"]:
                res = c.get("resources", {})
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}/{c['name']}"
                checked += 1
        if doc["kind"] == "RayCluster":  # the autoscaler sidecar KubeRay injects
            res = doc["spec"]["autoscalerOptions"]["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and set(res["limits"])
    assert checked >= 4


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_project_image_tag_everywhere(tmp_path, overlay):
    """The tag CI pushes reaches every container that runs the project image, the RayCluster's
    included (a CRD: kustomize's image transformer must still find it)."""
    k8s = copy_infra(tmp_path, fill_secrets=True)
    kfile = k8s / "overlays" / overlay / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    (entry,) = [i for i in kust["images"] if i["name"] == IMAGE]
    entry["newTag"] = "0123abc"
    kfile.write_text(yaml.safe_dump(kust))
    images = [
        c["image"]
        for doc in render(k8s / "overlays" / overlay)
        for _, pod in pod_specs(doc)
        for c in pod["containers"]
    ]
    ours = [i for i in images if i.startswith(IMAGE)]
    assert len(ours) >= 3 and all(i == f"{IMAGE}:0123abc" for i in ours), ours
    for other in set(images) - set(ours):  # third-party images: pinned, never :latest
        assert re.search(r":[\w.-]+$", other) and not other.endswith(":latest"), other


# --- serving the champion (KServe) -----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_champion_is_served_by_mlflow_models_serve(rendered, overlay):
    """Hand-checked against the serving.kserve.io/v1beta1 InferenceService CRD (not available
    offline): a predictor with one container; the container runs `mlflow models serve` of the
    champion with flags of the locked MLflow, on the port its probes and the network policy
    use, with only MLFLOW_TRACKING_URI from the credentials secret."""
    from mlflow.models.cli import commands as models_cli

    from medssl.stages.register import DEFAULT_MODEL_NAME

    docs = rendered[overlay]
    (isvc,) = of_kind(docs, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] >= predictor["minReplicas"]
    one(docs, "ServiceAccount", predictor["serviceAccountName"])
    (container,) = predictor["containers"]
    assert container["image"].startswith(IMAGE) and container["command"] == ["mlflow"]
    assert container["args"][:2] == ["models", "serve"]
    args = dict(a.split("=", 1) for a in container["args"][2:])
    known = {opt for p in models_cli.commands["serve"].params for opt in p.opts}
    assert set(args) <= known, set(args) - known
    assert args["--model-uri"] == f"models:/{DEFAULT_MODEL_NAME}@champion"
    assert args["--env-manager"] == "local"  # the image already holds the model's requirements
    port = int(args["--port"])
    assert container["ports"][0]["containerPort"] == port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": port}
    (uri,) = [e for e in container["env"] if e["name"] == "MLFLOW_TRACKING_URI"]
    assert uri["valueFrom"]["secretKeyRef"] == {
        "name": "medssl-credentials", "key": "MLFLOW_TRACKING_URI"
    }  # fmt: skip
    policy = one(docs, "NetworkPolicy", "serving-from-clients")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": port}]


def test_the_gpu_serving_component_puts_the_predictor_on_the_gpu_pool(tmp_path):
    k8s = copy_infra(tmp_path, fill_secrets=True)
    kfile = k8s / "overlays" / "gke" / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    kust["components"] = ["../../components/serving-gpu"]
    kfile.write_text(yaml.safe_dump(kust))
    (isvc,) = of_kind(render(k8s / "overlays" / "gke"), "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["nodeSelector"] == GPU_SELECTOR
    assert predictor["tolerations"] == [GPU_TOLERATION]
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


# --- MLflow server and the private tracking DB ----------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_flags_exist_and_proxy_artifacts_to_s3(rendered, overlay):
    from mlflow.cli import cli
    from mlflow.server.security_utils import is_allowed_host_header

    docs = rendered[overlay]
    container = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in container["args"][1:])
    known = {opt for p in cli.commands["server"].params for opt in p.opts + p.secondary_opts}
    assert set(args) <= known, set(args) - known  # flags of the locked MLflow
    assert re.fullmatch(
        r"postgresql://\$\(\w+\):\$\(\w+\)@postgres:5432/\$\(\w+\)", args["--backend-store-uri"]
    )
    assert "--serve-artifacts" in args and "--no-serve-artifacts" not in args
    env = {e["name"]: e for e in container["env"]}
    var = re.fullmatch(r"\$\((\w+)\)", args["--artifacts-destination"]).group(1)
    ref = env[var]["valueFrom"]["configMapKeyRef"]
    config = one(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
    assert config.startswith("s3://") and config.endswith("/mlflow")
    # the server accepts the Host header of the tracking URI the pipeline pods get
    creds = one(docs, "Secret", "medssl-credentials")["data"]
    uri = base64.b64decode(creds["MLFLOW_TRACKING_URI"]).decode()
    host = re.fullmatch(r"http://([^/]+)/?", uri).group(1)
    allowed = args["--allowed-hosts"].split(",")
    assert is_allowed_host_header(allowed, host) and is_allowed_host_header(
        allowed, "localhost:5000"
    )
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tracking_db_only_accepts_the_mlflow_server(rendered, overlay):
    docs = rendered[overlay]
    pg_labels = one(docs, "StatefulSet", "postgres")["spec"]["template"]["metadata"]["labels"]
    mlflow_labels = one(docs, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    policies = of_kind(docs, "NetworkPolicy")
    # ingress is denied by default in the namespace
    assert any(
        p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"]["policyTypes"]
        and not p["spec"].get("ingress")
        for p in policies
    )
    # NetworkPolicies add up: every rule of every policy that selects the DB pods counts
    selecting = [p for p in policies if labels_match(p["spec"]["podSelector"], pg_labels)]
    rules = [r for p in selecting for r in p["spec"].get("ingress", [])]
    assert rules, "no policy opens the DB to MLflow"
    other_pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet", "Job"} and d["metadata"]["name"] != "mlflow"
    ]
    for rule in rules:
        assert [p["port"] for p in rule["ports"]] == [5432]
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, f"DB open beyond the namespace: {peer}"
            assert labels_match(peer["podSelector"], mlflow_labels)
            assert peer["podSelector"].get("matchLabels"), "an empty selector admits every pod"
            assert not any(labels_match(peer["podSelector"], o) for o in other_pods)
    # and the DB opens no connection out
    assert any(
        "Egress" in p["spec"]["policyTypes"] and not p["spec"].get("egress") for p in selecting
    )
    # the DB is not exposed outside the cluster
    service = one(docs, "Service", "postgres")["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"


COMPILED = sorted((ROOT / "pipelines" / "compiled").glob("*.yaml"))


@pytest.mark.parametrize("compiled", COMPILED, ids=[p.stem for p in COMPILED])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_compiled_pipeline_fits_the_cluster(rendered, overlay, compiled):
    """The KFP steps' secret keys exist in the secret the overlay makes, and their GPU node
    selector / toleration are the ones the GPU pool carries (every compiled pipeline)."""
    docs = [d for d in yaml.safe_load_all(compiled.read_text()) if d]
    executors = next(d for d in docs if "platforms" in d)["platforms"]["kubernetes"]
    executors = executors["deploymentSpec"]["executors"]
    secrets = {s["metadata"]["name"]: s["data"] for s in of_kind(rendered[overlay], "Secret")}
    gpu_steps = 0
    for name, spec in executors.items():
        for ref in spec.get("secretAsEnv", []):
            if not ref.get("optional", False):
                keys = {k["secretKey"] for k in ref["keyToEnv"]}
                assert keys <= set(secrets[ref["secretName"]]), (name, keys)
        if "nodeSelector" in spec:
            gpu_steps += 1
            assert spec["nodeSelector"]["labels"] == GPU_SELECTOR, name
            assert GPU_TOLERATION in spec["tolerations"], name
    assert gpu_steps >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sweep_pipeline_reaches_the_ray_cluster(rendered, overlay):
    """What a sweep submitted from a KFP run needs: the sweep pipeline's default Ray address is
    the RayCluster's head service (KubeRay names it <cluster>-head-svc) on the dashboard port,
    which the network policies open to pipeline pods; every Ray pod runs the project image with
    the credentials secret (MLflow tracking URI for the trials' child runs, S3 for the trials'
    storage)."""
    docs = rendered[overlay]
    (rc,) = of_kind(docs, "RayCluster")
    name, namespace = rc["metadata"]["name"], rc["metadata"]["namespace"]
    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "sweep.yaml").read_text()))
    address = spec["root"]["inputDefinitions"]["parameters"]["ray_address"]["defaultValue"]
    port = int(re.fullmatch(rf"http://{name}-head-svc\.{namespace}\.svc:(\d+)", address).group(1))
    (head,) = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert {"name": "dashboard", "containerPort": port} in head["ports"]
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    ray_pod = {"ray.io/cluster": name}  # KubeRay labels every pod of the cluster so
    opened = [
        rule
        for p in of_kind(docs, "NetworkPolicy")
        if labels_match(p["spec"]["podSelector"], ray_pod)
        for rule in p["spec"].get("ingress", [])
        if {"protocol": "TCP", "port": port} in rule.get("ports", [])
    ]
    peers = [peer for rule in opened for peer in rule["from"]]
    kubeflow = {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}
    assert {"podSelector": {}} in peers  # pipeline pods of this namespace
    assert {"namespaceSelector": kubeflow} in peers  # and of a standalone KFP install
    for where, pod in pod_specs(rc):
        (container,) = pod["containers"]
        assert container["image"].startswith(IMAGE), where
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert refs == ["medssl-credentials"], where
    credentials = one(docs, "Secret", "medssl-credentials")["data"]
    assert set(credentials) >= CREDENTIAL_KEYS  # MLFLOW_TRACKING_URI and the S3 keys


# --- Terraform ------------------------------------------------------------------------------


def unquote(value):
    return value.strip('"') if isinstance(value, str) else value


def tf_resources(kind: str) -> dict[str, dict]:
    found = {}
    for path in TF.glob("*.tf"):
        for block in hcl2.load(path.open()).get("resource", []):
            for rtype, named in block.items():
                if unquote(rtype) == kind:
                    found.update({unquote(k): v for k, v in named.items()})
    return found


def test_terraform_is_formatted():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform not installed (CI installs it: .github/workflows/ci.yml)")
    proc = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(ROOT / "infra" / "terraform")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_node_pool_scales_to_zero_with_the_label_and_taint_the_manifests_use(rendered):
    pools = tf_resources("google_container_node_pool")
    assert {"cpu", "gpu"} <= set(pools)
    gpu = pools["gpu"]
    (autoscaling,) = gpu["autoscaling"]
    assert autoscaling["min_node_count"] == 0
    assert gpu.get("initial_node_count", 0) == 0
    (node,) = gpu["node_config"]
    assert node["guest_accelerator"], "GPU pool without accelerators"
    labels = {unquote(k): unquote(v) for k, v in node["labels"].items()}
    taints = [{k: unquote(v) for k, v in t.items() if k != "__is_block__"} for t in node["taint"]]
    # the same selector / toleration as the RayCluster GPU group and the KFP GPU steps
    assert labels == GPU_SELECTOR
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"} in taints
    (rc,) = of_kind(rendered["gke"], "RayCluster")
    (group,) = [g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert group["template"]["spec"]["nodeSelector"] == labels
    (cpu_node,) = pools["cpu"]["node_config"]
    assert "taint" not in cpu_node and "guest_accelerator" not in cpu_node
    (cluster,) = tf_resources("google_container_cluster").values()
    assert unquote(cluster["datapath_provider"]) == "ADVANCED_DATAPATH"  # enforces NetworkPolicy


def test_terraform_variables_are_declared_and_used():
    text = "\n".join(p.read_text() for p in TF.glob("*.tf"))
    used = set(re.findall(r"\bvar\.(\w+)", text))
    declared = {
        unquote(name)
        for p in TF.glob("*.tf")
        for block in hcl2.load(p.open()).get("variable", [])
        for name in block
    }
    assert used == declared, (used - declared, declared - used)
    outputs = {
        unquote(name)
        for p in TF.glob("*.tf")
        for block in hcl2.load(p.open()).get("output", [])
        for name in block
    }
    assert {"artifact_bucket", "get_credentials", "cluster_name"} <= outputs
