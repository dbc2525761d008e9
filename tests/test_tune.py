"""`medssl tune`: search spaces, writing a configuration back into params.yaml, bad input as one
line, and a real 2 × 2 Ray Tune sweep on `tiny` (ASHA, MLflow child runs, a killed sweep resumed,
--apply)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli_helpers import MEDSSL, cli, expect_error, medssl
from medssl.config import load_params
from medssl.errors import ConfigError
from medssl.stages.tune import (
    BINARY_METRICS,
    DETECTION_METRICS,
    FINAL_METRICS,
    SweepPlan,
    best_config,
    fetch_summary,
    job_entrypoint,
    plan_sweep,
    publish_summary,
    reported_metrics,
)
from medssl.tuning import (
    Dimension,
    apply_to_params,
    build_space,
    parse_cli_space,
    parse_value,
    trial_values,
)

REPO = Path(__file__).resolve().parents[1]
NO_PARAMS = Path("/nonexistent/params.yaml")


# ---------------------------------------------------------------------------------------------
# the space


def test_space_entries_parse_into_grids_ranges_choices_and_fixed_values():
    grid = parse_value("lsd.lambda", [0.5, 1, 2])
    assert (grid.kind, grid.values, grid.searched) == ("grid", (0.5, 1, 2), True)
    tied = parse_value("pica.lambda,lsd.lambda", [1, 2])
    assert tied.targets == ("pica.lambda", "lsd.lambda") and tied.short == "lambda"
    assert parse_value("train.lr", "loguniform(1e-5, 1e-3)").values == (1e-5, 1e-3)
    assert parse_value("lsd.alpha", "uniform(1.01, 3)").kind == "uniform"
    rint = parse_value("train.batch_exams", "randint(2, 6)")
    assert rint.candidates() == (2, 5)  # the high end is exclusive
    assert parse_value("pretrain.method", "choice([pica, lsd])").values == ("pica", "lsd")
    fixed = parse_value("pretrain.max_steps", 24)
    assert (fixed.kind, fixed.searched) == ("fixed", False)
    cli_space = parse_cli_space(["lsd.lambda=[1,2]", "train.lr=loguniform(1e-5,1e-3)", "a.b=x"])
    assert cli_space == {"lsd.lambda": [1, 2], "train.lr": "loguniform(1e-5,1e-3)", "a.b": "x"}


@pytest.mark.parametrize(
    ("space", "seeds", "fragment"),
    [
        ({"lsd.lambda": []}, 1, "an empty grid"),
        ({"lsd.lambda": "uniform(3, 1)"}, 1, "low < high"),
        ({"train.lr": "loguniform(0, 1)"}, 1, "low > 0"),
        ({"train.batch_exams": "randint(1.5, 4)"}, 1, "integers"),
        ({"lambda": [1, 2]}, 1, "expected section.key"),
        ({"tune.seeds": [1, 2]}, 1, "a trial does not read tune"),
        ({"split.seed": [0, 1]}, 1, "a trial does not read split"),
        ({"train.lr": "loguniform(1e-5, 1e-3)"}, 2, "Ray draws it anew for every seed"),
        ({"lsd.lambda": [1], "pica.lambda,lsd.lambda": [2]}, 1, "set by both"),
        ({"pretrain.seed": [0, 1]}, 2, "tune.seeds=2 sets it too"),
        ({"pretrain.max_steps": 3}, 1, "nothing to search"),
        ({}, 1, "nothing to search"),
    ],
)
def test_malformed_spaces_are_one_line_errors(space, seeds, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_space(space, seeds)


def test_seeds_become_a_grid_over_every_stage_seed_and_trial_values_apply_ties():
    dims = build_space({"pica.lambda,lsd.lambda": [1, 2], "pretrain.max_steps": 5}, seeds=3)
    assert dims[-1] == Dimension("seed", ("pretrain.seed", "train.seed"), "grid", (0, 1, 2))
    values = trial_values({"pica.lambda,lsd.lambda": 2, "seed": 1}, dims)
    assert values == {
        "pica.lambda": 2,
        "lsd.lambda": 2,
        "pretrain.max_steps": 5,
        "pretrain.seed": 1,
        "train.seed": 1,
    }
    plan = SweepPlan(dims, "val_nmi", "val_nmi", num_samples=2)
    assert plan.trials == 2 * 3 * 2


def test_plan_refuses_unknown_keys_bad_values_and_unreported_metrics():
    params = load_params(NO_PARAMS)
    cfg = params.tune
    with pytest.raises(ConfigError, match=r"tune space lsd.lamda=1: unknown parameter 'lsd.lamda'"):
        plan_sweep(params, cfg, {"lsd.lamda": [1, 2]})
    with pytest.raises(ConfigError, match=r"tune space lsd.alpha=0.5: parameter 'lsd.alpha'"):
        plan_sweep(params, cfg, {"lsd.alpha": [0.5, 2]})
    with pytest.raises(ConfigError, match="no pretrain trial reports it"):
        val_f1 = cfg.model_copy(update={"metric": "val_f1_weighted"})
        plan_sweep(params, val_f1, {"lsd.lambda": [1]})
    train_cfg = cfg.model_copy(update={"chain": "train", "metric": "test_f1_weighted"})
    plan = plan_sweep(params, train_cfg, {"train.lr": [1e-4, 1e-3]})
    assert plan.scheduler_metric == "val_f1_weighted"  # test_* is final only: ASHA needs epochs
    chain = cfg.model_copy(update={"chain": "pretrain-train", "metric": "pretrain_val_nmi"})
    assert plan_sweep(params, chain, {"lsd.lambda": [1, 2]}).metric == "pretrain_val_nmi"


def test_the_repository_presets_plan_the_papers_sweeps():
    params = load_params(REPO / "params.yaml")
    fig5 = plan_sweep(params, params.tune.with_preset("lambda-sensitivity"), {})
    assert fig5.trials == 2 * 5 * 4
    assert {d.key for d in fig5.searched} == {"pretrain.method", "pica.lambda,lsd.lambda", "seed"}
    assert plan_sweep(params, params.tune.with_preset("alpha-sensitivity"), {}).trials == 4 * 3
    with pytest.raises(ConfigError, match=r"no tune preset 'nope'.*lambda-sensitivity"):
        params.tune.with_preset("nope")


# ---------------------------------------------------------------------------------------------
# results and --apply


def _plan() -> SweepPlan:
    return SweepPlan(build_space({"lsd.lambda": [1, 2]}, seeds=2), "val_nmi", "val_nmi")


def test_the_best_configuration_is_the_best_mean_over_seeds_of_completed_trials():
    rows = [(1, 0, "completed", 0.9), (1, 1, "completed", 0.1), (2, 0, "completed", 0.6)]
    rows += [(2, 1, "completed", 0.6), (1, 2, "stopped", 0.99)]
    frame = pd.DataFrame(
        [
            {"config": json.dumps({"lsd.lambda": lam}), "seed": seed, "status": st, "val_nmi": v}
            for lam, seed, st, v in rows
        ]
    )
    best = best_config(frame, _plan(), "max")
    assert best["params"] == {"lsd.lambda": 2} and best["trials"] == 2
    assert isinstance(best["params"]["lsd.lambda"], int)  # types kept (no 2.0, no NaN for null)
    assert best["value"] == pytest.approx(0.6)
    assert best_config(frame, _plan(), "min")["params"] == {"lsd.lambda": 1}


def test_apply_writes_values_in_place_keeping_comments_and_layout(tmp_path):
    path = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    path.write_text(original)
    changed = apply_to_params(
        path, {"lsd.lambda": 5.0, "pica.lambda": 5.0, "pretrain.method": "pica", "pica.clusters": 9}
    )
    assert changed == ["lsd.lambda", "pica.lambda", "pretrain.method", "pica.clusters"]
    text = path.read_text()
    params = load_params(path)
    assert params.method_params("lsd").lambda_ == 5.0
    assert params.method_params("pica").clusters == 9
    assert params.pretrain.method == "pica"
    before, after = original.splitlines(), text.splitlines()
    assert len(before) == len(after)  # every line kept: only values changed
    diff = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(diff) == 4
    for old, new in diff:  # the comment of every changed line survives, at its column
        if "#" in old:
            assert new[new.index("#") :] == old[old.index("#") :]
            assert new.index("#") == old.index("#")
    assert apply_to_params(path, {"lsd.lambda": 5.0}) == []  # already so: untouched
    # a key the file lacks is added to its section; a nested key is refused
    apply_to_params(path, {"evaluate.ci": 0.9})
    assert load_params(path).evaluate.ci == 0.9
    with pytest.raises(ConfigError, match=r"only section\.key"):
        apply_to_params(path, {"split.fractions.train": 0.5})
    with pytest.raises(ConfigError, match="would no longer load"):
        apply_to_params(path, {"lsd.alpha": 0.5})
    assert load_params(path).method_params("lsd").alpha == 1.1  # refused: file unchanged


def test_apply_keeps_crlf_inserts_after_nested_blocks_and_refuses_flow_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(
        b"split:\r\n  seed: 0\r\n  fractions:\r\n    unlabeled: 0.5\r\n    train: 0.5\r\n"
    )
    apply_to_params(path, {"split.resplit": True, "split.seed": 3})
    text = path.read_bytes().decode()
    expected = "split:\r\n  seed: 3\r\n  fractions:\r\n    unlabeled: 0.5\r\n    train: 0.5\r\n"
    assert text == expected + "  resplit: true\r\n"
    path.write_text("lsd: {lambda: 2.0, alpha: 1.5}\n")
    with pytest.raises(ConfigError, match="not one block mapping"):
        apply_to_params(path, {"lsd.lambda": 5.0})
    assert path.read_text() == "lsd: {lambda: 2.0, alpha: 1.5}\n"


def test_a_cluster_sweep_passes_its_settings_and_summary_through_the_storage(tmp_path):
    params = load_params(NO_PARAMS)
    cfg = params.tune.model_copy(
        update={"storage": "s3://bucket/sweeps", "resources": {"cpu": 4, "gpu": 1}, "seeds": 2}
    )
    entry = job_entrypoint(cfg, "/data/splits", "/tmp/out", "lambda-sensitivity", {"a.b": [1]}, "x")
    assert entry.startswith("medssl tune /data/splits --out /tmp/out --name x --params params.yaml")
    for fragment in ("--preset lambda-sensitivity", "-S 'a.b=[1]'", "--gpu 1", "--seeds 2"):
        assert fragment in entry
    assert "--storage s3://bucket/sweeps" in entry
    # the summary goes up to <storage>/<name>/summary/ and comes back (a local storage here)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "best.json").write_text(json.dumps({"params": {"lsd.lambda": 2}}))
    (out / "results.csv").write_text("trial\n")
    storage = f"file://{tmp_path / 'storage'}"
    publish_summary(out, storage, "x")
    back = tmp_path / "back"
    fetch_summary(storage, "x", back)
    assert json.loads((back / "best.json").read_text()) == {"params": {"lsd.lambda": 2}}
    with pytest.raises(ConfigError, match="no sweep summary"):
        fetch_summary(storage, "other", back)


# ---------------------------------------------------------------------------------------------
# the command line: bad input before any trial starts


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["-S", "lsd.lamda=[1,2]"], 2, "unknown parameter 'lsd.lamda'"),
        ([], 2, "nothing to search"),
        (["-S", "lsd.lambda=[1,2]", "--metric", "val_f1_weighted"], 2, "no pretrain trial"),
        (["-S", "lsd.lambda=[1,2]", "--metric", "test_f1_weighted", "--apply"], 2, "leaks"),
        (["-S", "lsd.lambda=[1,2]", "--address", "http://127.0.0.1:9"], 2, "shared storage"),
        (["--preset", "nope"], 2, "no tune preset"),
    ],
)
def test_bad_sweeps_are_refused_in_one_line(capsys, tiny_split, tmp_path, args, code, fragment):
    out = cli(capsys, "tune", tiny_split, "--params", NO_PARAMS, "--out", tmp_path / "o", *args)
    expect_error(out, code, fragment)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-S", "lsd.lambda=[1,2]", "--mode", "maximum"], "parameter 'tune.mode'"),
        (["-S", "lsd.lambda=[1,2]", "--seeds", "0"], "parameter 'tune.seeds'"),
        (["-S", "lsd.lambda=[1,2]", "--cpu", "4096"], "this machine has"),
        (["--preset", "lambda-sensitivity", "-S", "pretrain.method=lsd"], "tune.plot"),
    ],
)
def test_bad_flags_are_one_line_before_any_trial(capsys, tiny_split, tmp_path, args, fragment):
    out = cli(
        capsys, "tune", tiny_split, "--params", REPO / "params.yaml", "--out", tmp_path / "o",
        *args,
    )  # fmt: skip
    line = out.error_line()
    assert fragment in line and out.code in (2, 3), line


def test_resume_refuses_another_space(tmp_path):
    from medssl.stages.tune import _check_same_sweep

    params = load_params(NO_PARAMS)
    plan = plan_sweep(params, params.tune, {"lsd.lambda": [1, 2]})
    (tmp_path / "sweep.json").write_text(
        json.dumps({"space": [d.describe() for d in plan.dims], "chain": "pretrain",
                    "metric": "val_nmi"})
    )  # fmt: skip
    _check_same_sweep(tmp_path, plan, params.tune)  # the same: fine
    other = plan_sweep(params, params.tune.model_copy(update={"seeds": 2}), {"lsd.lambda": [1, 2]})
    with pytest.raises(ConfigError, match="resume with the same preset"):
        _check_same_sweep(tmp_path, other, params.tune)


def test_a_gpu_request_on_a_machine_without_one_is_refused_up_front(capsys, tiny_split, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the request is satisfiable")
    out = cli(
        capsys, "tune", tiny_split, "--params", NO_PARAMS, "-S", "lsd.lambda=[1,2]", "--gpu", "1",
        "--out", tmp_path / "o",
    )  # fmt: skip
    expect_error(out, 3, "tune.resources.gpu=1", "PENDING", "--gpu 0")


# ---------------------------------------------------------------------------------------------
# a real sweep: 2 × 2 on tiny, ASHA, MLflow, killed and resumed, --apply

SWEEP_PARAMS = {
    "pretrain": {
        "device": "cpu",
        "batch_exams": 8,
        "max_batch_images": 64,
        "max_epochs": 3,
        "max_steps": None,
        "checkpoint_every": 2,
        "tsne_points": 0,
        "lr": 0.001,
    },
    "evaluate": {"bootstrap": 20},
    "tune": {"metric": "val_nmi", "grace_period": 1, "max_concurrent": 2},
}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {proc.returncode}) before the kill")
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the first finished trial")


def test_a_killed_sweep_resumes_every_trial_is_a_child_run_and_apply_edits_params(
    tiny_split, tmp_path
):
    from mlflow import MlflowClient

    params_file = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    params_file.write_text(original + "\n")
    for section, values in SWEEP_PARAMS.items():  # the tiny budget, applied with --apply's editor
        apply_to_params(params_file, {f"{section}.{k}": v for k, v in values.items()})
    assert load_params(params_file).pretrain.max_epochs == 3
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MEDSSL_TRACKING": "1"}
    out = tmp_path / "sweep"
    args = [
        MEDSSL, "tune", str(tiny_split), "--params", str(params_file), "--out", str(out),
        "-S", "pretrain.method=[pica,lsd]", "-S", "pica.lambda,lsd.lambda=[1,4]",
        "-S", f"pretrain.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        _wait_for(lambda: any(out.glob("trials/*/pretrain/pretrain.json")), proc, 300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, at once
        proc.wait()
    finished = {
        p.parent.parent.name: p.stat().st_mtime_ns
        for p in out.glob("trials/*/pretrain/pretrain.json")
    }
    assert finished and not (out / "results.csv").exists()

    second = medssl(*args[1:], "--resume", "--apply", env=env, timeout=600)
    assert second.code == 0, second.err[-3000:]
    assert "sweep 'sweep': 4 trials" in second.out and "applied to params" in second.out
    for key, mtime in finished.items():  # a trial finished before the kill was not rerun
        assert (out / "trials" / key / "pretrain" / "pretrain.json").stat().st_mtime_ns == mtime

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4
    assert set(results["status"]) <= {"completed", "stopped"}
    assert (results["status"] == "completed").sum() >= 1
    done = results[results["status"] == "completed"]
    assert done["epochs"].eq(3).all() and done["val_nmi"].notna().all()
    for name in ("summary.md", "best.json", "sweep.json", "sweep.png"):
        assert (out / name).is_file(), name

    # MLflow: one sweep run, every trial a child with its params and per-epoch metrics
    mc = MlflowClient(uri)
    exp = mc.get_experiment_by_name("medssl").experiment_id
    runs = mc.search_runs([exp])
    sweeps = [r for r in runs if r.data.tags.get("medssl.kind") == "sweep"]
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    sweep = sweeps[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert len(children) == 4  # the resumed trials reused their runs
    assert {(r.data.params["pretrain.method"], r.data.params["lsd.lambda"]) for r in children} == {
        (m, lam) for m in ("pica", "lsd") for lam in ("1.0", "4.0")
    }
    by_key = {r.data.tags["medssl.tune.trial"]: r for r in children}
    for _, row in results.iterrows():
        run = by_key[row["trial"]]
        epochs = mc.get_metric_history(run.info.run_id, "val_nmi")
        if row["status"] == "completed":
            assert run.info.status == "FINISHED"
            assert len({m.step for m in epochs}) >= 3
            assert run.data.metrics["test_f1_weighted"] == pytest.approx(row["test_f1_weighted"])
        else:
            assert run.info.status == "KILLED"
            assert run.data.tags["medssl.tune.stopped_early"] == "true"
    assert "best_val_nmi" in sweep.data.metrics
    artifacts = {a.path for a in mc.list_artifacts(sweep.info.run_id)}
    assert {"results.csv", "summary.md", "best.json", "sweep.png"} <= artifacts

    # --apply: the best configuration is in the params file, the rest of it unchanged
    best = json.loads((out / "best.json").read_text())
    applied = load_params(params_file)
    assert applied.pretrain.method == best["params"]["pretrain.method"]
    assert applied.method_params("lsd").lambda_ == best["params"]["lsd.lambda"]
    assert applied.method_params("pica").lambda_ == best["params"]["pica.lambda"]
    assert applied.pretrain.max_epochs == 3 and applied.split == load_params(NO_PARAMS).split
    assert set(FINAL_METRICS["pretrain"]) <= set(done.columns)

    # the same folder without --resume is refused rather than overwritten
    again = medssl(*args[1:], env=env)
    expect_error(again, 2, "--resume continues it")


# ---------------------------------------------------------------------------------------------
# a Ray cluster: a real head with the Jobs API on loopback, the sweep submitted as a Ray Job


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """`ray start --head` with the dashboard (Jobs API) in its own temp dir (short: Ray's socket
    paths have a length limit); stopped by killing exactly its processes (`ray stop` would stop
    every Ray on the machine)."""
    import shutil
    import tempfile

    temp = tempfile.mkdtemp(prefix="/tmp/medssl-rayhead-")
    dashboard = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray = str(Path(MEDSSL).parent / "ray")
    start = subprocess.run(
        [
            ray, "start", "--head", f"--port={_free_port()}", f"--dashboard-port={dashboard}",
            "--include-dashboard=true", "--num-cpus=1", f"--temp-dir={temp}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            "--disable-usage-stats",
        ],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run(["pkill", "-9", "-f", temp], check=False)
        shutil.rmtree(temp, ignore_errors=True)


def test_with_an_address_the_sweep_runs_as_a_ray_job_and_its_best_config_comes_back(
    ray_head, tiny_split, tmp_path
):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(SWEEP_PARAMS))
    out = tmp_path / "from-job"
    outcome = medssl(
        "tune", tiny_split, "--params", params_file, "--out", out, "--name", "job",
        "-S", "lsd.lambda=[1,4]", "-S", "pretrain.max_epochs=1", "-S", "pretrain.max_steps=null",
        "-S", f"pretrain.cache_dir={tmp_path / 'cache'}",
        "--address", ray_head, "--storage", f"file://{tmp_path / 'storage'}", "--no-track",
        env={"RAY_AUTH_MODE": "disabled"}, timeout=600,
    )  # fmt: skip
    assert outcome.code == 0, outcome.err[-3000:]
    assert "submitted Ray Job" in outcome.err and "succeeded; best: lsd.lambda=" in outcome.out
    # the job wrote the summary to the shared storage; the submitter fetched it from there
    stored = tmp_path / "storage" / "job" / "summary"
    assert (stored / "best.json").read_text() == (out / "best.json").read_text()
    assert json.loads((out / "best.json").read_text())["params"]["lsd.lambda"] in (1, 4)
    assert len(pd.read_csv(out / "results.csv")) == 2
    # the job read the dataset from the storage (the cluster's pods cannot see this machine's
    # folders): a self-contained copy, images included
    uploaded = tmp_path / "storage" / "job" / "dataset"
    assert json.loads((out / "sweep.json").read_text())["dataset"] == f"file://{uploaded}"
    assert (uploaded / "manifest.parquet").is_file()
    assert len(list((uploaded / "images").rglob("*.png"))) == len(
        pd.read_parquet(tiny_split / "manifest.parquet")
    )


def test_an_unreachable_cluster_is_one_line(capsys, tiny_split, tmp_path):
    out = cli(
        capsys, "tune", tiny_split, "--params", NO_PARAMS, "-S", "lsd.lambda=[1,2]",
        "--address", f"http://127.0.0.1:{_free_port()}", "--storage", "s3://bucket/sweeps",
        "--out", tmp_path / "o",
    )  # fmt: skip
    expect_error(out, 3, "Ray cluster http://127.0.0.1:")


def test_a_sweep_whose_every_trial_fails_is_a_failed_run(tiny_split, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(SWEEP_PARAMS))
    outcome = medssl(
        "tune", tiny_split, "--params", params_file, "--out", tmp_path / "sweep", "--no-track",
        "-S", "lsd.lambda=[1,4]", "-S", "pretrain.device=cuda:7", "--max-failures", "0",
        "-S", f"pretrain.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    line = expect_error(outcome, 1, "sweep 'sweep': no trial completed (2 failed")
    assert "cuda:7" in line  # the trials' own error, not a Ray traceback
    assert len(pd.read_csv(tmp_path / "sweep" / "results.csv")) == 2


def test_a_pretrain_train_trial_chains_the_stages_and_prefixes_the_pretrain_numbers(
    tiny_split, tmp_path
):
    """The chain without Ray (report=False): pretrain, train from its encoder, evaluate; the
    pretrain half's numbers reach the trial's run under pretrain/ and as pretrain_* finals."""
    from medssl.config import build_params
    from medssl.stages.tune import run_chain
    from medssl.tracking.base import NullTracker

    class Recorder(NullTracker):
        def __init__(self) -> None:
            self.keys: set[str] = set()

        def log_metrics(self, metrics, step=None) -> None:
            self.keys.update(metrics)

    raw = {
        **SWEEP_PARAMS,
        "pretrain": {**SWEEP_PARAMS["pretrain"], "max_epochs": 1, "cache_dir": str(tmp_path)},
        "train": {"device": "cpu", "max_epochs": 1, "batch_exams": 2, "cache_dir": str(tmp_path)},
    }
    raw.pop("tune")
    recorder = Recorder()
    final = run_chain(
        "pretrain-train", tiny_split, tmp_path / "t", build_params(raw), recorder, report=False
    )
    _, expected = reported_metrics("pretrain-train")
    # every number the chain promises a metric check (a multilabel model: no binary or
    # detection columns)
    assert set(expected) - set(BINARY_METRICS) - set(DETECTION_METRICS) <= set(final)
    assert any(k.startswith("pretrain/") for k in recorder.keys)  # the pretrain half, prefixed
    assert "val_f1_weighted" in recorder.keys  # the train half, as it is
    summary = json.loads((tmp_path / "t" / "train" / "train.json").read_text())
    assert summary["init"] == "checkpoint"  # trained from the trial's own encoder
