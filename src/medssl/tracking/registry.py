"""Model registry: log + register a model as `challenger`, the promotion gate to `champion`,
manual promotion, listing and comparing versions.

Every number a decision rests on lives in the version's tags, so a decision can be audited from
the registry alone:

    medssl.metric.<name>                 flat metrics (metrics.json names: test_f1_weighted …),
                                         medssl.metrics (the whole metrics.json, JSON)
    medssl.run_id / medssl.git.commit / medssl.data.hash / medssl.version
    medssl.model.sha256 / medssl.pipeline_run_id   what makes a retried register idempotent
    medssl.gate.decision                 promoted | refused | unchanged | manual
    medssl.gate.reason / .metric / .margin / .time / .same_data / .data_hash
    medssl.gate.challenger_<metric>      this version's number
    medssl.gate.champion_<metric>        the champion's number it was compared with ("none": no
                                         champion, or it could not be scored)
    medssl.gate.champion_source          rescored (the champion scored on this version's test
                                         split: the default) | recorded (its own metrics)
    medssl.gate.champion_recorded_<metric>   the champion's own recorded number
    medssl.gate.champion_version
    medssl.champion.since                when the version became champion
    medssl.champion.lost_at / .lost_to / .lost_reason   when and why it lost the alias
    medssl.champion.history              JSON list of won/lost events (newest last)

Aliases are read with `get_model_version_by_alias`: `search_model_versions` returns empty
`aliases` (upstream bug, mlflow/mlflow#16734).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from medssl import __version__
from medssl.errors import ConfigError, MedsslError
from medssl.tracking.base import Tracker
from medssl.tracking.runs import (
    TAG_COMMIT,
    TAG_DATA_HASH,
    TAG_DATA_HASH_SOURCE,
    client,
    git_commit,
    tracking_uri,
)

if TYPE_CHECKING:
    from medssl.models.pyfunc import InferenceSpec

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_METRIC = "test_f1_weighted"
KEY_METRICS = ("test_f1_weighted", "test_precision_weighted", "test_recall_weighted")

METRIC_TAG = "medssl.metric."
METRICS_JSON_TAG = "medssl.metrics"
RUN_TAG = "medssl.run_id"
MODEL_SHA_TAG = "medssl.model.sha256"
PIPELINE_RUN_TAG = "medssl.pipeline_run_id"
GATE = "medssl.gate."
CHAMPION_SINCE = "medssl.champion.since"
LOST = "medssl.champion.lost_"
HISTORY = "medssl.champion.history"
_TAG_LIMIT = 5000  # registry tag values (MLflow 3 allows more; older servers 5000)
# what the pyfunc imports (medssl itself travels as code): pinned to this environment's versions
_REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "cloudpickle")


# ---------------------------------------------------------------------------------------------
# decisions


@dataclass
class Decision:
    """The outcome of the gate (or of a manual promotion) for one version."""

    name: str
    version: str
    decision: str  # promoted | refused | unchanged | manual
    promoted: bool  # whether the version is champion after the decision
    metric: str
    margin: float | None
    challenger: float | None
    champion: float | None
    champion_version: str | None
    reason: str
    time: str
    # how the champion's number was obtained: "rescored" (its model scored on this version's
    # test split), "recorded" (its own metrics, on the data it was tested on) or "none"
    champion_source: str = "none"
    champion_recorded: float | None = None  # the champion's own recorded number
    data_hash: str | None = None  # the test data both numbers come from

    def describe(self) -> str:
        """One line for the terminal."""
        head = f"{self.name} v{self.version}"
        if self.decision == "manual":
            return f"{head}: promoted to {CHAMPION} by hand ({self.reason})"
        if self.decision == "unchanged":
            return f"{head}: already {CHAMPION}"
        verdict = f"promoted to {CHAMPION}" if self.promoted else f"stays {CHALLENGER}"
        return f"{head}: {verdict} — {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# logging and registering


def log_and_register(
    model_file: Path,
    spec: InferenceSpec,
    metrics: Mapping[str, Any],
    name: str,
    tracker: Tracker | None = None,
    *,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log the classifier in `model_file` (medssl's model.pt) as a self-contained MLflow pyfunc
    (medssl.models.pyfunc: encoded images in, per-class probability and 0/1 out, with the classes,
    thresholds and preprocessing of `spec` and the medssl code inside), register it under `name`,
    give the new version alias `challenger` and tag it with the metrics, git commit, data hash
    and run id. Returns the version number.

    The model is logged in `tracker`'s run when it has one (an MLflow stage run)."""
    mc = client()
    run_id = tracker.run_id if tracker is not None else None
    with _quiet("mlflow.pyfunc", "mlflow.models.model", "mlflow.utils.environment"):
        info = _log_model(Path(model_file), spec, run_id)
    meta = {**spec.meta, "classes": spec.classes, "image_size": spec.image_size}
    meta["in_channels"] = spec.channels
    version_tags = _version_tags(meta, metrics, run_id, tracker, tags)
    _ensure_registered_model(mc, name, meta)
    # client.create_model_version = mlflow.register_model without its stderr chatter; the
    # model_id links the version to the LoggedModel (MLflow 3), run_id to the stage run.
    mv = mc.create_model_version(
        name, source=info.model_uri, run_id=run_id, tags=version_tags, model_id=info.model_id
    )
    mc.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version)


