"""Register stage: log the trained model to MLflow, register it as `challenger` and run the
promotion gate against `champion` on the test metric `register.metric` (from the evaluate stage's
metrics.json) with `register.margin`. Decision and both numbers go to the version's tags.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medssl.config import RegisterConfig
from medssl.errors import ConfigError, MedsslError
from medssl.fileio import atomic_write_text
from medssl.tracking.base import NullTracker, Tracker

if TYPE_CHECKING:
    from medssl.tracking.registry import Decision

DEFAULT_MODEL_NAME = "abdominal-organs"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
TRAIN_SUMMARY = "train.json"
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


def register(
    model_dir: Path,
    eval_dir: Path,
    dataset_dir: Path | None,
    cfg: RegisterConfig,
    *,
    tracker: Tracker | None = None,
    record: Path | None = None,
) -> RegisterResult:
    """Log model_dir/model.pt with its signature and an input example, register it under
    `cfg.model_name` (default abdominal-organs) as `challenger`, and gate it against `champion`.
    `record`: a JSON file to write the version and the gate decision to (a DVC output)."""
    from medssl.models import load_model
    from medssl.tracking.registry import gate, log_and_register
    from medssl.tracking.runs import TAG_DATA_HASH, TAG_DATA_HASH_SOURCE, data_hash

    tracker = tracker if tracker is not None else NullTracker()
    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    metrics_path = eval_dir / METRICS_FILE
    metrics = _read_metrics(metrics_path, cfg.metric)
    model, meta = load_model(model_dir / MODEL_FILE)
    name = cfg.model_name or DEFAULT_MODEL_NAME

    extra: dict[str, str] = {"medssl.model.path": str(model_dir / MODEL_FILE)}
    extra.update(_train_tags(model_dir / TRAIN_SUMMARY))
    if dataset_dir is not None and TAG_DATA_HASH not in (getattr(tracker, "tags", {}) or {}):
        found = data_hash(dataset_dir)
        if found:
            extra[TAG_DATA_HASH], extra[TAG_DATA_HASH_SOURCE] = found
    version = log_and_register(model, meta, input_example(meta), metrics, name, tracker, tags=extra)
    decision = gate(name, version, cfg.metric, cfg.margin)

    tracker.log_artifact(metrics_path)
    tracker.set_tags(
        {
            "medssl.registered_model": name,
            "medssl.registered_version": version,
            "medssl.gate.decision": decision.decision,
            "medssl.gate.reason": decision.reason,
            "medssl.gate.champion_version": decision.champion_version or "none",
        }
    )
    numbers = {"gate.challenger": decision.challenger, "gate.margin": cfg.margin}
    if decision.champion is not None:
        numbers["gate.champion"] = decision.champion
    per_class = {
        f"test.{cls}.{key}": value
        for cls, values in (metrics.get("per_class") or {}).items()
        for key, value in (values or {}).items()
        if key in ("precision", "recall", "f1")
    }
    tracker.log_metrics({"test." + k: v for k, v in _flat(metrics).items()} | per_class | numbers)
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


def input_example(meta: dict[str, Any], seed: int = 0) -> np.ndarray:
    """One float32 image [1, C, H, W] in [0, 1] shaped like the model's input."""
    size = meta.get("image_size")
    if isinstance(size, list | tuple):
        height, width = (int(size[0]), int(size[-1]))
    elif size is not None:
        height = width = int(size)
    else:
        raise MedsslError("model meta has no image_size; cannot build an input example")
    channels = int(meta.get("in_channels", 1))
    rng = np.random.default_rng(seed)
    return rng.random((1, channels, height, width), dtype=np.float32)


def _read_metrics(path: Path, metric: str) -> dict[str, Any]:
    if not path.is_file():
        raise MedsslError(f"{path}: not found (run `medssl evaluate` first)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MedsslError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(metrics, dict):
        raise MedsslError(f"{path}: expected a JSON object of metrics")
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        known = [k for k, v in metrics.items() if isinstance(v, int | float)]
        raise ConfigError(
            f"register.metric={metric!r} is not a number in {path} (known: {', '.join(known)})"
        )
    return metrics


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _train_tags(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {f"medssl.train.{k}": str(summary[k]) for k in _TRAIN_TAGS if k in summary}
