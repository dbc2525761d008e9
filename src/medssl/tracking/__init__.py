"""MLflow tracking: runs (one parent run per pipeline run, a nested run per stage), model logging,
the registry and the promotion gate.

`Tracker` / `NullTracker` import without MLflow; everything else loads MLflow on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from medssl.tracking.base import NullTracker, Tracker

_LAZY = {
    "MlflowTracker": "medssl.tracking.runs",
    "stage_run": "medssl.tracking.runs",
    "tracked_stage": "medssl.tracking.runs",
    "tracking_uri": "medssl.tracking.uri",
    "tracking_enabled": "medssl.tracking.runs",
    "data_hash": "medssl.tracking.runs",
    "git_commit": "medssl.tracking.runs",
    "Decision": "medssl.tracking.registry",
    "log_and_register": "medssl.tracking.registry",
    "gate": "medssl.tracking.registry",
    "promote": "medssl.tracking.registry",
    "list_versions": "medssl.tracking.registry",
    "compare": "medssl.tracking.registry",
    "format_versions": "medssl.tracking.registry",
    "format_compare": "medssl.tracking.registry",
}

__all__ = ["NullTracker", "Tracker", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medssl.tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