def _log_model(model_file: Path, spec: InferenceSpec, run_id: str | None) -> Any:
    import medssl
    from medssl.models import pyfunc

    with tempfile.TemporaryDirectory(prefix="medssl-pyfunc-") as tmp:
        code = Path(tmp) / "medssl"  # the package without caches, as a code dependency
        shutil.copytree(
            Path(medssl.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__")
        )
        spec_file = spec.write(Path(tmp) / "inference.json")
        artifacts = {pyfunc.MODEL_ARTIFACT: str(model_file), pyfunc.SPEC_ARTIFACT: str(spec_file)}
        active = mlflow.active_run()
        reuse = run_id is None or (active is not None and active.info.run_id == run_id)
        with (
            contextlib.nullcontext() if reuse else mlflow.start_run(run_id=run_id, nested=True),
            _env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"),  # no bar for the example check
        ):
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=pyfunc.ClassifierModel(),
                artifacts=artifacts,
                code_paths=[str(code)],
                signature=pyfunc.signature(spec),
                input_example=pyfunc.example_input(spec),
                # explicit: inferring them starts a subprocess that imports the model (~8 s)
                pip_requirements=_requirements(),
                metadata={"medssl": _plain(asdict(spec)), "medssl_version": __version__},
            )


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Silence the warnings about choices made on purpose here: the pickle format (a model that
    can be fine-tuned after loading) and pip's version (pip is not in a uv environment)."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _requirements() -> list[str]:
    reqs = []
    for package in _REQUIREMENTS:
        try:
            version = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
        reqs.append(f"{package}=={version.split('+')[0]}")  # drop local builds (+cpu, +cu132)
    return reqs


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def _version_tags(
    meta: Mapping[str, Any],
    metrics: Mapping[str, Any],
    run_id: str | None,
    tracker: Tracker | None,
    extra: Mapping[str, str] | None,
) -> dict[str, str]:
    tags: dict[str, str] = {"medssl.version": __version__}
    for key, value in meta.items():
        if isinstance(value, str | int | float | bool) and len(str(value)) <= 250:
            tags[f"medssl.model.{key}"] = str(value)
    if meta.get("classes"):
        tags["medssl.model.classes"] = json.dumps(list(meta["classes"]))[:_TAG_LIMIT]
    for key, value in _flat_metrics(metrics).items():
        tags[f"{METRIC_TAG}{key}"] = repr(value)
    blob = json.dumps(_plain(dict(metrics)), separators=(",", ":"))
    if len(blob) > _TAG_LIMIT:  # keep the flat numbers, drop the per-class block
        blob = json.dumps(_flat_metrics(metrics), separators=(",", ":"))
    if len(blob) <= _TAG_LIMIT:
        tags[METRICS_JSON_TAG] = blob
    if run_id:
        tags[RUN_TAG] = run_id
    # what the stage run recorded (commit, data hash), then the caller's own tags
    run_tags = getattr(tracker, "tags", None) or {}
    for key in (TAG_COMMIT, TAG_DATA_HASH, TAG_DATA_HASH_SOURCE):
        if run_tags.get(key):
            tags[key] = str(run_tags[key])
    if TAG_COMMIT not in tags:
        commit = git_commit()
        if commit:
            tags[TAG_COMMIT] = commit
    tags.update({k: str(v) for k, v in (extra or {}).items() if v is not None})
    return tags


