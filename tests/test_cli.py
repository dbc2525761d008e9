"""The `medssl` entry point as a user runs it: exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

MEDSSL = str(Path(sys.executable).parent / "medssl")


def medssl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([MEDSSL, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], proc.stderr


def test_help_and_version():
    proc = medssl("--help")
    assert proc.returncode == 0
    for command in ("data", "validate", "split", "config"):
        assert command in proc.stdout
    assert medssl("--version").stdout.startswith("medssl ")
    assert "SECTION.KEY=VALUE" in medssl("split", "--help").stdout


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["config", "show", "-S", "data.sizee=tiny"], "unknown parameter 'data.sizee'"),
        (["config", "show", "-S", "data.seed=abc"], "parameter 'data.seed'"),
        (["data", "synth", "--out", "x", "--size", "huge"], "parameter 'data.size'"),
        (["validate", "no/such/dir"], "not a dataset folder"),
        (["split", "no/such/dir", "--out", "y"], "not a dataset folder"),
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path, args, text):
    assert_one_line_error(medssl(*args, cwd=tmp_path), text)


@pytest.mark.parametrize(
    ("args", "text"),
    [(["spilt"], "No such command 'spilt'"), (["split", "--bogus"], "No such option: --bogus")],
)
def test_usage_errors_exit_2_without_traceback(tmp_path, args, text):
    proc = medssl(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert text in proc.stderr


def test_config_show_resolves_overrides(tmp_path):
    proc = medssl("config", "show", "-S", "split.seed=9", cwd=tmp_path)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["split"]["seed"] == 9


def test_synth_validate_split_and_a_failing_validation(tmp_path, tiny_archive):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_archive, ds)
    ok = medssl("validate", str(ds), "--out", str(tmp_path / "v"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "validate: OK" in ok.stdout

    split = medssl("split", str(ds), "--out", str(tmp_path / "s"))
    assert split.returncode == 0, split.stderr
    summary = json.loads((tmp_path / "s" / "splits.json").read_text())
    assert sum(summary["images"].values()) == len(pd.read_parquet(ds / "manifest.parquet"))

    m = pd.read_parquet(ds / "manifest.parquet")
    m.loc[m.index[0], "image"] = m.loc[m.index[1], "image"]  # a duplicate path
    m.to_parquet(ds / "manifest.parquet", index=False)
    bad = medssl("validate", str(ds), "--out", str(tmp_path / "v2"), "--no-images")
    assert bad.returncode == 1
    assert "FAILED" in bad.stdout and "unique" in bad.stdout
    assert "Traceback" not in bad.stderr
