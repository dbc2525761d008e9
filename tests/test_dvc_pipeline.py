"""The DVC pipeline of the repository, run on the `tiny` archive in a scratch git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, ok: bool = True) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode != 0, f"{' '.join(cmd)} should have failed:\n{proc.stdout}"
    return proc.stdout + proc.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repo's pipeline (dvc.yaml, params.yaml, code deps) set to `tiny`."""
    for name in ("dvc.yaml", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["size"] = "tiny"
    params["train"].update(max_epochs=2, checkpoint_every=5)
    params["evaluate"]["bootstrap"] = 50
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / ".gitignore").write_text(
        "/data/\n/reports/\n/models/\n/.cache/\nmlflow.db\n/mlruns/\n"
    )
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], tmp_path)
    return tmp_path


def test_repro_then_nothing_then_experiment(project: Path):
    out = run(["dvc", "repro"], project)
    for stage in ("synth", "validate", "split", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    assert (project / "data/splits/splits.json").is_file()
    assert (project / "reports/validate/report.json").is_file()
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    assert 0 <= metrics["f1_weighted"] <= 1
    first = json.loads((project / "reports/register.json").read_text())
    assert first["version"] == "1" and first["gate_decision"] == "promoted"
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["synth"]["params"]["params.yaml"]["data"]["size"] == "tiny"

    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again

    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], project)
    exp = run(["dvc", "exp", "run", "-S", "train.lr=0.001"], project)
    # only what the change touches re-runs, and the registry gets a second, gated version
    for stage in ("synth", "validate", "split"):
        assert f"Running stage '{stage}'" not in exp
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in exp
    second = json.loads((project / "reports/register.json").read_text())
    assert second["version"] == "2"
    assert second["gate_decision"] in {"promoted", "refused"}
    listing = run(["medssl", "models", "list"], project)
    assert "champion" in listing and "2" in listing


def test_a_failed_validation_stops_the_pipeline(project: Path):
    # tiny images are 32 px: demanding 64 px makes every image-size check fail
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["validate"]["min_image_side"] = 64
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(["dvc", "repro"], project, ok=False)
    assert "Running stage 'validate'" in out
    assert "FAILED" in out and "image" in out
    assert "Running stage 'split'" not in out
    assert not (project / "data/splits").exists()