def _ensure_registered_model(mc: MlflowClient, name: str, meta: Mapping[str, Any]) -> None:
    try:
        mc.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    classes = ", ".join(map(str, meta.get("classes") or []))
    description = (
        f"medssl {meta.get('task', '')} classifier ({classes}). Aliases: `{CHAMPION}` is moved "
        f"only by the promotion gate or a logged manual promotion; `{CHALLENGER}` is the newest "
        "version that has not been promoted."
    )
    try:
        mc.create_registered_model(name, description=description)
    except MlflowException as exc:  # registered by a concurrent process in between
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


# ---------------------------------------------------------------------------------------------
# reading versions and aliases


def by_alias(mc: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None when no version holds it."""
    try:
        return mc.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # sqlite and the REST server answer INVALID_PARAMETER_VALUE "alias … not found"
        if exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            _registered_model(mc, name)  # a missing model is a user error, not "no alias"
            return None
        raise


def _registered_model(mc: MlflowClient, name: str) -> Any:
    try:
        return mc.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise MedsslError(f"no registered model {name!r} in {tracking_uri()}") from None
        raise


def resolve_version(mc: MlflowClient, name: str, ref: str | int) -> ModelVersion:
    """A version by number ("3") or alias ("champion", "challenger", "@champion")."""
    text = str(ref).strip().lstrip("@").lstrip("v") if str(ref).strip() else ""
    if text.isdigit():
        try:
            return mc.get_model_version(name, text)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                _registered_model(mc, name)
                raise MedsslError(f"{name}: no version {text}") from None
            raise
    mv = by_alias(mc, name, str(ref).strip().lstrip("@"))
    if mv is None:
        raise MedsslError(f"{name}: no version has alias {ref!r}")
    return mv


def _metric(mv: ModelVersion, metric: str) -> float | None:
    tags = mv.tags or {}
    raw = tags.get(f"{METRIC_TAG}{metric}")
    if raw is None and metric.startswith("test_"):  # versions registered before the test_ names
        raw = tags.get(f"{METRIC_TAG}{metric.removeprefix('test_')}")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# the gate and manual promotion


@dataclass
class ChampionScore:
    """The champion's number for the gate: `value` None when it could not be obtained (`note`
    says why); `source` "rescored" or "recorded"."""

    value: float | None
    source: str
    note: str = ""


ChampionScorer = Callable[[ModelVersion], ChampionScore]


def gate(
    name: str,
    version: str | int,
    metric: str = DEFAULT_METRIC,
    margin: float = 0.0,
    *,
    scorer: ChampionScorer | None = None,
) -> Decision:
    """Promote `version` to champion iff there is no champion yet, or its `metric` beats the
    champion's by more than `margin` (challenger > champion + margin).

    The champion's number comes from `scorer` (the fair comparison: the champion's model scored
    on this version's test split, same metric, same threshold procedure), else from its recorded
    metrics, which only count when both were tested on the same data (data hash). A champion that
    cannot be scored blocks the promotion: a worse challenger is never promoted. The decision and
    both numbers go to the version's tags; on promotion the previous champion is tagged with when
    and why it lost the alias."""
    mc = client()
    mv = resolve_version(mc, name, version)
    value = _metric(mv, metric)
    if value is None:
        raise ConfigError(
            f"{name} v{mv.version} has no test metric {metric!r} (register.metric); "
            f"tags: {', '.join(k[len(METRIC_TAG) :] for k in mv.tags if k.startswith(METRIC_TAG))}"
        )
    champ = by_alias(mc, name, CHAMPION)
    if champ is not None and str(champ.version) == str(mv.version):
        return _unchanged(name, mv, metric, margin, value)
    same_data = _same_data(mv, champ)
    recorded = _metric(champ, metric) if champ is not None else None
    if champ is None:
        score = ChampionScore(None, "none")
        promoted, reason = True, f"no {CHAMPION} yet ({metric} {value:.4f})"
    else:
        score = scorer(champ) if scorer is not None else ChampionScore(recorded, "recorded")
        promoted, reason = _verdict(champ, metric, margin, value, score, recorded, same_data)
    decision = Decision(
        name=name,
        version=str(mv.version),
        decision="promoted" if promoted else "refused",
        promoted=promoted,
        metric=metric,
        margin=float(margin),
        challenger=value,
        champion=score.value,
        champion_version=str(champ.version) if champ is not None else None,
        reason=reason,
        time=_now(),
        champion_source=score.source,
        champion_recorded=recorded,
        data_hash=(mv.tags or {}).get(TAG_DATA_HASH),
    )
    if promoted:
        mc.set_registered_model_alias(name, CHAMPION, mv.version)
    _write_decision(mc, decision, same_data)
    if promoted:
        _after_promotion(mc, decision, champ)
    return decision


def _verdict(
    champ: ModelVersion,
    metric: str,
    margin: float,
    value: float,
    score: ChampionScore,
    recorded: float | None,
    same_data: bool | None,
) -> tuple[bool, str]:
    """(promoted, reason) against an existing champion."""
    who = f"{CHAMPION} v{champ.version}"
    by_hand = "promote by hand (medssl models promote) if intended"
    if score.value is None:
        why = f": {score.note}" if score.note else ""
        if score.source == "recorded":
            why = f": it has no {metric}"
        return False, f"{who} has no {metric} to compare with{why}; {by_hand}"
    if score.source == "recorded" and same_data is False:
        return False, (
            f"{who}'s {metric} {score.value:.4f} was measured on other test data (data hash "
            f"differs): not comparable; score it on this data (register.rescore_champion) or "
            f"{by_hand}"
        )
    promoted = value > score.value + margin
    sign = ">" if promoted else "<="
    where = "on this version's test split" if score.source == "rescored" else "recorded"
    reason = f"{metric} {value:.4f} {sign} {who} {score.value:.4f} ({where}) + margin {margin:g}"
    if score.source == "rescored" and recorded is not None:
        reason += f"; its own recorded {metric}: {recorded:.4f}"
    return promoted, reason


def recorded_decision(name: str, version: str | int) -> Decision | None:
    """The gate decision already written on a version's tags (None if it has none): what a
    retried register returns instead of gating the same version twice."""
    mc = client()
    mv = resolve_version(mc, name, version)
    tags = mv.tags or {}
    decision = tags.get(f"{GATE}decision")
    if not decision:
        return None
    metric = tags.get(f"{GATE}metric", DEFAULT_METRIC)
    champ = by_alias(mc, name, CHAMPION)

    def number(key: str) -> float | None:
        try:
            return float(tags[key])
        except (KeyError, ValueError):
            return None

    return Decision(
        name=name,
        version=str(mv.version),
        decision=decision,
        promoted=champ is not None and str(champ.version) == str(mv.version),
        metric=metric,
        margin=number(f"{GATE}margin"),
        challenger=number(f"{GATE}challenger_{metric}"),
        champion=number(f"{GATE}champion_{metric}"),
        champion_version=None
        if tags.get(f"{GATE}champion_version") in (None, "none")
        else tags[f"{GATE}champion_version"],
        reason=tags.get(f"{GATE}reason", ""),
        time=tags.get(f"{GATE}time", ""),
        champion_source=tags.get(f"{GATE}champion_source", "recorded"),
        champion_recorded=number(f"{GATE}champion_recorded_{metric}"),
        data_hash=tags.get(f"{GATE}data_hash"),
    )


def find_version(name: str, **tags: str) -> str | None:
    """The newest version of `name` whose tags hold every `tags` value (None when none does or
    the model does not exist): how a retried register finds the version it already created."""
    mc = client()
    try:
        versions = _all_versions(mc, name)
    except MedsslError:  # no such registered model yet
        return None
    for mv in versions:
        if all((mv.tags or {}).get(k) == v for k, v in tags.items()):
            return str(mv.version)
    return None


def load_version(name: str, version: str | int) -> tuple[torch.nn.Module, InferenceSpec | None]:
    """A registered version's classifier (torch module, CPU, eval mode) and its inference spec:
    the pair inside the pyfunc, or (the pickled module, None) for versions logged with
    mlflow.pytorch before it (their spec is in their tags)."""
    client()
    uri = f"models:/{name}/{version}"
    with _quiet("mlflow.pytorch", "mlflow.pyfunc", "mlflow.utils.requirements_utils"):
        if "pytorch" in mlflow.models.get_model_info(uri).flavors:
            return mlflow.pytorch.load_model(uri, map_location="cpu").eval(), None
        loaded = mlflow.pyfunc.load_model(uri).unwrap_python_model()
        return loaded.model.cpu().eval(), loaded.spec


def load_version_model(name: str, version: str | int) -> torch.nn.Module:
    """A registered version's classifier (see load_version)."""
    return load_version(name, version)[0]


