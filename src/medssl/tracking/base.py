"""The `Tracker` protocol that stages log through, and `NullTracker`, which logs nothing.

Stages take a `tracker` argument so they run the same with MLflow (medssl.tracking.stage_run),
without it (unit tests, `tracker=None`) and inside Ray Tune trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """What a stage may record about itself."""

    @property
    def run_id(self) -> str | None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path | str) -> None: ...

    def log_artifacts(self, path: Path | str, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...


class NullTracker:
    """A tracker that records nothing (tests, or tracking switched off)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path | str) -> None:
        pass

    def log_artifacts(self, path: Path | str, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass


class PrefixedTracker:
    """A tracker whose metric names get a prefix (two stages in one run: the pretrain half of a
    pretrain-train sweep trial logs pretrain/<metric>); params are the run's, logged once."""

    def __init__(self, inner: Tracker, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    @property
    def run_id(self) -> str | None:
        return self.inner.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass  # the trial's params are logged once

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.inner.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step)

    def log_artifact(self, path: Path | str) -> None:
        self.inner.log_artifact(path)

    def log_artifacts(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.inner.log_artifacts(path, artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.inner.set_tags(tags)
