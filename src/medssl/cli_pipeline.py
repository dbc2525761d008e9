"""`medssl pipeline compile|run --local|submit`: the Kubeflow training pipeline (pipelines/
training.py, a file of the repository, not of the installed package) from the command line.

kfp is imported inside the commands so `medssl --help` stays fast.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, TextIO

import typer

from medssl.cli_options import ParamsOption, SetOption
from medssl.config import DEFAULT_PARAMS, Params, load_params
from medssl.errors import ConfigError, MedsslError, ServiceError
from medssl.net import Unreachable, health_status

PIPELINES_DIR = Path("pipelines")
DEFAULT_PIPELINE = "training"
PIPELINE_FILE = PIPELINES_DIR / f"{DEFAULT_PIPELINE}.py"
DATA_PARAMS = ("data_repo", "data_rev", "data_path")
MODEL_PARAMS = ("model_uri",)  # the batch-inference pipeline's
# the sweep and label-fractions pipelines', with their types (a --param value is text)
SWEEP_PARAMS: dict[str, type] = {
    "ray_address": str, "storage": str, "preset": str, "metric": str,
    "trial_cpus": float, "trial_gpus": float, "max_concurrent": int, "seeds": int,
}  # fmt: skip
IMAGE_ENV = "MEDSSL_IMAGE"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's lines that say where a run is (everything else goes to the log only)
_STATUS_LINE = re.compile(r"Executing task|Task .* finished with status|Pipeline .* finished with")

pipeline_app = typer.Typer(
    help="The Kubeflow training pipeline: compile it, run it locally, submit it to a cluster.",
    no_args_is_help=True,
)


class SubmitError(ServiceError):
    """The KFP API could not be reached or refused the request (exit code 3)."""


PipelineNameOption = Annotated[
    str,
    typer.Option(
        "--pipeline",
        help="Which pipeline of pipelines/: training (default), batch_inference, sweep, "
        "label_fractions or image_text.",
    ),
]
PipelineFileOption = Annotated[
    Path | None,
    typer.Option(
        "--pipeline-file",
        help="The pipeline module (default: pipelines/training.py of the repository around "
        "the working directory).",
    ),
]
ImageOption = Annotated[
    str | None,
    typer.Option(
        "--image",
        help=f"Container image of every step (default: ${IMAGE_ENV} or the published image).",
    ),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        metavar="NAME=VALUE",
        help="A pipeline parameter (data_repo, train_lr, …) or a params.yaml key (train.lr) "
        "(repeatable).",
    ),
]
DataRepoOption = Annotated[
    str | None,
    typer.Option(
        "--data-repo", help="Git repository of the DVC-tracked dataset (URL or local path)."
    ),
]
DataRevOption = Annotated[
    str | None, typer.Option("--data-rev", help="Git revision (commit) of the dataset.")
]
DataPathOption = Annotated[
    str | None, typer.Option("--data-path", help="Dataset folder inside the data repository.")
]


# ------------------------------------------------------------------------------ loading


def find_pipeline_file(
    explicit: Path | None = None, cwd: Path | None = None, name: str = DEFAULT_PIPELINE
) -> Path:
    """`explicit`, else pipelines/<name>.py in the working directory or a parent of it."""
    if explicit is not None:
        if name != DEFAULT_PIPELINE:
            raise ConfigError("give --pipeline or --pipeline-file, not both")
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: pipeline file not found")
        return explicit.resolve()
    start = (cwd or Path.cwd()).resolve()
    relative = PIPELINES_DIR / f"{name}.py"
    for folder in (start, *start.parents):
        candidate = folder / relative
        if candidate.is_file():
            return candidate
        if (folder / PIPELINE_FILE).is_file():  # the repository, without that pipeline
            known = sorted(p.stem for p in (folder / PIPELINES_DIR).glob("*.py"))
            raise ConfigError(f"--pipeline {name!r}: no such pipeline (known: {', '.join(known)})")
    raise ConfigError(
        f"{relative} not found in {start} or its parents: run from the medssl repository "
        "or pass --pipeline-file"
    )


def all_pipeline_files(cwd: Path | None = None) -> list[Path]:
    """Every pipeline module of the repository's pipelines/ folder."""
    folder = find_pipeline_file(cwd=cwd).parent
    return sorted(p for p in folder.glob("*.py") if "def compile_pipeline" in p.read_text())