def promote(name: str, version: str | int, reason: str, *, metric: str | None = None) -> Decision:
    """Make `version` champion by hand. Logged as such: medssl.gate.decision=manual, the reason,
    who, and both numbers on `metric` (default: the metric the gate used for that version)."""
    if not reason or not reason.strip():
        raise ConfigError("a manual promotion needs a reason (--reason)")
    mc = client(read_only=True)
    mv = resolve_version(mc, name, version)
    metric = metric or (mv.tags or {}).get(f"{GATE}metric") or DEFAULT_METRIC
    champ = by_alias(mc, name, CHAMPION)
    value = _metric(mv, metric)
    if champ is not None and str(champ.version) == str(mv.version):
        return _unchanged(name, mv, metric, None, value)
    decision = Decision(
        name=name,
        version=str(mv.version),
        decision="manual",
        promoted=True,
        metric=metric,
        margin=None,
        challenger=value,
        champion=_metric(champ, metric) if champ is not None else None,
        champion_version=str(champ.version) if champ is not None else None,
        reason=reason.strip(),
        time=_now(),
    )
    mc.set_registered_model_alias(name, CHAMPION, mv.version)
    _write_decision(mc, decision, _same_data(mv, champ))
    _after_promotion(mc, decision, champ)
    return decision


def _unchanged(
    name: str, mv: ModelVersion, metric: str, margin: float | None, value: float | None
) -> Decision:
    """The decision for a version that already holds `champion` (nothing is written)."""
    version = str(mv.version)
    reason = f"v{version} already holds {CHAMPION}"
    return Decision(
        name, version, "unchanged", True, metric, margin, value, value, version, reason, _now()
    )


