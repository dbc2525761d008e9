"""An S3-compatible server on loopback for tests: moto's standalone server (moto[server]) in a
thread of the test process, on a free port, with fake credentials.

Use from a test module (pytest puts tests/ on sys.path):

    from s3server import S3Server, s3_server

    @pytest.fixture(scope="module")
    def s3():
        with s3_server() as server:
            yield server

    def test_x(s3, monkeypatch):
        bucket = s3.make_bucket()
        s3.apply_env(monkeypatch)            # AWS_* for this test only
        ...

The server holds its objects in memory and speaks plain HTTP on 127.0.0.1; clients reach it
through an endpoint URL (DVC: `endpointurl` of the remote; MLflow: MLFLOW_S3_ENDPOINT_URL;
boto3 ≥ 1.28 and s3fs also read AWS_ENDPOINT_URL). Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
# moto accepts any credentials; these are the values its documentation uses.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
# Variables that would make a client read the developer's real AWS setup (profiles, SSO,
# instance metadata) instead of the fake credentials above.
_FOREIGN = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
)
_counter = itertools.count()
VENV_BIN = Path(sys.executable).parent


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    buckets: list[str] = field(default_factory=list)

    def client(self) -> Any:
        """A boto3 S3 client on this server with the fake credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def make_bucket(self, prefix: str = "medssl-test") -> str:
        """A new, empty bucket with a unique name."""
        name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in `bucket` under `prefix`, sorted."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def env(self, *, endpoint: bool = False) -> dict[str, str]:
        """Fake credentials and region (plus AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL when
        `endpoint`), e.g. for a subprocess's environment."""
        out = dict(CREDENTIALS)
        out["AWS_EC2_METADATA_DISABLED"] = "true"  # never wait for instance metadata
        if endpoint:
            out["AWS_ENDPOINT_URL"] = self.endpoint
            out["MLFLOW_S3_ENDPOINT_URL"] = self.endpoint
        return out

    def apply_env(self, monkeypatch: pytest.MonkeyPatch, *, endpoint: bool = False) -> None:
        """Set `env()` in this process for one test (monkeypatch undoes it), with the variables
        that would point a client at a real AWS profile or endpoint removed (environment credentials
        come first in botocore's chain, before ~/.aws files)."""
        for var in _FOREIGN:
            monkeypatch.delenv(var, raising=False)
        for key, value in self.env(endpoint=endpoint).items():
            monkeypatch.setenv(key, value)

    def subprocess_env(self, *, endpoint: bool = False, credentials: bool = True) -> dict[str, str]:
        """os.environ without AWS_*/MLFLOW_S3_* settings, plus (when `credentials`) `env()`."""
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
        for key in CREDENTIALS:
            env.pop(key, None)
        env["DVC_NO_ANALYTICS"] = "1"
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # this venv's dvc, mlflow
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        if credentials:
            env.update(self.env(endpoint=endpoint))
        return env


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 (a free port chosen by the OS), stopped on exit."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint=f"http://{host}:{port}")
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# git + DVC repositories with an S3 remote


def sh(
    *cmd: str | Path, cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command (git, dvc) and fail the test with its output when it fails."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def init_repo(path: Path, env: dict[str, str]) -> Path:
    """`git init` + `dvc init` in a new folder (branch main, a committer identity)."""
    path.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=path, env=env)
    sh("git", "config", "user.email", "ci@medssl.invalid", cwd=path, env=env)
    sh("git", "config", "user.name", "medssl tests", cwd=path, env=env)
    sh("dvc", "init", "-q", cwd=path, env=env)
    return path


def commit_all(repo: Path, env: dict[str, str], message: str) -> str:
    """git add -A, commit; the new commit's sha."""
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-q", "-m", message, cwd=repo, env=env)
    return sh("git", "rev-parse", "HEAD", cwd=repo, env=env).stdout.strip()


def tree_digest(root: Path) -> dict[str, str]:
    """relative path → sha256 of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
