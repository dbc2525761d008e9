"""Driving the real `medssl` command line in tests: in this process (medssl.cli.run, the code the
console script runs) or as a subprocess, and on a small or read-only file system (a tmpfs mounted
in a user namespace with `unshare`, where the machine allows it)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

MEDSSL = str(Path(sys.executable).parent / "medssl")


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one `error:` line of stderr, after checking there is exactly one, that it is the
        last line and that no traceback was printed."""
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert "Traceback" not in self.err, self.err
        assert len(errors) == 1 and lines[-1] == errors[0], self.err
        return errors[0]


def cli(capsys: pytest.CaptureFixture, *args: str) -> Outcome:
    """`medssl ARGS` in this process; returns exit code, stdout, stderr."""
    from medssl.cli import run

    capsys.readouterr()
    code = run([str(a) for a in args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def expect_error(outcome: Outcome, code: int, *fragments: str) -> str:
    """Assert exit `code` and one error line holding every fragment; returns the line."""
    line = outcome.error_line()
    assert outcome.code == code, (outcome.code, line)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def medssl(*args: str, cwd: Path | None = None, env: dict | None = None, **kw) -> Outcome:
    """`medssl ARGS` as a subprocess (the console script)."""
    proc = subprocess.run(
        [MEDSSL, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=kw.pop("timeout", 600),
        **kw,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


@functools.cache
def can_mount_tmpfs() -> bool:
    """Whether `unshare -rm` may mount a tmpfs here (user namespaces allowed)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def medssl_on_tmpfs(mount: Path, options: str, *args: str, env: dict | None = None) -> Outcome:
    """`medssl ARGS` with a tmpfs (`options`, e.g. "size=256k" or "ro") mounted at `mount` in
    a private mount namespace: a really full or read-only file system."""
    if not can_mount_tmpfs():
        pytest.skip("unshare cannot mount a tmpfs here (user namespaces disabled)")
    mount.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o {options} none "{mount}" && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", MEDSSL, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)