def _same_data(mv: ModelVersion, champ: ModelVersion | None) -> bool | None:
    if champ is None:
        return None
    a, b = (mv.tags or {}).get(TAG_DATA_HASH), (champ.tags or {}).get(TAG_DATA_HASH)
    return None if not a or not b else a == b


def _write_decision(mc: MlflowClient, d: Decision, same_data: bool | None) -> None:
    tags = {
        f"{GATE}decision": d.decision,
        f"{GATE}reason": d.reason[:_TAG_LIMIT],
        f"{GATE}metric": d.metric,
        f"{GATE}time": d.time,
        f"{GATE}challenger_{d.metric}": _fmt_raw(d.challenger),
        f"{GATE}champion_{d.metric}": _fmt_raw(d.champion),
        f"{GATE}champion_source": d.champion_source,
        f"{GATE}champion_recorded_{d.metric}": _fmt_raw(d.champion_recorded),
        f"{GATE}champion_version": d.champion_version or "none",
        f"{GATE}same_data": "unknown" if same_data is None else str(same_data).lower(),
        f"{GATE}data_hash": d.data_hash or "unknown",
    }
    if d.margin is not None:
        tags[f"{GATE}margin"] = repr(float(d.margin))
    if d.decision == "manual":
        with contextlib.suppress(Exception):  # no user name in some containers
            tags[f"{GATE}user"] = getpass.getuser()
    if d.promoted:
        tags[CHAMPION_SINCE] = d.time
    for key, value in tags.items():
        mc.set_model_version_tag(d.name, d.version, key, value)


