"""MLflow runs: one parent run per pipeline run, one nested run per stage.

Stages run in separate processes (`dvc repro` runs `medssl train`, then `medssl evaluate`, then
`medssl register`), so each process finds the pipeline's parent run again:

1. `MEDSSL_PIPELINE_RUN_ID` (an explicit parent run id, e.g. from an orchestrator), else
2. the newest run of the experiment tagged `medssl.pipeline_key = <key>` that is not FINISHED,
   where key = sha256(git commit of the working directory's repo + the resolved params JSON),
   else
3. a new parent run with that tag.

A parent that FAILED (or was KILLED) is reopened: `dvc repro` after a failure re-runs only the
failed stage and the ones after it, and they belong with the stages that were cached. The parent
ends FINISHED when the `register` stage ends without error; any stage that raises marks its own
run and the parent FAILED (KILLED on Ctrl-C).

Tracking URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<root>/mlflow.db` with artifacts in
<root>/mlruns, where <root> is $DVC_ROOT or the working directory (medssl.tracking.uri). S3
artifact stores are
configured the usual way (AWS_* / MLFLOW_S3_ENDPOINT_URL environment variables) and need nothing
here. `MEDSSL_TRACKING=off` makes `stage_run` yield a `NullTracker`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from medssl import __version__
from medssl.config import Params
from medssl.errors import ConfigError
from medssl.tracking.base import NullTracker, Tracker
from medssl.tracking.uri import check as check_store
from medssl.tracking.uri import default_artifact_location, tracking_uri

PIPELINE_RUN_ENV = "MEDSSL_PIPELINE_RUN_ID"
TRACKING_SWITCH_ENV = "MEDSSL_TRACKING"
FINAL_STAGE = "register"

# Tag names (MLflow's own `mlflow.*` tags are set where the UI reads them).
TAG_KIND = "medssl.kind"  # "pipeline" on parent runs, "stage" on nested runs
TAG_PIPELINE_KEY = "medssl.pipeline_key"
TAG_STAGE = "medssl.stage"
TAG_VERSION = "medssl.version"
TAG_COMMIT = "medssl.git.commit"
TAG_DIRTY = "medssl.git.dirty"
TAG_DATA_HASH = "medssl.data.hash"
TAG_DATA_HASH_SOURCE = "medssl.data.hash_source"
TAG_DATA_PATH = "medssl.data.path"
TAG_FAILURE = "medssl.failure"

_BATCH_PARAMS = 100  # MLflow's log_batch limits: 100 params/tags, 1000 metrics per call
_BATCH_METRICS = 1000
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 5000
_BAD_KEY_CHARS = re.compile(r"[^\w\-./ :]")


def tracking_enabled() -> bool:
    """False when `MEDSSL_TRACKING` is 0 / off / false / no."""
    return os.environ.get(TRACKING_SWITCH_ENV, "").strip().lower() not in {
        "0",
        "off",
        "false",
        "no",
    }


def client(*, read_only: bool = False) -> MlflowClient:
    """A client on `tracking_uri()` (the model registry follows the tracking store unless
    MLFLOW_REGISTRY_URI says otherwise), after a fast check that the store is reachable (one
    line instead of minutes of retries); `read_only` never creates a sqlite database. Also points
    MLflow's fluent API (used by mlflow.pytorch.log_model) at the same store."""
    uri = check_store(tracking_uri(), must_exist=read_only)
    # Never call set_tracking_uri when the variable is set: a global set once would then win over
    # a later change of the variable (tests, notebooks). Only correct a different global.
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


