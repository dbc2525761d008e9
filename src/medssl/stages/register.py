"""Register stage: log the trained model to MLflow, register it as `challenger` and run the
promotion gate against `champion` on the test metric `register.metric` (from the evaluate stage's
metrics.json, which must be the model's own) with `register.margin`. By default the champion is
scored on the challenger's test split first (the fair comparison). Decision and both numbers go to
the version's tags.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medssl.config import EvaluateConfig, RegisterConfig
from medssl.data.contract import PREDICTIONS_FILE, Dataset
from medssl.engine.context import resolve_device
from medssl.errors import ConfigError, DataContractError, MedsslError, one_line
from medssl.fileio import atomic_write_text, sha256_file
from medssl.models.inference import score_dataset
from medssl.models.pyfunc import InferenceSpec
from medssl.stages.evaluate import (
    INPUTS_KEY,
    METRICS_FILE,
    default_eval_dir,
    flat_metrics,
    predictions_splits,
)
from medssl.stages.evaluate import score as score_predictions
from medssl.stages.train import MODEL_FILE, read_summary
from medssl.tracking.base import NullTracker, Tracker

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from medssl.tracking.registry import ChampionScorer, Decision

DEFAULT_MODEL_NAME = "abdominal-organs"
NO_BOOTSTRAP = EvaluateConfig(bootstrap=0)
_TRAIN_TAGS = ("method", "backbone", "init", "label_fraction", "best_epoch", "epochs", "steps")


@dataclass
class RegisterResult:
    name: str
    version: str
    decision: Decision
    model_uri: str
    run_id: str | None

    @property
    def promoted(self) -> bool:
        return self.decision.promoted

    @property
    def challenger(self) -> float | None:
        return self.decision.challenger

    @property
    def champion(self) -> float | None:
        return self.decision.champion

    def describe(self) -> str:
        """One line for the terminal."""
        return self.decision.describe()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            **{f"gate_{k}": v for k, v in self.decision.to_dict().items()},
        }


# register.metric's default, and what a detector is gated on instead (paper 003 §IV: COCO mAP)
DETECTION_DEFAULT_FROM = "test_f1_weighted"
DETECTION_METRIC = "test_map"


def register(
    model_dir: Path,
    eval_dir: Path | None,
    dataset_dir: Path | None,
    cfg: RegisterConfig,
    *,
    tracker: Tracker | None = None,
    record: Path | None = None,
) -> RegisterResult:
    """Log model_dir/model.pt with its signature and an input example, register it under
    `cfg.model_name` (default abdominal-organs) as `challenger`, and gate it against `champion`.

    `eval_dir` (default MODEL_DIR/eval) must hold this model's own metrics.json (checked by the
    sha256 of its predictions and model.pt); `dataset_dir` (default: the dataset train.json
    records) is the test data the champion is scored on (register.rescore_champion). Within one
    pipeline run (the tracker's parent run) the same model.pt is registered once: a retried
    register returns the version and decision it already made. `record`: a JSON file to write
    the version and the gate decision to (a DVC output)."""
    from medssl.models import load_model
    from medssl.tracking.registry import (
        MODEL_SHA_TAG,
        PIPELINE_RUN_TAG,
        find_version,
        gate,
        log_and_register,
        recorded_decision,
    )
    from medssl.tracking.runs import TAG_DATA_HASH, TAG_DATA_HASH_SOURCE, data_hash

    tracker = tracker if tracker is not None else NullTracker()
    model_dir = Path(model_dir)
    eval_dir, dataset_dir, metrics, metric, model_sha = check_inputs(
        model_dir, eval_dir, dataset_dir, cfg
    )
    metrics_path = eval_dir / METRICS_FILE
    _, meta = load_model(model_dir / MODEL_FILE)
    spec = inference_spec(meta, metrics)
    name = cfg.model_name or DEFAULT_MODEL_NAME

    extra: dict[str, str] = {"medssl.model.path": str(model_dir / MODEL_FILE)}
    extra.update(_train_tags(model_dir))
    if dataset_dir is not None and TAG_DATA_HASH not in (getattr(tracker, "tags", {}) or {}):
        found = data_hash(dataset_dir)
        if found:
            extra[TAG_DATA_HASH], extra[TAG_DATA_HASH_SOURCE] = found
    extra[MODEL_SHA_TAG] = model_sha
    pipeline_run = getattr(tracker, "parent_run_id", None)
    version = None
    if pipeline_run:
        extra[PIPELINE_RUN_TAG] = pipeline_run
        version = find_version(name, **{MODEL_SHA_TAG: model_sha, PIPELINE_RUN_TAG: pipeline_run})
    decision = recorded_decision(name, version) if version is not None else None
    if version is None:
        version = log_and_register(model_dir / MODEL_FILE, spec, metrics, name, tracker, tags=extra)
    if decision is None:
        # a detector champion is compared on its recorded mAP (rescoring covers classifiers)
        rescore = cfg.rescore_champion and meta.get("task") != "detection"
        scorer = champion_scorer(name, dataset_dir, metric) if rescore else None
        decision = gate(name, version, metric, cfg.margin, scorer=scorer)

    tracker.log_artifact(metrics_path)
    tracker.set_tags(
        {
            "medssl.registered_model": name,
            "medssl.registered_version": version,
            "medssl.gate.decision": decision.decision,
            "medssl.gate.reason": decision.reason,
            "medssl.gate.champion_version": decision.champion_version or "none",
            "medssl.gate.champion_source": decision.champion_source,
        }
    )
    numbers = {"gate_challenger": decision.challenger, "gate_margin": cfg.margin}
    if decision.champion is not None:
        numbers["gate_champion"] = decision.champion
    tracker.log_metrics(flat_metrics(metrics) | numbers)
    result = RegisterResult(
        name=name,
        version=version,
        decision=decision,
        model_uri=f"models:/{name}/{version}",
        run_id=tracker.run_id,
    )
    if record is not None:  # a DVC output: never left half-written
        atomic_write_text(record, json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return result


def check_inputs(
    model_dir: Path, eval_dir: Path | None, dataset_dir: Path | None, cfg: RegisterConfig
) -> tuple[Path, Path | None, dict[str, Any], str, str]:
    """What register reads, checked before anything is logged: (eval dir, dataset dir, the
    metrics, the gate's metric name, model.pt's sha256). One-line errors for a missing or
    foreign metrics.json and an unknown register.metric."""
    model_dir = Path(model_dir)
    eval_dir = Path(eval_dir) if eval_dir is not None else default_eval_dir(model_dir)
    summary = read_summary(model_dir)
    if summary.get("cv_folds"):
        raise ConfigError(
            f"{model_dir}: a cross-validation round (fold {summary.get('cv_fold')} of "
            f"{summary['cv_folds']}) is scored on one fold and trained on the dataset's test "
            "rows, so it cannot be compared with a champion: train on the dataset's splits "
            "(train.cv_folds=0) to register"
        )
    if dataset_dir is None:
        trained_on = summary.get("dataset")
        dataset_dir = Path(trained_on) if trained_on else None
    metrics_path = eval_dir / METRICS_FILE
    metrics = _read_metrics(metrics_path)
    wanted = cfg.metric
    if wanted == DETECTION_DEFAULT_FROM and DETECTION_METRIC in metrics:
        wanted = DETECTION_METRIC  # a detector's evaluation has no F1: paper 003's mAP
    metric = _metric_key(metrics, wanted, metrics_path)
    model_sha = _check_own(metrics, model_dir, eval_dir)
    return eval_dir, dataset_dir, metrics, metric, model_sha


def champion_scorer(name: str, dataset_dir: Path | None, metric: str) -> ChampionScorer:
    """The fair comparison: the champion's registered model scored on `dataset_dir`'s val/test
    rows exactly as `evaluate` scores a model (val-tuned per-class thresholds, then `metric` on
    test), so both numbers come from the same test images."""
    from medssl.tracking.registry import ChampionScore, load_version_model

    def score(champ: ModelVersion) -> ChampionScore:
        if dataset_dir is None:
            return ChampionScore(None, "rescored", "no test data to score it on (--dataset)")
        try:
            dataset = Dataset.open(dataset_dir)
            tags = champ.tags or {}
            classes = json.loads(tags.get("medssl.model.classes") or "[]")
            if list(classes) != list(dataset.info.classes):
                return ChampionScore(
                    None, "rescored", f"its classes {classes} differ from the test data's"
                )
            if int(tags.get("medssl.model.in_channels", 1)) != dataset.info.channels:
                return ChampionScore(None, "rescored", "its input channels differ")
            model = load_version_model(name, champ.version)
            size = tags.get("medssl.model.image_size")
            table = score_dataset(
                model,
                dataset,
                classes,
                image_size=int(size) if size and size.isdigit() else None,
                device=resolve_device("auto"),
            )
            classes, splits = predictions_splits(table, f"{name} v{champ.version} scores")
            scored = score_predictions(classes, splits["val"], splits["test"], NO_BOOTSTRAP)
        except Exception as exc:  # an unloadable or incompatible champion blocks promotion
            return ChampionScore(None, "rescored", f"cannot score it ({one_line(exc, 200)})")
        value = flat_metrics(scored.metrics).get(metric)
        if value is None:
            return ChampionScore(None, "rescored", f"{metric} is not recomputed for a champion")
        return ChampionScore(value, "rescored")

    return score


def inference_spec(meta: dict[str, Any], metrics: dict[str, Any]) -> InferenceSpec:
    """What the registered model carries besides its weights: classes, the val-tuned per-class
    thresholds of this model's evaluation (None: a class never predicted), its input size and
    channels, and the model's meta."""
    per_class = metrics.get("per_class") or {}
    classes = [str(c) for c in meta.get("classes") or []]
    if meta.get("task") == "detection":  # a detector keeps its boxes' scores: no thresholds
        per_class = {c: {"threshold": None} for c in classes}
    missing = [c for c in classes if c not in per_class]
    if not classes or missing:
        raise DataContractError(
            f"metrics.json has no per-class threshold for {', '.join(missing) or 'any class'}"
        )
    size = meta.get("image_size")
    if size is None:
        raise MedsslError("model meta has no image_size; cannot say how to preprocess images")
    return InferenceSpec(
        classes=classes,
        thresholds=[per_class[c].get("threshold") for c in classes],
        image_size=int(size[-1] if isinstance(size, list | tuple) else size),
        channels=int(meta.get("in_channels", 1)),
        meta={k: v for k, v in meta.items() if k not in ("classes", "image_size", "in_channels")},
    )


def _read_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataContractError(f"{path}: not found (run `medssl evaluate` on the model first)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataContractError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(metrics, dict):
        raise DataContractError(f"{path}: expected a JSON object of metrics")
    return metrics


def _metric_key(metrics: dict[str, Any], metric: str, path: Path) -> str:
    """register.metric as named in metrics.json (`f1_weighted` is read as `test_f1_weighted`)."""
    for key in (metric, f"test_{metric}"):
        value = metrics.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and math.isfinite(value):
            return key
    known = [k for k, v in metrics.items() if isinstance(v, int | float)]
    raise ConfigError(
        f"register.metric={metric!r} is not a number in {path} (known: {', '.join(known)})"
    )


def _check_own(metrics: dict[str, Any], model_dir: Path, eval_dir: Path) -> str:
    """The sha256 of model.pt, after checking that metrics.json scored this model's own
    predictions (and model.pt when it recorded one)."""
    model_path, predictions = model_dir / MODEL_FILE, model_dir / PREDICTIONS_FILE
    if not model_path.is_file():
        raise DataContractError(f"{model_path}: not found (run `medssl train` first)")
    model_sha = sha256_file(model_path)
    inputs = metrics.get(INPUTS_KEY)
    again = f"run `medssl evaluate {model_dir} --out {eval_dir}` first"
    if not isinstance(inputs, dict) or not inputs.get("predictions_sha256"):
        raise DataContractError(
            f"{eval_dir / METRICS_FILE}: does not say which predictions it scored (written by "
            f"an older medssl?): {again}"
        )
    own = sha256_file(predictions) if predictions.is_file() else None
    scored_model = inputs.get("model_sha256")
    if inputs["predictions_sha256"] != own or scored_model not in (None, model_sha):
        raise DataContractError(
            f"{eval_dir / METRICS_FILE}: scored another model (predictions "
            f"{str(inputs['predictions_sha256'])[:12]}…, {model_dir} has "
            f"{(own or 'none')[:12]}…): {again}"
        )
    return model_sha


def _train_tags(model_dir: Path) -> dict[str, str]:
    summary = read_summary(model_dir)
    return {f"medssl.train.{k}": str(summary[k]) for k in _TRAIN_TAGS if k in summary}
