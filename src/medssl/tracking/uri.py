"""Where MLflow lives, and a fast check that it is there (no MLflow import).

The tracking URI is `MLFLOW_TRACKING_URI`, else `sqlite:///<root>/mlflow.db` where <root> is
`DVC_ROOT` (set by DVC for every stage, also for `dvc exp run --temp/--queue`, whose stages run in
a temporary copy of the repository: their runs still land in the repository's database) or the
working directory.

MLflow's client retries an unreachable server for minutes and then prints a traceback; `check`
asks the server's /health endpoint once, with a short timeout, and raises one line instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from medssl.errors import MedsslError, ServiceError
from medssl.net import Unreachable, health_status

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
ROOT_ENV = "DVC_ROOT"
PROBE_TIMEOUT_S = 5.0
_checked: set[str] = set()


def store_root() -> Path:
    """The folder of the default store: $DVC_ROOT, else the working directory."""
    root = os.environ.get(ROOT_ENV, "").strip()
    return Path(root).resolve() if root else Path.cwd().resolve()


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else sqlite:///<store_root()>/mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{store_root() / DB_FILE}"


def is_default_store(uri: str | None = None) -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI", "").strip() and (
        uri is None or uri == tracking_uri()
    )


def default_artifact_location() -> str | None:
    """Absolute artifact folder for experiments created in the default store (MLflow's own
    default, ./mlruns, would follow the working directory of whichever process came first)."""
    return (store_root() / ARTIFACTS_DIR).as_uri() if is_default_store() else None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for other stores or in-memory)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:") :]
    if not rest.startswith("///"):
        return None
    path = rest[3:].split("?", 1)[0]
    return None if not path or path == ":memory:" else Path("/" + path.lstrip("/"))


def check(uri: str | None = None, *, must_exist: bool = False) -> str:
    """Raise a one-line error when the store at `uri` cannot work: an http(s) server that does
    not answer /health, a sqlite file in a missing folder (or, with `must_exist`, a database that
    does not exist yet: read-only commands never create one), a `file:` store (MLflow 3 refuses
    it). Checked once per process and URI. Returns the URI."""
    uri = uri or tracking_uri()
    key = f"{uri}|{must_exist}"
    if key in _checked:
        return uri
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _probe(uri)
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            if not path.parent.is_dir():
                raise ServiceError(
                    f"MLflow store {uri}: folder {path.parent} does not exist "
                    "(check MLFLOW_TRACKING_URI)"
                )
            if must_exist and not path.is_file():
                raise MedsslError(
                    f"no MLflow store at {path}: nothing was registered here yet (run `medssl "
                    "register`, or set MLFLOW_TRACKING_URI to your server)"
                )
    elif scheme in ("file", "") and uri:
        raise ServiceError(
            f"MLFLOW_TRACKING_URI={uri}: MLflow 3 has no file store; use sqlite:///path/mlflow.db "
            "or an http(s) tracking server"
        )
    _checked.add(key)
    return uri


def _probe(uri: str) -> None:
    try:
        status = health_status(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
    except Unreachable as exc:
        raise ServiceError(
            f"cannot reach the MLflow tracking server at {uri} ({exc}): check "
            "MLFLOW_TRACKING_URI, or unset it to use sqlite:///mlflow.db here"
        ) from None
    if status in (401, 403):
        raise ServiceError(
            f"MLflow server at {uri} refused the request (HTTP {status}): set "
            "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD"
        )
    if status >= 500:
        raise ServiceError(f"MLflow server at {uri} is failing (HTTP {status})")
    # any other answer (some proxies do not route /health): the server is there