def load_pipeline(path: Path, image: str | None = None) -> ModuleType:
    """Import the pipeline module fresh (components read MEDSSL_IMAGE when they are defined)."""
    if image:
        os.environ[IMAGE_ENV] = image
    root = str(path.parent.parent)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)  # its components/ package wins over any other
    for name in [n for n in sys.modules if n.split(".")[0] in ("components", "pipelines")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location("medssl_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ arguments


def pipeline_arguments(
    cfg: Params,
    *,
    data_repo: str | None = None,
    data_rev: str | None = None,
    data_path: str | None = None,
    model_uri: str | None = None,
) -> dict[str, Any]:
    """Every pipeline parameter from a resolved config (so the run uses exactly `cfg`)."""
    from medssl.orchestration import params_argument, scalar_defaults

    args: dict[str, Any] = {"params": params_argument(cfg), **scalar_defaults(cfg)}
    names = (*DATA_PARAMS, *MODEL_PARAMS)
    for name, value in zip(names, (data_repo, data_rev, data_path, model_uri), strict=True):
        if value is not None:
            args[name] = value
    return args


def accepted_arguments(module: ModuleType, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments the pipeline declares (batch inference takes fewer than training); one
    given by the user that it does not take is an error."""
    declared = set(module.PIPELINE.component_spec.inputs)
    for name in (*MODEL_PARAMS, *SWEEP_PARAMS):
        if name in arguments and name not in declared:
            raise ConfigError(f"--param {name}: pipeline {module.PIPELINE_NAME} has no {name}")
    return {k: v for k, v in arguments.items() if k in declared}


def split_params(items: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """`--param` values → (params.yaml overrides, data parameters). A scalar pipeline parameter
    (train_lr=…) is the same as its params.yaml key (-S train.lr=…)."""
    from medssl.orchestration import SCALAR_PARAMS

    overrides: list[str] = []
    data: dict[str, str] = {}
    for text in items or []:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--param {text!r}: expected NAME=VALUE")
        if "." in name:
            overrides.append(f"{name}={value}")
        elif name in SCALAR_PARAMS:
            overrides.append(f"{SCALAR_PARAMS[name]}={value}")
        elif name in DATA_PARAMS or name in MODEL_PARAMS:
            data[name] = value
        elif name in SWEEP_PARAMS:
            try:
                data[name] = SWEEP_PARAMS[name](value)
            except ValueError:
                raise ConfigError(f"--param {name}={value}: expected a number") from None
        else:
            known = ", ".join([*DATA_PARAMS, *MODEL_PARAMS, *SWEEP_PARAMS, *SCALAR_PARAMS])
            raise ConfigError(f"--param {name!r}: unknown pipeline parameter (known: {known})")
    return overrides, data


def check_cron(schedule: str) -> str:
    """A KFP cron expression: 6 fields (second minute hour day-of-month month day-of-week)."""
    fields = schedule.split()
    if len(fields) != 6:
        raise ConfigError(
            f"--schedule {schedule!r}: a KFP cron has 6 fields (second minute hour day month "
            f"weekday), got {len(fields)}; e.g. '0 0 3 * * *' for 03:00 every day"
        )
    return " ".join(fields)


def _git_out(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def _resolve(
    params: Path,
    set_: list[str] | None,
    param: list[str] | None,
    data_repo: str | None,
    data_rev: str | None,
    data_path: str | None,
    *,
    local: bool,
) -> dict[str, Any]:
    """Pipeline arguments from params.yaml + overrides. --data-rev without a repository means
    this repository: its working copy for a local run, its `origin` remote for a cluster."""
    overrides, data = split_params(param)
    cfg = load_params(params, [*(set_ or []), *overrides])
    data_repo = data_repo if data_repo is not None else data.get("data_repo")
    data_rev = data_rev if data_rev is not None else data.get("data_rev")
    data_path = data_path if data_path is not None else data.get("data_path")
    if data_rev and not data_repo:
        if local:
            data_repo, source = _git_out("rev-parse", "--show-toplevel"), "this repository"
        else:
            data_repo, source = _git_out("remote", "get-url", "origin"), "git remote origin"
        if not data_repo:
            raise ConfigError(f"--data-rev needs --data-repo (no {source} here)")
        typer.echo(f"data repository: {data_repo} ({source})")
    arguments = pipeline_arguments(
        cfg,
        data_repo=data_repo,
        data_rev=data_rev,
        data_path=data_path,
        model_uri=data.get("model_uri"),
    )
    return {**arguments, **{k: v for k, v in data.items() if k in SWEEP_PARAMS}}


# ------------------------------------------------------------------------------ commands


@pipeline_app.command("compile")
def compile_cmd(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Spec file to write for one pipeline (default: pipelines/compiled/"
            "<pipeline>.yaml; without --pipeline: the training pipeline).",
        ),
    ] = None,
    image: ImageOption = None,
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline", help="Only this pipeline of pipelines/ (default: all of them)."),
    ] = None,
    pipeline_file: PipelineFileOption = None,
) -> None:
    """Compile the pipelines (training, batch_inference, sweep, label_fractions, image_text) to
    KFP YAML in pipelines/compiled/ (deterministic: commit the result)."""
    if pipeline is None and pipeline_file is None and out is None:
        files = all_pipeline_files()
    else:
        files = [find_pipeline_file(pipeline_file, name=pipeline or DEFAULT_PIPELINE)]
    for file in files:
        module = load_pipeline(file, image)
        path = module.compile_pipeline(out or module.DEFAULT_OUTPUT)
        from components.image import IMAGE

        typer.echo(f"compiled {module.PIPELINE_NAME} (image {IMAGE}) → {path}")


@pipeline_app.command("run")
def run_cmd(
    local: Annotated[
        bool,
        typer.Option(
            "--local/--cluster",
            help="Run here with kfp.local (the default); a cluster run is `pipeline submit`.",
        ),
    ] = True,
    root: Annotated[
        Path, typer.Option("--root", help="Folder for the steps' outputs (pipeline root).")
    ] = Path(".kfp-local"),
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Reuse cached step outputs under --root.")
    ] = True,
    data_repo: DataRepoOption = None,
    data_rev: DataRevOption = None,
    data_path: DataPathOption = None,
    param: ParamOption = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
    pipeline: PipelineNameOption = DEFAULT_PIPELINE,
    pipeline_file: PipelineFileOption = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show every step's full output (always kept in ROOT/logs/)."
        ),
    ] = False,
) -> None:
    """Run the pipeline here with kfp.local (ignores resource and Kubernetes settings); exit 1
    when a step fails.

    The same DAG as on a cluster, on params.yaml + overrides (e.g. `-S data.size=tiny`), one
    process per step (kfp.local SubprocessRunner) in this Python environment. The local runner
    ignores resource, GPU and Kubernetes settings (node selector, toleration,
    the credentials secret: MLflow and S3 settings come from this shell's environment) and
    refuses container components; retries, caching and the exit handler work as on a cluster.
    """
    if not local:
        raise ConfigError(
            "`pipeline run` runs here with kfp.local; for a cluster use `medssl pipeline submit "
            "--host …`"
        )
    arguments = _resolve(params, set_, param, data_repo, data_rev, data_path, local=True)
    module = load_pipeline(find_pipeline_file(pipeline_file, name=pipeline))
    arguments = accepted_arguments(module, arguments)
    from kfp import local as kfp_local

    from medssl.tracking.runs import tracking_uri

    os.environ["MLFLOW_TRACKING_URI"] = uri = tracking_uri()  # one store for every step process
    root = root.resolve()
    kfp_local.init(
        runner=kfp_local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=cache,
        raise_on_error=True,
    )
    before = set(root.iterdir()) if root.is_dir() else set()
    log_path = root / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
    start = time.perf_counter()
    try:
        with _step_output(log_path, verbose):
            module.PIPELINE(**arguments)
        failure = None
    except RuntimeError as exc:
        failure = _ANSI.sub("", str(exc)).splitlines()[0]
    run_dirs = sorted(p for p in set(root.iterdir()) - before if p.is_dir() and p.name != "logs")
    where = run_dirs[-1] if run_dirs else root
    typer.echo(f"outputs: {where}")
    typer.echo(f"log: {log_path}")
    typer.echo(f"MLflow: {uri}")
    if failure:
        seconds = time.perf_counter() - start
        typer.secho(f"error: pipeline failed after {seconds:.0f} s: {failure}", err=True, fg="red")
        raise typer.Exit(1)
    registered = _register_outputs(where)
    if registered:
        typer.echo(
            f"registered version {registered.get('version')} ({registered.get('decision')}): "
            f"{registered.get('model_uri')}"
        )
    typer.echo(f"pipeline succeeded in {time.perf_counter() - start:.0f} s")


class _StepOutput(io.TextIOBase):
    """sys.stdout during a local run: every line to the log file; to the terminal only the
    step status lines, or everything when verbose."""

    def __init__(self, log: TextIO, terminal: TextIO, verbose: bool) -> None:
        self._log, self._terminal, self._verbose = log, terminal, verbose
        self._color = terminal.isatty()
        self._pending = ""

    def write(self, text: str) -> int:
        self._log.write(_ANSI.sub("", text))
        if self._verbose:
            self._terminal.write(text)
            return len(text)
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            if _STATUS_LINE.search(line):
                self._terminal.write((line if self._color else _ANSI.sub("", line)) + "\n")
        return len(text)

    def flush(self) -> None:
        self._log.flush()
        self._terminal.flush()


@contextlib.contextmanager
def _step_output(log_path: Path, verbose: bool) -> Iterator[None]:
    """Route kfp.local's output (its logger, its warnings about settings the local runner ignores,
    and every step's stdout/stderr) through _StepOutput."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log, warnings.catch_warnings():
        if not verbose:
            warnings.showwarning = lambda message, category, filename, lineno, *_: log.write(
                warnings.formatwarning(message, category, filename, lineno)
            )
        terminal = sys.stdout
        sys.stdout = _StepOutput(log, terminal, verbose)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stdout = terminal


def _register_outputs(run_dir: Path) -> dict[str, Any]:
    """The register step's outputs, whichever branch ran it (`register`, `register-2` …)."""
    for path in sorted(run_dir.glob("register*/executor_output.json")):
        try:
            return json.loads(path.read_text()).get("parameterValues", {})
        except (OSError, json.JSONDecodeError):
            continue
    return {}


@pipeline_app.command("submit")
def submit_cmd(
    host: Annotated[
        str, typer.Option("--host", help="KFP API endpoint, e.g. http://localhost:8888.")
    ],
    experiment: Annotated[
        str, typer.Option("--experiment", help="KFP experiment (created when missing).")
    ] = "medssl",
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            metavar="CRON6",
            help="Create a recurring run on this 6-field cron (sec min hour day month weekday).",
        ),
    ] = None,
    data_rev: DataRevOption = None,
    data_repo: DataRepoOption = None,
    data_path: DataPathOption = None,
    param: ParamOption = None,
    image: ImageOption = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="Run display name.")] = None,
    cache: Annotated[
        bool | None,
        typer.Option("--cache/--no-cache", help="Override every step's compiled caching setting."),
    ] = None,
    package: Annotated[
        Path | None, typer.Option("--package", help="Also keep the compiled spec here.")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            envvar="KFP_NAMESPACE",
            help="Kubeflow profile namespace of a multi-user deployment (default: the "
            "client's context, or kubeflow).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="KFP_TOKEN",
            show_default=False,
            help="Bearer token for the KFP API (an OIDC id token, `kubectl create token …`); "
            "prefer the KFP_TOKEN variable to the command line.",
        ),
    ] = None,
    sa_token: Annotated[
        Path | None,
        typer.Option(
            "--sa-token",
            help="A projected service-account token file (in a pod: "
            "/var/run/secrets/kubeflow/pipelines/token), refreshed by the kubelet.",
        ),
    ] = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
    pipeline: PipelineNameOption = DEFAULT_PIPELINE,
    pipeline_file: PipelineFileOption = None,
) -> None:
    """Compile the pipeline and submit a run (or a recurring run) to a KFP cluster.

    With --schedule a recurring run is created instead of a one-off run. The last line printed
    is `run: <url>`."""
    cron = check_cron(schedule) if schedule is not None else None
    arguments = _resolve(params, set_, param, data_repo, data_rev, data_path, local=False)
    module = load_pipeline(find_pipeline_file(pipeline_file, name=pipeline), image)
    arguments = accepted_arguments(module, arguments)
    with tempfile.TemporaryDirectory(prefix="medssl-submit-") as tmp:
        spec = module.compile_pipeline(package or Path(tmp) / f"{pipeline}.yaml")
        if cache is not None:
            set_caching(spec, cache)
        typer.echo(f"compiled {module.PIPELINE_NAME} → {spec}")
        host = host.rstrip("/")
        auth = Auth(namespace=namespace, token=token, sa_token=sa_token)
        _probe(host, auth.bearer())
        kind, run_id, url = _submit(
            host, experiment, spec, arguments, cron, run_name, auth, module.PIPELINE_NAME
        )
    typer.echo(f"submitted {kind} {run_id} to experiment {experiment!r}")
    typer.echo(f"run: {url}")