def _fmt_raw(value: float | None) -> str:
    return "none" if value is None else repr(float(value))


def _after_promotion(mc: MlflowClient, d: Decision, previous: ModelVersion | None) -> None:
    """Tag the previous champion with when and why it lost the alias (its own tags, the record of
    how it won, stay), append both events to the versions' medssl.champion.history, and take the
    `challenger` alias off the new champion."""
    why = "manual promotion" if d.decision == "manual" else "gate"
    if previous is not None and str(previous.version) != d.version:
        lost = {"at": d.time, "to": d.version, "reason": f"{why}: {d.reason}"[:_TAG_LIMIT]}
        for key, value in lost.items():
            mc.set_model_version_tag(d.name, previous.version, f"{LOST}{key}", value)
        _append_history(mc, d.name, str(previous.version), {"event": "lost", **lost}, None)
    # a version that wins the alias back: its last loss is in the history, not current any more
    current = mc.get_model_version(d.name, d.version).tags or {}
    for key in ("at", "to", "reason"):
        if f"{LOST}{key}" in current:
            mc.delete_model_version_tag(d.name, d.version, f"{LOST}{key}")
    won = {"event": "won", "at": d.time, "from": d.champion_version, "reason": f"{why}: {d.reason}"}
    _append_history(mc, d.name, d.version, won, current)
    challenger = by_alias(mc, d.name, CHALLENGER)
    if challenger is not None and str(challenger.version) == d.version:
        mc.delete_registered_model_alias(d.name, CHALLENGER)


def _append_history(
    mc: MlflowClient,
    name: str,
    version: str,
    event: dict[str, Any],
    tags: Mapping[str, str] | None,
) -> None:
    """Append `event` to the version's history; `tags`: its current tags, when already read."""
    if tags is None:
        tags = mc.get_model_version(name, version).tags or {}
    try:
        history = json.loads(tags.get(HISTORY, "[]"))
    except json.JSONDecodeError:
        history = []
    history.append({k: v for k, v in event.items() if v is not None})
    blob = json.dumps(history, separators=(",", ":"))
    while len(blob) > _TAG_LIMIT and len(history) > 1:  # keep the newest events
        history.pop(0)
        blob = json.dumps(history, separators=(",", ":"))
    mc.set_model_version_tag(name, version, HISTORY, blob[:_TAG_LIMIT])


# ---------------------------------------------------------------------------------------------
# listing and comparing


def _aliases(mc: MlflowClient, name: str) -> dict[str, list[str]]:
    """version → aliases, for champion and challenger (read one by one, see the module doc)."""
    out: dict[str, list[str]] = {}
    for alias in (CHAMPION, CHALLENGER):
        mv = by_alias(mc, name, alias)
        if mv is not None:
            out.setdefault(str(mv.version), []).append(alias)
    return out


