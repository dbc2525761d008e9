"""Shared fixtures: a `tiny` synthetic archive written once per test session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from medssl.config import load_params
from medssl.stages.split import split
from medssl.stages.synth import synth

# The tests start many `medssl`/`dvc`/kfp.local step processes; with PYTHONDONTWRITEBYTECODE set
# (as on some CI machines) each one recompiles ~4,500 modules (10 s). Cache the bytecode outside
# the tree instead: the same code runs, minutes faster.
if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    _PREFIX = os.path.join(tempfile.gettempdir(), f"medssl-test-pycache-{os.getuid()}")
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = _PREFIX
    sys.pycache_prefix, sys.dont_write_bytecode = _PREFIX, False

# More labeled images than the paper's 5.4 % so tests on `tiny` have usable labeled splits.
TINY_SPLITS = [
    "data.size=tiny",
    "split.fractions={unlabeled: 0.4, train: 0.3, val: 0.1, test: 0.2}",
]


@pytest.fixture(autouse=True)
def _forget_mlflow_global_tracking_uri():
    """MLflow's set_tracking_uri (called by code under test when no MLFLOW_TRACKING_URI is set)
    leaves a process-wide URI that wins over the variable in later tests: forget it after each
    test (the variable itself is restored by monkeypatch)."""
    yield
    import sys

    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = None


@pytest.fixture(scope="session")
def tiny_params():
    return load_params(Path("/nonexistent"), TINY_SPLITS)


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory, tiny_params) -> Path:
    """A tiny archive (read-only: copy it before planting defects)."""
    out = tmp_path_factory.mktemp("archive") / "abdominal-us"
    synth(out, tiny_params.data, tiny_params.split, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_split(tiny_archive, tiny_params, tmp_path_factory) -> Path:
    """The tiny archive through the split stage (read-only)."""
    out = tmp_path_factory.mktemp("split") / "abdominal-us"
    split(tiny_archive, out, tiny_params.split)
    return out


@pytest.fixture(scope="module")
def module_store(tmp_path_factory):
    """A sqlite MLflow store of the module's own: MLFLOW_TRACKING_URI points at it and the
    working directory is its folder while the module's tests run. Yields (folder, URI)."""
    root = tmp_path_factory.mktemp("mlflow-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        yield root, uri


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on loopback for the module's tests (tests/s3server.py)."""
    import logging

    from s3server import s3_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    with s3_server() as server:
        yield server