def set_caching(spec: Path, enabled: bool) -> None:
    """Turn caching on or off for every task of a compiled spec. (kfp.Client's enable_caching
    only reaches the root DAG's tasks, not the steps inside the exit handler.)"""
    import yaml

    docs = list(yaml.safe_load_all(spec.read_text()))
    pipeline = docs[0]
    for comp in [pipeline["root"], *pipeline.get("components", {}).values()]:
        for task in comp.get("dag", {}).get("tasks", {}).values():
            task["cachingOptions"] = {"enableCache": True} if enabled else {}
    spec.write_text(yaml.safe_dump_all(docs, sort_keys=True))


class Auth:
    """How `submit` authenticates to a (multi-user) Kubeflow: a namespace, and a bearer token
    given directly or read from a service-account token file."""

    def __init__(
        self, namespace: str | None = None, token: str | None = None, sa_token: Path | None = None
    ) -> None:
        if token and sa_token:
            raise ConfigError("--token and --sa-token: give one of them")
        if sa_token is not None and not sa_token.is_file():
            raise ConfigError(f"--sa-token {sa_token}: file not found")
        self.namespace, self.token, self.sa_token = namespace, token, sa_token

    def bearer(self) -> str | None:
        if self.sa_token is not None:
            return self.sa_token.read_text().strip()
        return self.token

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.namespace:
            kwargs["namespace"] = self.namespace
        if self.sa_token is not None:
            from kfp.client import ServiceAccountTokenVolumeCredentials

            kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(str(self.sa_token))
        elif self.token:
            kwargs["existing_token"] = self.token
        return kwargs