def _all_versions(mc: MlflowClient, name: str) -> list[ModelVersion]:
    _registered_model(mc, name)
    escaped = name.replace("'", "\\'")
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = mc.search_model_versions(f"name = '{escaped}'", max_results=1000, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            break
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def list_versions(name: str) -> pd.DataFrame:
    """One row per version, newest first: version, aliases, created (UTC), run_id, decision,
    method, backbone, the key metrics, data hash and commit."""
    mc = client(read_only=True)
    aliases = _aliases(mc, name)
    rows = []
    for mv in _all_versions(mc, name):
        tags = mv.tags or {}
        row = {
            "version": int(mv.version),
            "aliases": ",".join(aliases.get(str(mv.version), [])),
            "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
            "run_id": mv.run_id or tags.get(RUN_TAG) or "",
            "decision": tags.get(f"{GATE}decision", ""),
            "method": tags.get("medssl.model.method", ""),
            "backbone": tags.get("medssl.model.backbone", ""),
        }
        for metric in KEY_METRICS:
            value = _metric(mv, metric)
            row[metric] = np.nan if value is None else value
        row["data_hash"] = tags.get(TAG_DATA_HASH, "")
        row["commit"] = tags.get(TAG_COMMIT, "")
        rows.append(row)
    columns = [
        "version", "aliases", "created", "run_id", "decision", "method", "backbone",
        *KEY_METRICS, "data_hash", "commit",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _version_info(mc: MlflowClient, mv: ModelVersion, aliases: dict) -> dict[str, Any]:
    tags = mv.tags or {}
    try:
        metrics = json.loads(tags.get(METRICS_JSON_TAG) or "{}")
    except json.JSONDecodeError:
        metrics = {}
    flat = {
        k[len(METRIC_TAG) :]: value
        for k in tags
        if k.startswith(METRIC_TAG) and (value := _metric(mv, k[len(METRIC_TAG) :])) is not None
    }
    run_id = mv.run_id or tags.get(RUN_TAG)
    params: dict[str, str] = {}
    if run_id:
        try:
            params = dict(mc.get_run(run_id).data.params)
        except MlflowException:
            params = {}
    return {
        "version": str(mv.version),
        "aliases": aliases.get(str(mv.version), []),
        "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC").isoformat(),
        "run_id": run_id,
        "commit": tags.get(TAG_COMMIT),
        "data_hash": tags.get(TAG_DATA_HASH),
        "decision": tags.get(f"{GATE}decision"),
        "method": tags.get("medssl.model.method"),
        "backbone": tags.get("medssl.model.backbone"),
        "metrics": flat,
        "per_class": metrics.get("per_class") or {},
        "params": params,
    }


def compare(name: str, a: str | int, b: str | int) -> dict[str, Any]:
    """Two versions (numbers or aliases) side by side: flat metrics, metrics per class, config
    differences (the two runs' params), data hash and commit."""
    mc = client(read_only=True)
    aliases = _aliases(mc, name)
    va, vb = (_version_info(mc, resolve_version(mc, name, r), aliases) for r in (a, b))
    metrics = {
        k: (va["metrics"].get(k), vb["metrics"].get(k))
        for k in dict.fromkeys([*va["metrics"], *vb["metrics"]])
    }
    per_class: dict[str, dict[str, tuple[Any, Any]]] = {}
    for cls in dict.fromkeys([*va["per_class"], *vb["per_class"]]):
        ca, cb = va["per_class"].get(cls) or {}, vb["per_class"].get(cls) or {}
        per_class[cls] = {m: (ca.get(m), cb.get(m)) for m in dict.fromkeys([*ca, *cb])}
    pa, pb = va.pop("params"), vb.pop("params")
    config_diff = {
        k: (pa.get(k), pb.get(k)) for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)
    }
    return {
        "name": name,
        "a": va,
        "b": vb,
        "metrics": metrics,
        "per_class": per_class,
        "config_diff": config_diff,
        "config_compared": bool(pa and pb),
        "same_data": va["data_hash"] == vb["data_hash"] if va["data_hash"] else None,
        "same_commit": va["commit"] == vb["commit"] if va["commit"] else None,
    }


