"""Nothing half-written: a stage killed midway (SIGKILL, no cleanup) leaves its previous complete
output folder, byte for byte, or none; the next run cleans up after the dead one."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medssl.config import DataConfig, EvaluateConfig, SplitConfig, TrainConfig
from medssl.fileio import staged_dir
from medssl.stages.evaluate import evaluate
from medssl.stages.split import split
from medssl.stages.synth import synth
from medssl.stages.train import train
from medssl.stages.validate import validate

# stage → (module, function replaced by a SIGKILL once the stage has written part of its output)
KILL_POINTS = {
    "synth": ("medssl.data.synth.archive", "write_dataset"),  # images rendered, no tables yet
    "validate": ("medssl.validation.suites", "run_checks"),  # image checks done
    "split": ("medssl.stages.split", "_plot"),  # manifest written, no plot yet
    "evaluate": ("medssl.stages.evaluate", "_plot_pr_curves"),  # metrics.json written
    "train": ("medssl.stages.train", "save_model"),  # predictions written, no model.pt
}
CALLS = {
    "synth": "from medssl.stages.synth import synth; from medssl.config import DataConfig, "
    "SplitConfig; synth(OUT, DataConfig(size='tiny', seed=5), SplitConfig(), progress=False)",
    "validate": "from medssl.stages.validate import validate; validate(INP, OUT)",
    "split": "from medssl.stages.split import split; from medssl.config import SplitConfig; "
    "split(INP, OUT, SplitConfig(seed=9))",
    "evaluate": "from medssl.stages.evaluate import evaluate; from medssl.config import "
    "EvaluateConfig; evaluate(INP, OUT, EvaluateConfig(bootstrap=10, seed=3))",
    "train": "from medssl.stages.train import train; from medssl.config import TrainConfig; "
    "train(INP, OUT, TrainConfig(device='cpu', max_epochs=1, batch_exams=2, seed=4, "
    "cache_dir=CACHE), progress=False)",
}


def killed_midway(stage: str, inp: Path, out: Path, cache: Path) -> int:
    """Run `stage` in a subprocess that SIGKILLs itself at the stage's kill point."""
    module, function = KILL_POINTS[stage]
    code = (
        "import importlib, os, signal\n"
        "from pathlib import Path\n"
        f"INP, OUT, CACHE = Path({str(inp)!r}), Path({str(out)!r}), {str(cache)!r}\n"
        f"mod = importlib.import_module({module!r})\n"
        f"setattr(mod, {function!r}, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))\n"
        f"{CALLS[stage]}\n"
        "raise SystemExit('the kill point was never reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    return proc.returncode


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def previous(tiny_archive, tiny_split, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """For each stage: (its input, a complete output of an earlier run)."""
    root = tmp_path_factory.mktemp("previous")
    synth(root / "synth", DataConfig(size="tiny", seed=1), SplitConfig(), progress=False)
    validate(tiny_archive, root / "validate")
    split(tiny_archive, root / "split", SplitConfig())
    cfg = TrainConfig(device="cpu", max_epochs=1, batch_exams=2, cache_dir=str(root / "cache"))
    train(tiny_split, root / "train", cfg, progress=False)
    evaluate(root / "train", root / "evaluate", EvaluateConfig(bootstrap=10))
    return {
        "synth": (root, root / "synth"),
        "validate": (tiny_archive, root / "validate"),
        "split": (tiny_archive, root / "split"),
        "train": (tiny_split, root / "train"),
        "evaluate": (root / "train", root / "evaluate"),
    }


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_a_stage_killed_midway_leaves_the_previous_output(stage, previous, tmp_path):
    inp, done = previous[stage]
    out = tmp_path / done.name
    shutil.copytree(done, out)
    before = snapshot(out)
    killed_midway(stage, inp, out, tmp_path / "cache")
    assert snapshot(out) == before
    # nothing of the killed run where a reader looks; its staging folder is hidden (train's is
    # kept on purpose: its checkpoints are what --resume continues from)
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == sorted(n for n in ["cache", out.name] if (tmp_path / n).exists())


@pytest.mark.parametrize("stage", ["split", "evaluate"])
def test_a_first_run_killed_midway_leaves_no_output(stage, previous, tmp_path):
    inp, _ = previous[stage]
    out = tmp_path / "out"
    killed_midway(stage, inp, out, tmp_path / "cache")
    assert not out.exists()


def test_a_dead_run_staging_folder_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.tmp-999999999"  # no such process
    stale.mkdir()
    (stale / "half").write_text("x")
    with staged_dir(out) as tmp:
        (tmp / "whole").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "whole").read_text() == "y"