def _probe(host: str, token: str | None = None, timeout: float = 10.0) -> None:
    """One request to the KFP health endpoint; a one-line SubmitError when it is unreachable
    or refuses the credentials (kfp.Client itself retries for half a minute and then prints a
    traceback)."""
    url = f"{host}/apis/v2beta1/healthz"
    try:
        status = health_status(url, token=token, timeout=timeout)
    except Unreachable as exc:
        raise SubmitError(f"cannot reach the KFP API at {host} ({exc})") from None
    if status in (401, 403):
        raise SubmitError(
            f"KFP API at {host} refused the request (HTTP {status}): give a token "
            "(KFP_TOKEN / --token, or --sa-token in a pod) with access to the namespace"
        )
    if status >= 400:
        raise SubmitError(f"KFP API at {host}: HTTP {status} from {url}")


def _submit(
    host: str,
    experiment: str,
    spec: Path,
    arguments: dict[str, Any],
    cron: str | None,
    run_name: str | None,
    auth: Auth | None = None,
    pipeline_name: str = "medssl-training",
) -> tuple[str, str, str]:
    """(kind, id, UI url) of the created run or recurring run (named after the pipeline)."""
    import kfp
    import kfp_server_api

    auth = auth or Auth()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2+"
            client = kfp.Client(host=host, **auth.client_kwargs())
        exp = client.create_experiment(name=experiment, namespace=auth.namespace)
        if cron:
            name = run_name or f"{pipeline_name} {cron}"
            rr = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=name,
                cron_expression=cron,
                params=arguments,
                pipeline_package_path=str(spec),
                max_concurrency=1,
                no_catchup=True,
            )
            return (
                "recurring run",
                rr.recurring_run_id,
                f"{host}/#/recurringrun/details/{rr.recurring_run_id}",
            )
        rev = arguments.get("data_rev")
        name = run_name or (f"{pipeline_name} {rev[:12]}" if rev else None)
        result = client.create_run_from_pipeline_package(
            str(spec),
            arguments=arguments,
            run_name=name,
            experiment_id=exp.experiment_id,
        )
        return "run", result.run_id, f"{host}/#/runs/details/{result.run_id}"
    except kfp_server_api.ApiException as exc:
        body = " ".join(str(exc.body or "").split())[:300]
        if exc.status in (401, 403):
            body += " (check the token and --namespace)"
        raise SubmitError(f"KFP API error {exc.status} {exc.reason}: {body}") from None
    except Exception as exc:  # urllib3 connection errors and the like, after the probe passed
        if isinstance(exc, MedsslError):
            raise
        text = " ".join(str(exc).split())[:300]
        raise SubmitError(f"submitting to {host} failed ({type(exc).__name__}: {text})") from None