# ---------------------------------------------------------------------------------------------
# terminal output


def format_versions(name: str, versions: pd.DataFrame | list) -> str:
    """`medssl models list`: one line per version."""
    table = versions if isinstance(versions, pd.DataFrame) else pd.DataFrame(versions)
    if table.empty:
        return f"{name}: no versions"
    lines = [f"{name} ({tracking_uri()})"]
    header = (
        f"{'ver':>4}  {'aliases':<20} {'created (UTC)':<16}  {'f1_w':>6} {'prec_w':>6} "
        f"{'rec_w':>6}  {'gate':<9} {'method':<12} {'data':<8} {'commit':<8} run"
    )
    lines.append(header)
    for row in table.itertuples(index=False):
        lines.append(
            f"{row.version:>4}  {row.aliases or '-':<20} "
            f"{row.created.strftime('%Y-%m-%d %H:%M'):<16}  "
            f"{_cell(row.test_f1_weighted)} {_cell(row.test_precision_weighted)} "
            f"{_cell(row.test_recall_weighted)}  {row.decision or '-':<9} "
            f"{row.method or '-':<12} "
            f"{(row.data_hash or '-')[:8]:<8} {(row.commit or '-')[:8]:<8} {row.run_id or '-'}"
        )
    return "\n".join(lines)


def _cell(value: Any, width: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{float(value):>{width}.4f}"


def format_compare(result: Mapping[str, Any]) -> str:
    """`medssl models compare`: metrics, per-class metrics, config differences, data, commit."""
    a, b = result["a"], result["b"]

    def label(v: Mapping[str, Any]) -> str:
        return f"v{v['version']}" + (f" ({','.join(v['aliases'])})" if v["aliases"] else "")

    la, lb = label(a), label(b)
    w = max(len(la), len(lb), 10)
    lines = [f"{result['name']}: {la} vs {lb}", ""]
    lines.append(f"{'metric':<28} {la:>{w}} {lb:>{w}} {'diff':>8}")
    for key, (x, y) in result["metrics"].items():
        lines.append(f"{key:<28} {_num(x, w)} {_num(y, w)} {_diff(x, y)}")
    if result["per_class"]:
        ta, tb = f"v{a['version']}", f"v{b['version']}"
        head = f"{'class':<16}"
        for short in ("f1", "prec", "rec"):
            head += f" {short + ' ' + ta:>10} {short + ' ' + tb:>10} {'diff':>8}"
        lines += ["", head + f" {'support':>8}"]
        for cls, values in result["per_class"].items():
            row = f"{cls:<16}"
            for key in ("f1", "precision", "recall"):
                x, y = values.get(key, (None, None))
                row += f" {_num(x, 10)} {_num(y, 10)} {_diff(x, y)}"
            support = values.get("support", (None, None))
            shown = support[1] if support[1] is not None else support[0]
            row += f" {_num(shown, 8)}"
            lines.append(row)
    lines.append("")
    if not result["config_compared"]:
        lines.append("config: not compared (a version has no run params)")
    elif result["config_diff"]:
        lines.append("config differences:")
        for key, (x, y) in result["config_diff"].items():
            lines.append(f"  {key}: {x} → {y}")
    else:
        lines.append("config: identical")
    for what, key in (("data hash", "data_hash"), ("commit", "commit")):
        same = "same" if a[key] == b[key] else "different"
        lines.append(f"{what}: {a[key] or '-'} vs {b[key] or '-'} ({same})")
    lines.append(f"runs: {a['run_id'] or '-'} vs {b['run_id'] or '-'}")
    return "\n".join(lines)


def _num(value: Any, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and value > 1):
        return f"{int(value):>{width}d}"
    return f"{float(value):>{width}.4f}"


def _diff(x: Any, y: Any) -> str:
    if x is None or y is None:
        return f"{'':>8}"
    return f"{float(y) - float(x):>+8.4f}"
