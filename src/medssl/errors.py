"""User-facing errors and the exit codes of the `medssl` command.

Every error a user or their environment can cause ends as ONE line on stderr (`error: …`) naming
the thing and what to do, and one of these exit codes (`--debug` or MEDSSL_DEBUG=1 adds the
traceback):

    0    success
    1    the data failed validation (`medssl validate`), or a pipeline run failed
    2    usage, configuration or input data: a bad option or parameter, a missing or corrupt input
         file, a dataset that breaks the data contract, metrics that are not the model's own
    3    environment: MLflow / S3 / Kubeflow unreachable or refusing, an output folder that cannot
         be written (read-only, permission, disk full), out of memory
    70   an internal error (a bug): the traceback is printed, please report it
    130  interrupted (Ctrl-C); a training checkpoint is kept for `--resume`

`translate` turns the exceptions libraries raise for such causes (OSError, MLflow, botocore,
requests, CUDA out of memory) into these errors; anything else is a bug.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

EXIT_OK = 0
EXIT_VALIDATION = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_BUG = 70
EXIT_INTERRUPTED = 130
DEBUG_ENV = "MEDSSL_DEBUG"
_MAX_REASON = 300


class MedsslError(Exception):
    """An error caused by input the user controls (config, data, paths), not by a bug."""

    exit_code = EXIT_USAGE


class ConfigError(MedsslError):
    """A bad params.yaml value or -S override."""


class DataContractError(MedsslError):
    """A dataset folder (or a file a stage reads) that does not follow docs/data-contract.md."""


class EnvironmentProblem(MedsslError):
    """The environment cannot do what was asked: a service, a file system, memory."""

    exit_code = EXIT_ENVIRONMENT


class ServiceError(EnvironmentProblem):
    """MLflow, S3 or the Kubeflow API is unreachable, misconfigured or refuses the request."""


class OutputError(EnvironmentProblem):
    """An output cannot be written: read-only file system, permission, disk full."""


class ResourceError(EnvironmentProblem):
    """Out of (GPU or host) memory."""


class RunFailed(MedsslError):
    """A run as a whole failed (every trial of a sweep): exit 1, like a failed pipeline run."""

    exit_code = EXIT_VALIDATION


class Interrupted(MedsslError):
    """Ctrl-C (SIGINT) or SIGTERM."""

    exit_code = EXIT_INTERRUPTED


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in {"", "0", "false", "no", "off"}


def one_line(text: object, limit: int = _MAX_REASON) -> str:
    """`text` on one line, at most `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _module_of(exc: BaseException) -> set[str]:
    return {cls.__module__.split(".")[0] for cls in type(exc).__mro__}


def _names_of(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def os_error(exc: OSError, what: str | None = None) -> MedsslError:
    """An OSError as the one-line error a user can act on. `what`: the output it was writing."""
    where = exc.filename or what or "a file"
    where = str(Path(where)) if isinstance(where, str | os.PathLike) else str(where)
    code = exc.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return OutputError(
            f"no space left on the device writing {where}: free some space or write elsewhere"
        )
    if code == errno.EROFS:
        return OutputError(f"{where}: read-only file system: write the output elsewhere (--out)")
    if code in (errno.EACCES, errno.EPERM):
        return OutputError(f"{where}: permission denied: write elsewhere or fix the permissions")
    if code == errno.ENOENT:
        return DataContractError(f"{where}: no such file or directory")
    if code == errno.EISDIR:
        return DataContractError(f"{where}: is a folder, a file was expected")
    if code == errno.ENOTDIR:
        return DataContractError(f"{where}: a path component is not a folder")
    reason = exc.strerror or one_line(exc) or type(exc).__name__
    return EnvironmentProblem(f"{where}: {reason}")


def translate(exc: BaseException) -> MedsslError | None:
    """The one-line error for an exception a user or the environment caused; None for a bug."""
    if isinstance(exc, MedsslError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("interrupted")
    names, modules = _names_of(exc), _module_of(exc)
    if "OutOfMemoryError" in names and "torch" in modules:
        return ResourceError(
            "out of GPU memory: lower -S train.max_batch_images (or train.batch_exams), or use "
            "a smaller train.backbone"
        )
    if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
        return ResourceError(
            "out of memory: lower -S train.max_batch_images (or train.batch_exams, train.workers)"
        )
    if "botocore" in modules:
        return ServiceError(f"S3: {_s3_reason(exc)}")
    if "mlflow" in modules:
        from medssl.tracking.uri import tracking_uri  # no MLflow import

        return ServiceError(f"MLflow ({tracking_uri()}): {one_line(_first_line(exc))}")
    if "requests" in modules or "urllib3" in modules:
        return ServiceError(f"network: {one_line(exc)}")
    if isinstance(exc, ConnectionError | TimeoutError):
        return ServiceError(f"network: {one_line(exc)}")
    if isinstance(exc, OSError):
        return os_error(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _s3_reason(exc: BaseException) -> str:
    names = _names_of(exc)
    if "NoCredentialsError" in names:
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if "EndpointConnectionError" in names:
        return f"cannot reach the endpoint ({one_line(exc)}): check AWS_ENDPOINT_URL"
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        err = response["Error"]
        return one_line(f"{err.get('Code', '')} {err.get('Message', '')}".strip())
    return one_line(exc)