# ---------------------------------------------------------------------------------------------
# what every run records


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD of the git repository around `cwd` (default: the working directory), or None."""
    out = _git(["rev-parse", "HEAD"], cwd)
    return out.strip() if out else None


def git_dirty(cwd: Path | None = None) -> bool | None:
    """Whether tracked files differ from HEAD (None outside a repository)."""
    out = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return None if out is None else bool(out.strip())


def _git(args: list[str], cwd: Path | None) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=cwd or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def data_hash(dataset_dir: Path | str) -> tuple[str, str] | None:
    """(hash, source) of a dataset folder, covering its images: DVC's md5 of that path from the
    nearest dvc.lock (the working directory's, else one in a parent folder of the dataset), else
    a sha256 of dataset.yaml + manifest.parquet + the bytes of every listed image. A dataset
    whose images live in another dataset folder (`image_root`, e.g. the split stage's output)
    combines its own hash with that folder's. None when the folder is no dataset."""
    path = Path(dataset_dir).resolve()
    found = _lock_hash(path) or _content_hash(path)
    images = _image_root(path)
    if found is None or images is None or images == path:
        return found
    other = data_hash(images)
    if other is None:
        return found
    combined = hashlib.sha256(f"{found[0]}+{other[0]}".encode()).hexdigest()
    return combined, f"{found[1]} + images {other[1]}"


def _lock_hash(path: Path) -> tuple[str, str] | None:
    for root in dict.fromkeys([Path.cwd().resolve(), *path.parents]):
        lock = root / "dvc.lock"
        if lock.is_file():
            found = _dvc_lock_hash(lock, path)
            if found:
                return found
    return None


def _image_root(path: Path) -> Path | None:
    """The folder a dataset's image paths are relative to, when not the dataset itself."""
    try:
        info = yaml.safe_load((path / "dataset.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    root = info.get("image_root", ".") if isinstance(info, dict) else "."
    return None if root in (".", "", None) else (path / str(root)).resolve()


def _dvc_lock_hash(lock: Path, path: Path) -> tuple[str, str] | None:
    try:
        rel = path.relative_to(lock.parent.resolve()).as_posix()
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (ValueError, OSError, yaml.YAMLError):
        return None
    # A stage's outs are the newest record of a path; deps of later stages may lag behind.
    for kind in ("outs", "deps"):
        for name, stage in stages.items():
            for entry in (stage or {}).get(kind) or []:
                if str(entry.get("path", "")).rstrip("/") == rel and entry.get("md5"):
                    return str(entry["md5"]), f"dvc.lock:{name}"
    return None


def _content_hash(path: Path) -> tuple[str, str] | None:
    files = [path / "dataset.yaml", path / "manifest.parquet"]
    if not any(f.is_file() for f in files):
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        if f.is_file():
            _update_file(digest, f)
        digest.update(b"\0")
    source = "sha256(dataset.yaml+manifest.parquet"
    if _image_root(path) is None and files[1].is_file():
        import pyarrow.parquet as pq

        try:
            images = pq.read_table(files[1], columns=["image"]).column(0).to_pylist()
        except Exception:  # not a readable manifest: hash what there is
            images = []
        for rel in sorted(str(i) for i in images if i is not None):
            digest.update(rel.encode() + b"\0")
            image = path / rel
            if image.is_file():
                _update_file(digest, image)
            digest.update(b"\0")
        source += "+images"
    return digest.hexdigest(), source + ")"


def _update_file(digest: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 1e-4}} → {"train.lr": "0.0001"}; lists and None as JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            out[name] = text
    return out


def pipeline_key(params: Params, commit: str | None) -> str:
    """sha256 of (git commit, resolved params JSON): the same for every stage of one pipeline run
    (dvc repro gives them the same params.yaml), different after a commit or a parameter change."""
    blob = json.dumps({"commit": commit or "", "params": params.dump()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# the tracker


class MlflowTracker:
    """`Tracker` on one MLflow run (every call goes to that run id, whatever the fluent API's
    active run is)."""

    def __init__(
        self,
        mlflow_client: MlflowClient,
        run_id: str,
        *,
        stage: str,
        parent_run_id: str | None = None,
        experiment_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.client = mlflow_client
        self._run_id = run_id
        self.stage = stage
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id
        self.tags: dict[str, str] = dict(tags or {})  # what stage_run recorded (commit, data hash)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [
            Param(_key(k), _text(v, _MAX_PARAM_VALUE)) for k, v in flatten_params(params).items()
        ]
        for i in range(0, len(items), _BATCH_PARAMS):
            self.client.log_batch(self._run_id, params=items[i : i + _BATCH_PARAMS])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            number = _number(value)
            if number is not None:
                items.append(Metric(_key(key), number, now, int(step or 0)))
        for i in range(0, len(items), _BATCH_METRICS):
            self.client.log_batch(self._run_id, metrics=items[i : i + _BATCH_METRICS])

    def log_artifact(self, path: Path | str) -> None:
        self.client.log_artifact(self._run_id, str(path))

    def log_artifacts(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self._run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(_key(k), _text(v, _MAX_TAG_VALUE)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH_PARAMS):
            self.client.log_batch(self._run_id, tags=items[i : i + _BATCH_PARAMS])


def _key(key: Any) -> str:
    return _BAD_KEY_CHARS.sub("_", str(key))


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not math.isinf(number) else None


# ---------------------------------------------------------------------------------------------
# parent and stage runs


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created (or restored from the trash) when needed."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is None:
        try:
            return mlflow_client.create_experiment(
                name, artifact_location=default_artifact_location()
            )
        except MlflowException as exc:  # created by a concurrent process in between
            exp = mlflow_client.get_experiment_by_name(name)
            if exp is None:
                raise exc from None
    if exp.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def find_parent_run(mlflow_client: MlflowClient, experiment: str, key: str) -> str | None:
    """The newest not-FINISHED parent run of the experiment with this pipeline key."""
    runs = mlflow_client.search_runs(
        [experiment],
        filter_string=(
            f"tags.`{TAG_KIND}` = 'pipeline' and tags.`{TAG_PIPELINE_KEY}` = '{key}' "
            "and attributes.status != 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _parent_run(
    mlflow_client: MlflowClient, experiment: str, key: str, tags: Mapping[str, str]
) -> tuple[str, str]:
    """(parent run id, its experiment id): explicit, found again, or new."""
    explicit = os.environ.get(PIPELINE_RUN_ENV, "").strip()
    if explicit:
        try:
            run = mlflow_client.get_run(explicit)
        except MlflowException:
            raise ConfigError(f"{PIPELINE_RUN_ENV}={explicit}: no such MLflow run") from None
        _reopen(mlflow_client, run)
        return run.info.run_id, run.info.experiment_id
    found = find_parent_run(mlflow_client, experiment, key)
    if found:
        _reopen(mlflow_client, mlflow_client.get_run(found))
        return found, experiment
    run = mlflow_client.create_run(
        experiment,
        run_name=f"pipeline-{key[:8]}",
        tags={**tags, TAG_KIND: "pipeline", TAG_PIPELINE_KEY: key},
    )
    return run.info.run_id, experiment


def _reopen(mlflow_client: MlflowClient, run: Any) -> None:
    if run.info.status != "RUNNING":
        mlflow_client.update_run(run.info.run_id, status="RUNNING")


def base_tags(commit: str | None, dataset_dir: Path | None) -> dict[str, str]:
    tags = {TAG_VERSION: __version__}
    with suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    if commit:
        tags[TAG_COMMIT] = commit
        tags["mlflow.source.git.commit"] = commit
        dirty = git_dirty()
        if dirty is not None:
            tags[TAG_DIRTY] = str(dirty).lower()
    if dataset_dir is not None:
        tags[TAG_DATA_PATH] = str(dataset_dir)
        found = data_hash(dataset_dir)
        if found:
            tags[TAG_DATA_HASH], tags[TAG_DATA_HASH_SOURCE] = found
    return tags


@contextmanager
def stage_run(
    stage: str, params: Params, dataset_dir: Path | str | None = None
) -> Iterator[Tracker]:
    """A nested MLflow run for `stage` under the pipeline's parent run (see the module docstring),
    recording the resolved config (params `section.key` + config.json), git commit, data hash and
    medssl version. The run is also MLflow's active run inside the block; system metrics are off.

    On an exception the stage run and the parent end FAILED (KILLED on KeyboardInterrupt) and the
    exception propagates; the parent ends FINISHED when stage "register" ends without one."""
    if not tracking_enabled():
        yield NullTracker()
        return
    mc = client()
    exp = experiment_id(mc, params.register_.experiment)
    commit = git_commit()
    dataset = Path(dataset_dir) if dataset_dir is not None else None
    tags = base_tags(commit, dataset)
    key = pipeline_key(params, commit)
    data_tags = (TAG_DATA_PATH, TAG_DATA_HASH, TAG_DATA_HASH_SOURCE)
    parent, exp = _parent_run(mc, exp, key, {k: v for k, v in tags.items() if k not in data_tags})
    run = mc.create_run(
        exp,
        run_name=stage,
        tags={
            **tags,
            TAG_KIND: "stage",
            TAG_STAGE: stage,
            TAG_PIPELINE_KEY: key,
            "mlflow.parentRunId": parent,
        },
    )
    run_id = run.info.run_id
    tracker = MlflowTracker(
        mc, run_id, stage=stage, parent_run_id=parent, experiment_id=exp, tags=tags
    )
    status = RunStatus.to_string(RunStatus.FINISHED)
    active = None
    try:
        tracker.log_params(params.dump())
        with tempfile.TemporaryDirectory(prefix="medssl-config-") as tmp:
            config = Path(tmp) / "config.json"
            config.write_text(json.dumps(params.dump(), indent=2, sort_keys=True) + "\n")
            tracker.log_artifact(config)
        # Make it the fluent API's active run too (code in the stage that calls mlflow.log_*
        # lands here); nested=True keeps a caller's own active run (Ray Tune, notebooks) intact.
        try:
            active = mlflow.start_run(run_id=run_id, nested=True, log_system_metrics=False)
        except MlflowException:  # e.g. mlflow.set_experiment(<another>) earlier in the process
            active = None
        yield tracker
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        # the exception type only: a message may quote data (ids) that must not reach MLflow
        with suppress(Exception):
            tracker.set_tags({TAG_FAILURE: type(exc).__name__})
        raise
    finally:
        if status == "FINISHED":
            _end(mc, run_id, active, status)
            if stage == FINAL_STAGE:
                mc.set_terminated(parent, status)
        else:  # do not hide the stage's exception behind a tracking error
            with suppress(Exception):
                _end(mc, run_id, active, status)
            with suppress(Exception):
                mc.set_terminated(parent, status)


def tracked_stage(
    stage: str, params: Params, dataset_dir: Path | str | None, enabled: bool
) -> AbstractContextManager[Tracker]:
    """`stage_run(...)`, or a no-op tracker when `enabled` is False (`--no-track`)."""
    return stage_run(stage, params, dataset_dir) if enabled else nullcontext(NullTracker())


def _end(mc: MlflowClient, run_id: str, active: Any, status: str) -> None:
    current = mlflow.active_run()
    if active is not None and current is not None and current.info.run_id == run_id:
        mlflow.end_run(status)
    else:  # never started as active, or the block left another run on top of the stack
        mc.set_terminated(run_id, status)
