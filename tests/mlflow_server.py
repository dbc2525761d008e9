"""A real `mlflow server` on loopback for tests: started in the background as soon as a module
starts (`start`), waited for when a test first needs it (`wait_healthy`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    proc: subprocess.Popen
    uri: str
    log: Path

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> str:
        """The server's URI once /health answers; fails the test with the server log if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:]
                pytest.fail(f"mlflow server exited ({self.proc.returncode}):\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self.uri
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"mlflow server not healthy after {timeout}s:\n{self.log.read_text()[-3000:]}")


@contextmanager
def start(root: Path, artifacts_destination: str, env: dict[str, str]) -> Iterator[MlflowServer]:
    """`mlflow server` with a sqlite store under `root`, one worker, no job runner; `env` is the
    server's whole environment (MLFLOW_* variables of the test process are not passed on)."""
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_") or k.startswith("MLFLOW_S3")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner process
    port = free_port()
    log_path = root / "server.log"
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield MlflowServer(proc, f"http://127.0.0.1:{port}", log_path)
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):  # the server and its uvicorn worker
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
