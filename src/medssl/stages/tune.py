"""Tune stage: a Ray Tune sweep over params.yaml keys (medssl.tuning), each trial running the same
stage functions as the pipeline, then the sweep's tables, plot and best configuration:

    results.csv      one row per trial: its searched values, status, epochs and final numbers
    summary.md       per configuration: median, quartiles, range and n of the metric; the best
    best.json        the best configuration (mean of the metric over seeds) as params.yaml keys
    sweep.png        the metric per value of `plot.x`, one box per `plot.hue` (paper 000 Fig. 5)
    sweep.json       what ran: space, metric, trials, budget, where the trials are
    trials/<key>/    each trial's stage folders (pretrain/, train/, eval/) and its MLflow run id
    ray/             Ray Tune's experiment (trial checkpoints); `--resume` continues it

A trial (`chain`):
    pretrain         pretrain → the Algorithm-1 table of the clusters (paper 000 Table 1)
    train            train → evaluate
    pretrain-train   pretrain → train from its encoder → evaluate

Every epoch is reported to Ray Tune (`ray.tune.report`, with the stage's latest checkpoint), so
ASHA stops bad trials early and a restarted trial continues from its checkpoint; the final report
carries the stage's numbers. With MLflow on, the sweep is one run and every trial a child run
(params, per-epoch and final metrics); the sweep run gets results, summary, plot and best config.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medssl.config import Params, TuneConfig, build_params
from medssl.errors import ConfigError, EnvironmentProblem, RunFailed
from medssl.fileio import atomic_write_text, partial_dir
from medssl.tracking.base import NullTracker, PrefixedTracker, Tracker
from medssl.tuning import (
    SEED_KEY,
    Dimension,
    assignments,
    base_config,
    build_space,
    override_texts,
    trial_name,
    trial_values,
    validate_space,
    value_text,
)

# what a trial reports: every epoch (the scheduler compares these) and at its end
EPOCH_METRICS = {
    "pretrain": ("train_loss", "val_nmi", "val_purity", "size_entropy"),
    "train": ("train_loss", "val_loss", "val_f1_weighted", "val_map"),
}
_ALGORITHM1 = (
    "test_f1_weighted",
    "test_precision_weighted",
    "test_recall_weighted",
    "test_prevalence_f1_weighted",
)
# what a binary model's evaluation adds (paper 004's columns): only its trials report them
BINARY_METRICS = ("test_auc", "test_accuracy", "test_sensitivity", "test_specificity", "test_mcr")
# what a detector's evaluation reports (paper 003 Table I-II)
DETECTION_METRICS = (
    "best_val_map", "test_map", "test_map50", "test_map_small", "test_ar100", "test_ar_small",
    "test_model_iou",
)  # fmt: skip
FINAL_METRICS = {
    "pretrain": (
        "val_nmi", "val_purity", "test_nmi", "test_purity", "size_entropy",
        "largest_cluster_share", *_ALGORITHM1,
    ),
    "train": ("best_val_f1_weighted", *_ALGORITHM1, *BINARY_METRICS, *DETECTION_METRICS),
}  # fmt: skip
SCHEDULER_METRIC = {"pretrain": "val_nmi", "train": "val_f1_weighted"}
DONE = "trial_done"  # 1 in a trial's final report
TRIALS_DIR = "trials"
RAY_DIR = "ray"
RUN_ID_FILE = "mlflow_run_id"
SWEEP_RUN_FILE = "sweep_run_id"
TRIAL_FILE = "trial.json"
RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
BEST_FILE = "best.json"
PLOT_FILE = "sweep.png"
SWEEP_FILE = "sweep.json"
TAG_TRIAL = "medssl.tune.trial"
TAG_SWEEP = "medssl.tune.sweep"


def reported_metrics(chain: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(per-epoch, final) numbers a trial of `chain` reports."""
    if chain == "pretrain":
        return EPOCH_METRICS["pretrain"], FINAL_METRICS["pretrain"]
    final = FINAL_METRICS["train"]
    if chain == "pretrain-train":
        final = (*final, *(f"pretrain_{k}" for k in FINAL_METRICS["pretrain"]))
    return EPOCH_METRICS["train"], final


def scheduler_metric(cfg: TuneConfig) -> str:
    epoch, _ = reported_metrics(cfg.chain)
    if cfg.scheduler_metric:
        return cfg.scheduler_metric
    return cfg.metric if cfg.metric in epoch else SCHEDULER_METRIC[_epoch_stage(cfg.chain)]


def _epoch_stage(chain: str) -> str:
    return "pretrain" if chain == "pretrain" else "train"


# ---------------------------------------------------------------------------------------------
# a trial (runs in a Ray worker)


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, besides its config (picklable: it travels to the workers)."""

    dataset: str
    base: dict[str, Any]
    dims: tuple[Dimension, ...]
    chain: str
    trials_dir: str
    threads: int
    checkpoints: bool
    tracking: dict[str, Any] | None = None  # uri, experiment_id, parent_run_id, tags


class _Reporter:
    """Engine callback: every epoch's numbers to Ray Tune, with the stage's newest checkpoint."""

    def __init__(self, stage: str, checkpoints: bool, report: bool) -> None:
        self.stage, self.checkpoints, self.report = stage, checkpoints, report
        self.last: dict[str, float] = {}
        self._sent_mtime = 0.0

    def on_step_end(self, trainer: Any, output: Any) -> None:
        pass

    def on_epoch_end(self, trainer: Any, record: dict[str, float]) -> None:
        self.last = {k: float(v) for k, v in record.items() if "/" not in k}
        if not self.report:
            return
        from ray import tune

        path = trainer.checkpoint_path
        if self.checkpoints:
            trainer.writer.wait()  # the checkpoint in flight, complete on disk
        if not (self.checkpoints and path is not None and path.is_file()):
            tune.report(self.last)
            return
        mtime = path.stat().st_mtime
        if mtime == self._sent_mtime:
            tune.report(self.last)
            return
        with tempfile.TemporaryDirectory(prefix="medssl-tune-ckpt-") as tmp:
            try:
                os.link(path, Path(tmp) / path.name)
            except OSError:
                shutil.copy2(path, Path(tmp) / path.name)
            (Path(tmp) / "stage").write_text(self.stage)
            tune.report(self.last, checkpoint=tune.Checkpoint.from_directory(tmp))
        self._sent_mtime = mtime


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune trainable: the trial's config applied to the base config, the chain run in
    trials/<key>/ (continuing a partial stage or reusing a finished one), final report."""
    import torch
    from ray import tune

    dims = list(ctx.dims)
    values = trial_values(config, dims)
    params = build_params(dict(ctx.base), override_texts(values))
    key = trial_key(tune.get_context().get_trial_id())
    tdir = Path(ctx.trials_dir) / key
    tdir.mkdir(parents=True, exist_ok=True)
    name = trial_name(config, dims)
    atomic_write_text(
        tdir / TRIAL_FILE, json.dumps({"name": name, "values": values}, indent=2) + "\n"
    )
    torch.set_num_threads(max(1, ctx.threads))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            _restore_checkpoint(Path(d), tdir)
    tracker, finish = _trial_tracker(ctx, tdir, name, key, params)
    try:
        dataset = materialize(ctx.dataset) if "://" in ctx.dataset else Path(ctx.dataset)
        final = run_chain(ctx.chain, dataset, tdir, params, tracker, ctx.checkpoints)
    except BaseException as exc:
        finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.log_metrics(final)
    finish("FINISHED")
    tune.report({**final, DONE: 1.0})


def run_chain(
    chain: str,
    dataset: Path,
    tdir: Path,
    params: Params,
    tracker: Tracker,
    checkpoints: bool = True,
    report: bool = True,
) -> dict[str, float]:
    """The trial's stages, each through its stage function; the final numbers (with the last
    epoch's, so the scheduler's metric is in the final report too)."""
    from medssl.stages.evaluate import evaluate, flat_metrics
    from medssl.stages.pretrain import pretrain
    from medssl.stages.train import train

    out: dict[str, float] = {}
    if chain in ("pretrain", "pretrain-train"):
        first = chain == "pretrain"
        reporter = _Reporter("pretrain", checkpoints, report and first)
        folder = tdir / "pretrain"
        metrics = _finished(folder)
        if metrics is None:
            result = pretrain(
                dataset, folder, params.pretrain,
                hparams=params.method_params(params.pretrain.method),
                resume=_has_partial(folder), progress=False,
                tracker=tracker if first else PrefixedTracker(tracker, "pretrain/"),
                evaluate_cfg=params.evaluate, callbacks=[reporter],
            )  # fmt: skip
            metrics = flat_metrics(result.metrics)
        if first:
            return {**reporter.last, **metrics}
        out = {f"pretrain_{k}": v for k, v in metrics.items()}
        params = build_params(
            params.dump(),
            override_texts(
                {"train.init": "checkpoint", "train.weights": str(folder / "encoder.pt")}
            ),
        )
    reporter = _Reporter("train", checkpoints, report)
    folder = tdir / "train"
    summary_file = folder / "train.json"
    if not summary_file.is_file():
        train(
            dataset, folder, params.train, resume=_has_partial(folder), progress=False,
            tracker=tracker, hparams=params.method_params(params.train.method),
            callbacks=[reporter],
        )  # fmt: skip
    summary = json.loads(summary_file.read_text())
    scored = evaluate(folder, tdir / "eval", params.evaluate, tracker=tracker)
    out.update(flat_metrics(scored.metrics))
    monitor = summary.get("monitor") or "val_f1_weighted"
    best = summary.get("best_val_score", summary.get("best_val_f1_weighted"))
    if best is not None:
        out[f"best_{monitor}"] = float(best)
    return {**reporter.last, **out}


def trial_key(trial_id: str) -> str:
    """A trial's folder name, from Ray's trial id (kept by `Tuner.restore`, so a resumed sweep
    finds the folder; unique even when two trials draw the same values)."""
    return f"trial-{trial_id}"


_TRIAL_DIR = re.compile(r"^run_trial_([0-9a-f]+_\d+)_")


def _trial_id(res: Any) -> str:
    """A result's trial id: reported, or from its Ray folder name (a trial that never
    reported)."""
    found = (res.metrics or {}).get("trial_id")
    if found:
        return str(found)
    m = _TRIAL_DIR.match(Path(str(res.path)).name)
    return m.group(1) if m else Path(str(res.path)).name


def _finished(folder: Path) -> dict[str, float] | None:
    from medssl.stages.evaluate import flat_metrics

    if not (folder / "pretrain.json").is_file():
        return None
    return flat_metrics(json.loads((folder / "metrics.json").read_text()))


def _has_partial(folder: Path) -> bool:
    return (partial_dir(folder) / "checkpoints" / "last.pt").is_file()


def _restore_checkpoint(ckpt: Path, tdir: Path) -> None:
    """A Ray Tune checkpoint (from another node, or the storage) into the stage's staging
    folder, unless the local one is there already."""
    stage_file = ckpt / "stage"
    if not stage_file.is_file():
        return
    target = partial_dir(tdir / stage_file.read_text().strip()) / "checkpoints" / "last.pt"
    source = ckpt / "last.pt"
    if source.is_file() and not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _trial_tracker(
    ctx: TrialContext, tdir: Path, name: str, key: str, params: Params
) -> tuple[Tracker, Any]:
    """The trial's child MLflow run under the sweep run (the same run again when a restarted
    trial continues), and a function that ends it with a status."""
    if not ctx.tracking:
        return NullTracker(), lambda status: None

    from medssl.tracking.runs import TAG_KIND, MlflowTracker, client

    os.environ["MLFLOW_TRACKING_URI"] = ctx.tracking["uri"]
    mc = client()
    exp, parent = ctx.tracking["experiment_id"], ctx.tracking["parent_run_id"]
    run_id = _reopen(mc, tdir / RUN_ID_FILE)
    new = not run_id
    if new:
        run = mc.create_run(
            exp,
            run_name=name,
            tags={
                **ctx.tracking.get("tags", {}),
                TAG_KIND: "trial",
                TAG_TRIAL: key,
                TAG_SWEEP: parent,
                "mlflow.parentRunId": parent,
            },
        )
        run_id = run.info.run_id
        atomic_write_text(tdir / RUN_ID_FILE, run_id + "\n")
    tracker = MlflowTracker(mc, run_id, stage="tune", parent_run_id=parent, experiment_id=exp)
    if new:  # a reopened run has them (MLflow refuses to log a param twice)
        tracker.log_params(base_config(params))

    def finish(status: str) -> None:
        with suppress(Exception):
            mc.set_terminated(run_id, status)

    return tracker, finish


# ---------------------------------------------------------------------------------------------
# the sweep (the driver)


@dataclass
class SweepResult:
    out_dir: Path
    name: str
    metric: str
    mode: str
    trials: int
    completed: int
    stopped: int
    errored: int
    best: dict[str, Any] | None
    seconds: float
    sweep_run_id: str | None = None
    applied: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [
            f"sweep {self.name!r}: {self.trials} trials ({self.completed} completed, "
            f"{self.stopped} stopped early, {self.errored} failed) in {self.seconds:.0f} s"
        ]
        if self.best:
            shown = ", ".join(f"{k}={v}" for k, v in self.best["values"].items())
            lines.append(
                f"best: {shown} → {self.metric} {self.best['value']:.4f} "
                f"(mean of {self.best['trials']} seed(s), {self.mode})"
            )
        if self.applied:
            lines.append(f"applied to params: {', '.join(self.applied)}")
        if self.sweep_run_id:
            lines.append(f"MLflow sweep run {self.sweep_run_id}")
        lines.append(f"wrote {self.out_dir}/: {', '.join(sorted(self.paths))}")
        return "\n".join(lines)


@dataclass(frozen=True)
class SweepPlan:
    dims: list[Dimension]
    metric: str
    scheduler_metric: str
    num_samples: int = 1

    @property
    def trials(self) -> int:
        """Trials the sweep runs: the grid's size × num_samples."""
        n = self.num_samples
        for dim in self.dims:
            n *= len(dim.values) if dim.kind == "grid" else 1
        return n

    @property
    def searched(self) -> list[Dimension]:
        return [d for d in self.dims if d.searched]


def plan_sweep(params: Params, cfg: TuneConfig, cli_space: Mapping[str, Any]) -> SweepPlan:
    """Everything that can be wrong with a sweep, found before a trial starts: the space's keys
    and values, the metric, the resources."""
    dims = build_space({**cfg.space, **cli_space}, cfg.seeds)
    base = base_config(params)
    validate_space(base, dims)
    epoch, final = reported_metrics(cfg.chain)
    known = dict.fromkeys([*final, *epoch])
    if cfg.metric not in known:
        raise ConfigError(
            f"tune.metric {cfg.metric!r}: no {cfg.chain} trial reports it "
            f"(reported: {', '.join(known)})"
        )
    sched = scheduler_metric(cfg)
    if cfg.scheduler == "asha" and sched not in epoch:
        raise ConfigError(
            f"tune.scheduler_metric {sched!r}: not reported every epoch by a {cfg.chain} trial "
            f"(every epoch: {', '.join(epoch)})"
        )
    for key in ("cpu", "gpu"):
        if cfg.resources.get(key, 0) < 0:
            raise ConfigError(f"tune.resources.{key} must be >= 0")
    _plot_keys(dims, cfg)
    cpus = cfg.resources.get("cpu", 1)
    if not cfg.address and cpus > (os.cpu_count() or 1):
        raise EnvironmentProblem(
            f"tune.resources.cpu={cpus:g} per trial but this machine has {os.cpu_count()} CPUs: "
            "Ray would keep every trial PENDING; use --cpu 1, or --address of a Ray cluster"
        )
    gpus = cfg.resources.get("gpu", 0)
    if gpus > 0 and not cfg.address:
        have = _local_gpus()
        if have < gpus:
            raise EnvironmentProblem(
                f"tune.resources.gpu={gpus:g} per trial but this machine has {have} GPU(s): Ray "
                "would keep every trial PENDING; use --gpu 0, or --address of a Ray cluster with "
                "GPU workers"
            )
    return SweepPlan(dims, cfg.metric, sched, cfg.num_samples)


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def tune_sweep(
    dataset_dir: Path,
    out_dir: Path,
    params: Params,
    cfg: TuneConfig,
    cli_space: Mapping[str, Any] | None = None,
    *,
    name: str = "sweep",
    resume: bool = False,
    progress: bool = True,
    track: bool = True,
) -> SweepResult:
    """Run the sweep locally (Ray in local mode, or inside a Ray Job on a cluster) and write the
    sweep folder (see the module doc). `resume` continues a killed sweep in `out_dir`: finished
    trials are kept, unfinished ones continue from their checkpoints."""
    from medssl.data.contract import read_info

    started = time.perf_counter()
    plan = plan_sweep(params, cfg, cli_space or {})
    dataset_uri = str(dataset_dir) if "://" in str(dataset_dir) else None
    dataset_dir = materialize(dataset_uri) if dataset_uri else Path(dataset_dir).resolve()
    read_info(dataset_dir)
    out_dir = Path(out_dir).resolve()
    storage = cfg.storage or str(out_dir / RAY_DIR)
    if resume and not can_restore(storage, name):
        raise ConfigError(f"--resume: no sweep {name!r} in {storage} to continue")
    if not resume and can_restore(storage, name):
        raise ConfigError(
            f"{out_dir} holds sweep {name!r} already: --resume continues it, or choose "
            "another --out (or delete it)"
        )
    if resume:
        _check_same_sweep(out_dir, plan, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _absolute_paths(base_config(params))
    fixed_values = {
        k: v for d in plan.dims if not d.searched for k, v in assignments(d, d.values[0]).items()
    }
    fixed = build_params(dict(base), override_texts(fixed_values)).dump()  # every trial's
    sweep_run, tracking = _sweep_run(out_dir, params, cfg, plan, dataset_dir, name, resume, track)
    ctx = TrialContext(
        dataset=dataset_uri or str(dataset_dir),  # a URI: every node fetches its own copy
        base=base,
        dims=tuple(plan.dims),
        chain=cfg.chain,
        trials_dir=str(out_dir / TRIALS_DIR),
        threads=max(1, int(cfg.resources.get("cpu", 1))),
        checkpoints=cfg.checkpoints,
        tracking=tracking,
    )
    sweep_info = {
        "name": name,
        "dataset": dataset_uri or str(dataset_dir),
        "chain": cfg.chain,
        "space": [d.describe() for d in plan.dims],
        "metric": cfg.metric,
        "mode": cfg.mode,
        "scheduler": cfg.scheduler,
        "scheduler_metric": plan.scheduler_metric,
        "num_samples": cfg.num_samples,
        "resources": cfg.resources,
        "storage": storage,
        "budget": {k: fixed[k] for k in ("pretrain", "train") if k in cfg.chain},
        "sweep_run_id": sweep_run.run_id,
    }
    atomic_write_text(out_dir / SWEEP_FILE, json.dumps(sweep_info, indent=2, default=str) + "\n")
    status = "FAILED"
    try:
        grid = _run_ray(ctx, cfg, plan, storage, name, resume, progress)
        frame = results_frame(grid, plan, cfg.chain)
        result = write_summary(out_dir, frame, plan, cfg, name)
        result.seconds = round(time.perf_counter() - started, 1)
        result.sweep_run_id = sweep_run.run_id
        _log_sweep(sweep_run, result, cfg.metric)
        _mark_stopped(out_dir / TRIALS_DIR, frame, tracking)
        if result.trials and not result.completed:
            errors = frame["error"].dropna() if "error" in frame else pd.Series(dtype=str)
            first = f": {errors.iloc[0]}" if len(errors) else ""
            raise RunFailed(
                f"sweep {name!r}: no trial completed ({result.errored} failed, {result.stopped} "
                f"stopped; {out_dir / RESULTS_FILE}){first}"
            )
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _end_sweep_run(sweep_run, tracking, status)
    if "://" in storage:
        publish_summary(out_dir, storage, name)
    return result


def _check_same_sweep(out_dir: Path, plan: SweepPlan, cfg: TuneConfig) -> None:
    """--resume continues the sweep that ran: the same space, chain and metric (restored trials
    keep their configs; another space would map them to other values)."""
    try:
        old = json.loads((out_dir / SWEEP_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return
    new = {"space": [d.describe() for d in plan.dims], "chain": cfg.chain, "metric": cfg.metric}
    for key, value in new.items():
        if old.get(key) != value:
            raise ConfigError(
                f"--resume: {out_dir} ran {key} {old.get(key)!r}, this command gives {value!r}: "
                "resume with the same preset, -S, --seeds and --metric (or another --out)"
            )


def _absolute_paths(base: dict[str, Any]) -> dict[str, Any]:
    """Relative paths of the config made absolute: trials may run in another directory."""
    for section in ("pretrain", "train"):
        cache = base[section].get("cache_dir")
        if cache and not os.path.isabs(cache):
            base[section]["cache_dir"] = str(Path(cache).resolve())
    weights = base["train"].get("weights")
    if weights and "://" not in weights and not os.path.isabs(weights):
        base["train"]["weights"] = str(Path(weights).resolve())
    return base


def can_restore(storage: str, name: str) -> bool:
    from ray import tune

    path = f"{storage.rstrip('/')}/{name}"
    if "://" not in storage and not Path(path).is_dir():
        return False
    try:
        return tune.Tuner.can_restore(path)
    except Exception:
        return False


def _run_ray(
    ctx: TrialContext,
    cfg: TuneConfig,
    plan: SweepPlan,
    storage: str,
    name: str,
    resume: bool,
    progress: bool,
) -> Any:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Ctrl-C / SIGTERM: KeyboardInterrupt (the sweep run ends KILLED, exit 130, nothing applied),
    # not Ray's handler, which ends fit() as if the sweep were complete
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        # inside a Ray Job the cluster is there already (RAY_ADDRESS); else a local one
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=True,
        )
    # a failed trial is one line from _Progress, and results.csv keeps its error: not Ray's
    # traceback on the terminal
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    resources = {k: float(v) for k, v in cfg.resources.items() if v}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            metric=plan.scheduler_metric,
            mode=cfg.mode,
            grace_period=cfg.grace_period,
            reduction_factor=cfg.reduction_factor,
            max_t=10**6,
        )
        if cfg.scheduler == "asha"
        else FIFOScheduler()
    )
    if resume:
        tuner = tune.Tuner.restore(
            f"{storage.rstrip('/')}/{name}",
            trainable,
            resume_unfinished=True,
            resume_errored=True,
        )
    else:
        cpus = ray.cluster_resources().get("CPU", 1)
        per_trial = max(resources.get("CPU", 1), 1e-3)
        concurrent = cfg.max_concurrent or max(1, int(cpus // per_trial))
        tuner = tune.Tuner(
            trainable,
            param_space={d.key: d.ray() for d in plan.dims},
            tune_config=tune.TuneConfig(
                num_samples=cfg.num_samples,
                scheduler=scheduler,
                max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                verbose=0,
                callbacks=[_progress(plan, progress)],
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    return tuner.fit()


def _progress(plan: SweepPlan, progress: bool) -> Any:
    """A Ray Tune callback printing one line per finished or failed trial (instead of Ray's
    status tables); the Ray import stays inside the sweep."""
    from ray.tune import Callback

    class Progress(Callback):
        done = 0

        def _say(self, trial: Any, text: str) -> None:
            self.done += 1
            name = trial_name(trial.config, plan.dims)
            print(
                f"[{time.strftime('%H:%M:%S')}] trial {self.done}/{plan.trials} {name}: {text}",
                file=sys.stderr,
                flush=True,
            )

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
            last = trial.last_result or {}
            if not progress:
                return
            if last.get(DONE) is None:
                self._say(trial, f"stopped early at epoch {last.get('training_iteration', '?')}")
            else:
                self._say(trial, f"{plan.metric} {last.get(plan.metric, float('nan')):.4f}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any):
            self._say(trial, f"failed: {_last_line(trial.error_file)}")

    return Progress()


def _last_line(path: str | None) -> str:
    """The last line of a trial's error file (the exception), or where to look."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "see the Ray logs"


def results_frame(grid: Any, plan: SweepPlan, chain: str) -> pd.DataFrame:
    """One row per trial: its searched values, status, epochs and final numbers."""
    epoch, final = reported_metrics(chain)
    rows = []
    for res in grid:
        config = res.config or {}
        metrics = res.metrics or {}
        row: dict[str, Any] = {"trial": trial_key(_trial_id(res))}
        for dim in plan.searched:  # a variant as text (a/b): a column pandas can sort
            value = config.get(dim.key)
            row[dim.key] = value_text(value) if dim.zipped else value
        # the configuration (seeds pooled) as JSON: its values keep their types (int, null)
        row["config"] = json.dumps(
            {d.key: config.get(d.key) for d in plan.searched if d.key != SEED_KEY}, sort_keys=True
        )
        if res.error is not None:
            status = "failed"
            text = str(res.error).strip().splitlines()
            row["error"] = (text[-1] if text else type(res.error).__name__)[:300]
        elif metrics.get(DONE):
            status = "completed"
        else:
            status = "stopped"
        row["status"] = status
        row["epochs"] = metrics.get("training_iteration", 0) - (1 if status == "completed" else 0)
        for key in dict.fromkeys([*final, *epoch]):
            if key in metrics:
                row[key] = metrics[key]
        rows.append(row)
    frame = pd.DataFrame(rows)
    order = [d.key for d in plan.searched if d.key in frame]
    return frame.sort_values(order, kind="stable").reset_index(drop=True) if order else frame


def best_config(frame: pd.DataFrame, plan: SweepPlan, mode: str) -> dict[str, Any] | None:
    """The configuration (seeds pooled) with the best mean metric among completed trials."""
    done = frame[frame["status"] == "completed"] if "status" in frame else frame
    if done.empty or plan.metric not in done:
        return None
    grouped = done.groupby("config")[plan.metric].agg(["mean", "count"]).reset_index()
    best = grouped.loc[grouped["mean"].idxmax() if mode == "max" else grouped["mean"].idxmin()]
    space_values = json.loads(best["config"])
    params_values: dict[str, Any] = {}
    for dim in plan.searched:
        if dim.key in space_values:
            params_values.update(assignments(dim, space_values[dim.key]))
    return {
        "metric": plan.metric,
        "mode": mode,
        "value": float(best["mean"]),
        "trials": int(best["count"]),
        "values": space_values,
        "params": params_values,
    }


def summary_table(frame: pd.DataFrame, plan: SweepPlan) -> pd.DataFrame:
    """Per configuration (seeds pooled): n, median, quartiles, min, max and mean of the metric."""
    done = frame[frame["status"] == "completed"]
    keys = [d.key for d in plan.searched if d.key != SEED_KEY] or [SEED_KEY]
    if done.empty or plan.metric not in done:
        return pd.DataFrame(columns=[*keys, "n", "median", "q25", "q75", "min", "max", "mean"])
    g = done.groupby(keys, dropna=False)[plan.metric]
    table = pd.DataFrame(
        {
            "n": g.count(),
            "median": g.median(),
            "q25": g.quantile(0.25),
            "q75": g.quantile(0.75),
            "min": g.min(),
            "max": g.max(),
            "mean": g.mean(),
        }
    ).reset_index()
    return table


def write_summary(
    out_dir: Path, frame: pd.DataFrame, plan: SweepPlan, cfg: TuneConfig, name: str
) -> SweepResult:
    """results.csv, summary.md, best.json and the box plot."""
    from medssl.plots import plot_sweep

    atomic_write_text(out_dir / RESULTS_FILE, frame.to_csv(index=False))
    best = best_config(frame, plan, cfg.mode)
    atomic_write_text(out_dir / BEST_FILE, json.dumps(best, indent=2) + "\n")
    table = summary_table(frame, plan)
    counts = frame["status"].value_counts().to_dict() if "status" in frame else {}
    lines = [
        f"# Sweep {name}: {cfg.metric} ({cfg.mode})",
        "",
        "Space: " + "; ".join(d.describe() for d in plan.dims),
        f"Trials: {len(frame)} ({counts.get('completed', 0)} completed, "
        f"{counts.get('stopped', 0)} stopped early by {cfg.scheduler}, "
        f"{counts.get('failed', 0)} failed)",
        "",
        markdown_table(table),
    ]
    if best:
        shown = ", ".join(f"{k}={v}" for k, v in best["values"].items())
        lines += ["", f"Best: {shown}: mean {cfg.metric} {best['value']:.4f} over {best['trials']}"]
    atomic_write_text(out_dir / SUMMARY_FILE, "\n".join(lines) + "\n")
    paths = {n: out_dir / n for n in (RESULTS_FILE, SUMMARY_FILE, BEST_FILE, SWEEP_FILE)}
    x, hue = _plot_keys(plan.dims, cfg)
    done = frame[frame["status"] == "completed"]
    if x is not None and not done.empty and cfg.metric in done:
        plot_sweep(done, x, hue, cfg.metric, out_dir / PLOT_FILE, f"{name}: {cfg.metric}")
        paths[PLOT_FILE] = out_dir / PLOT_FILE
    return SweepResult(
        out_dir=out_dir,
        name=name,
        metric=cfg.metric,
        mode=cfg.mode,
        trials=len(frame),
        completed=int(counts.get("completed", 0)),
        stopped=int(counts.get("stopped", 0)),
        errored=int(counts.get("failed", 0)),
        best=best,
        seconds=0.0,
        paths=paths,
    )


def _plot_keys(dims: list[Dimension], cfg: TuneConfig) -> tuple[str | None, str | None]:
    """sweep.png's x and hue keys: tune.plot's, else the last searched key and the first other
    one."""
    keys = [d.key for d in dims if d.searched and d.key != SEED_KEY]
    x = cfg.plot.get("x") or (keys[-1] if keys else None)
    hue = cfg.plot.get("hue") or next((k for k in keys if k != x), None)
    for key in (x, hue):
        if key is not None and key not in keys:
            raise ConfigError(f"tune.plot: {key!r} is not a searched key ({', '.join(keys)})")
    return x, hue


def markdown_table(table: pd.DataFrame, empty: str = "(no completed trial)") -> str:
    """A Markdown table of a frame (floats to 4 decimals)."""
    if table.empty:
        return empty
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = []
    for _, row in table.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


# ---------------------------------------------------------------------------------------------
# MLflow: the sweep run


def _sweep_run(
    out_dir: Path,
    params: Params,
    cfg: TuneConfig,
    plan: SweepPlan,
    dataset_dir: Path,
    name: str,
    resume: bool,
    track: bool,
) -> tuple[Tracker, dict[str, Any] | None]:
    from medssl.tracking.runs import tracking_enabled

    if not (track and tracking_enabled()):
        return NullTracker(), None

    from medssl.tracking.runs import (
        TAG_KIND,
        MlflowTracker,
        base_tags,
        client,
        experiment_id,
        git_commit,
    )
    from medssl.tracking.uri import tracking_uri

    mc = client()
    exp = experiment_id(mc, params.register_.experiment)
    tags = base_tags(git_commit(), dataset_dir)
    id_file = out_dir / SWEEP_RUN_FILE
    run_id = _reopen(mc, id_file) if resume else ""
    if not run_id:
        run = mc.create_run(exp, run_name=f"tune-{name}", tags={**tags, TAG_KIND: "sweep"})
        run_id = run.info.run_id
        atomic_write_text(id_file, run_id + "\n")
        tracker = MlflowTracker(mc, run_id, stage="tune", experiment_id=exp)
        tracker.log_params(
            {
                "tune.chain": cfg.chain,
                "tune.metric": cfg.metric,
                "tune.mode": cfg.mode,
                "tune.scheduler": cfg.scheduler,
                "tune.scheduler_metric": plan.scheduler_metric,
                "tune.seeds": cfg.seeds,
                "tune.num_samples": cfg.num_samples,
                "tune.resources": cfg.resources,
                **{f"space.{d.key}": d.describe() for d in plan.dims},
            }
        )
    tracker = MlflowTracker(mc, run_id, stage="tune", experiment_id=exp)
    uri = tracking_uri()
    tracking = {
        "uri": uri,
        "experiment_id": exp,
        "parent_run_id": run_id,
        "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")},
    }
    return tracker, tracking


def _log_sweep(tracker: Tracker, result: SweepResult, metric: str) -> None:
    if result.best:
        tracker.log_metrics({f"best_{metric}": result.best["value"]})
        # tags, not params: a resumed sweep may find another best
        tracker.set_tags({f"best.{k}": v for k, v in result.best["params"].items()})
    tracker.log_metrics(
        {
            "trials": result.trials,
            "trials_completed": result.completed,
            "trials_stopped": result.stopped,
            "trials_failed": result.errored,
        }
    )
    for path in result.paths.values():
        tracker.log_artifact(path)


def _mark_stopped(trials_dir: Path, frame: pd.DataFrame, tracking: dict[str, Any] | None) -> None:
    """Trials the scheduler stopped end KILLED, tagged medssl.tune.stopped_early (their
    process was ended from outside)."""
    if tracking is None or frame.empty:
        return
    from medssl.tracking.runs import client

    mc = client()
    for key in frame.loc[frame["status"] == "stopped", "trial"]:
        id_file = trials_dir / key / RUN_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
            with suppress(Exception):
                mc.set_tag(run_id, "medssl.tune.stopped_early", "true")
                mc.set_terminated(run_id, "KILLED")


def _end_sweep_run(tracker: Tracker, tracking: dict[str, Any] | None, status: str) -> None:
    """End the sweep run, and the trial runs a scheduler stopped (their process was killed
    before it could) as KILLED."""
    if tracking is None or tracker.run_id is None:
        return
    from medssl.tracking.runs import client

    mc = client()
    with suppress(Exception):
        running = mc.search_runs(
            [tracking["experiment_id"]],
            filter_string=(
                f"tags.`{TAG_SWEEP}` = '{tracker.run_id}' and attributes.status = 'RUNNING'"
            ),
        )
        for run in running:
            mc.set_tag(run.info.run_id, "medssl.tune.stopped_early", "true")
            mc.set_terminated(run.info.run_id, "KILLED")
    with suppress(Exception):
        mc.set_terminated(tracker.run_id, status)


def _reopen(mc: Any, id_file: Path) -> str:
    """The MLflow run whose id `id_file` holds, set RUNNING again ("" when there is none)."""
    from mlflow.exceptions import MlflowException

    run_id = id_file.read_text().strip() if id_file.is_file() else ""
    if run_id:
        try:
            mc.update_run(run_id, status="RUNNING")
        except MlflowException:
            return ""
    return run_id


def sweep_summary(out_dir: Path) -> dict[str, Any]:
    """sweep.json and best.json of a finished sweep folder (for KFP and `--apply` later)."""
    out_dir = Path(out_dir)
    info = json.loads((out_dir / SWEEP_FILE).read_text())
    info["best"] = json.loads((out_dir / BEST_FILE).read_text())
    return info


# ---------------------------------------------------------------------------------------------
# a Ray cluster: the sweep as a Ray Job, its summary through the shared storage

JOB_ENV = "MEDSSL_TUNE_JOB"  # set inside the job: run there, do not submit again
SUMMARY_DIR = "summary"  # <storage>/<name>/summary/: best.json, results.csv … of a cluster sweep
# forwarded to the job: where MLflow and S3 are, never a credential (the cluster has its own)
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MEDSSL_TRACKING", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def job_entrypoint(
    cfg: TuneConfig, dataset: Path | str, out_dir: Path | str, preset: str | None,
    cli_space: Mapping[str, Any], name: str,
) -> str:  # fmt: skip
    """The `medssl tune` command the Ray Job runs on the cluster (params.yaml travels in the
    job's working_dir; the settings given here are passed as flags)."""
    import shlex

    args = ["medssl", "tune", str(dataset), "--out", str(out_dir), "--name", name]
    args += ["--params", "params.yaml"]
    if preset:
        args += ["--preset", preset]
    for key, value in cli_space.items():
        args += ["-S", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    args += [
        "--chain", cfg.chain, "--metric", cfg.metric, "--mode", cfg.mode,
        "--seeds", str(cfg.seeds), "--samples", str(cfg.num_samples),
        "--scheduler", cfg.scheduler, "--max-concurrent", str(cfg.max_concurrent),
        "--max-failures", str(cfg.max_failures),
        "--cpu", f"{cfg.resources.get('cpu', 1):g}", "--gpu", f"{cfg.resources.get('gpu', 0):g}",
    ]  # fmt: skip
    if cfg.storage:
        args += ["--storage", cfg.storage]
    return shlex.join(args)


def submit_sweep(
    cfg: TuneConfig, dataset: Path, out_dir: Path, params_file: Path, preset: str | None,
    cli_space: Mapping[str, Any], name: str, *, resume: bool = False, track: bool = True,
    poll_s: float = 2.0,
) -> str:  # fmt: skip
    """Submit the sweep to the Ray cluster at `cfg.address` as a Ray Job (`JobSubmissionClient`),
    stream its log, wait, and copy the summary (best.json …) from the storage into `out_dir`."""
    from medssl.errors import ServiceError

    if not cfg.storage or "://" not in cfg.storage:
        raise ConfigError(
            "--address: trials on a cluster need shared storage: --storage s3://bucket/prefix"
        )
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(cfg.address)
    except Exception as exc:
        raise ServiceError(f"Ray cluster {cfg.address}: {str(exc).splitlines()[0][:200]}") from None
    if "://" not in str(dataset):  # the cluster's pods cannot see this machine's folders
        uri = f"{cfg.storage.rstrip('/')}/{name}/dataset"
        if not resume:  # a resumed sweep reads the copy it was given
            upload_dataset(Path(dataset), uri)
            print(f"uploaded the dataset to {uri}", file=sys.stderr, flush=True)
        dataset = uri
    with tempfile.TemporaryDirectory(prefix="medssl-tune-job-") as tmp:
        shutil.copy2(params_file, Path(tmp) / "params.yaml")
        env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        if not track:
            env["MEDSSL_TRACKING"] = "0"
        entrypoint = job_entrypoint(cfg, dataset, out_dir, preset, cli_space, name)
        if resume:
            entrypoint += " --resume"
        deadline = time.monotonic() + 60
        while True:  # a cluster just started answers "no available agent … try again" a while
            try:
                job = client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env={"working_dir": tmp, "env_vars": {**env, JOB_ENV: "1"}},
                    metadata={"medssl.sweep": name},
                )
                break
            except RuntimeError as exc:
                if "try again" in str(exc) and time.monotonic() < deadline:
                    time.sleep(poll_s)
                    continue
                reason = str(exc).splitlines()[0][:300]
                raise ServiceError(f"Ray cluster {cfg.address} refused the job: {reason}") from None
    print(f"submitted Ray Job {job} to {cfg.address}", file=sys.stderr, flush=True)
    shown = 0
    try:
        while True:
            status = client.get_job_status(job)
            logs = client.get_job_logs(job)
            if len(logs) > shown:
                sys.stderr.write(logs[shown:])
                sys.stderr.flush()
                shown = len(logs)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:  # Ctrl-C here stops the job too (it would run on unwatched)
        with suppress(Exception):
            client.stop_job(job)
        raise
    if status != JobStatus.SUCCEEDED:
        last = next((line for line in reversed(logs.splitlines()) if line.strip()), "")
        raise ServiceError(f"Ray Job {job} {status.value.lower()}: {last[:300]}")
    fetch_summary(cfg.storage, name, Path(out_dir))
    best = json.loads((Path(out_dir) / BEST_FILE).read_text())
    shown_best = ", ".join(f"{k}={v}" for k, v in (best or {}).get("values", {}).items())
    return (
        f"Ray Job {job} succeeded; best: {shown_best or 'none'}\n"
        f"wrote {out_dir}/: {', '.join(sorted(p.name for p in Path(out_dir).iterdir()))}"
    )


def _storage_fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def upload_dataset(dataset_dir: Path, uri: str) -> str:
    """A self-contained copy of a dataset folder (its tables, and its images even when they live
    in the archive it was split from) at `uri`, for a cluster's nodes to fetch (`materialize`)."""
    import pyarrow.fs
    import yaml

    from medssl.data.contract import INFO_FILE, MANIFEST_FILE, image_dir, read_info

    info = read_info(dataset_dir)
    fs, root = _storage_fs(uri)
    fs.create_dir(root, recursive=True)
    local = pyarrow.fs.LocalFileSystem()
    for item in Path(dataset_dir).iterdir():
        if item.is_file() and item.name != INFO_FILE:
            pyarrow.fs.copy_files(str(item), f"{root}/{item.name}", local, fs)
    images = image_dir(dataset_dir, info)  # the manifest's paths are relative to it
    manifest = pd.read_parquet(Path(dataset_dir) / MANIFEST_FILE, columns=["image"])
    for top in sorted({p.split("/", 1)[0] for p in manifest["image"]}):
        pyarrow.fs.copy_files(str(images / top), f"{root}/{top}", local, fs, use_threads=True)
    raw = yaml.safe_load((Path(dataset_dir) / INFO_FILE).read_text())
    raw["image_root"] = "."
    with fs.open_output_stream(f"{root}/{INFO_FILE}") as stream:
        stream.write(yaml.safe_dump(raw, sort_keys=False).encode())
    return uri


def materialize(uri: str) -> Path:
    """A dataset at a storage URI as a local folder, downloaded once per node (a lock keeps
    concurrent trials from fetching it twice; a `.complete` marker from using half a copy)."""
    import fcntl
    import hashlib

    import pyarrow.fs

    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "medssl-datasets" / digest
    done = target / ".complete"
    if done.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(target, ignore_errors=True)
            fs, root = _storage_fs(uri)
            if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
                raise ConfigError(f"no dataset at {uri}")
            pyarrow.fs.copy_files(root, str(target), fs, pyarrow.fs.LocalFileSystem())
            done.write_text(uri + "\n")
    return target


def publish_summary(out_dir: Path, storage: str, name: str) -> None:
    """The sweep's summary files into <storage>/<name>/summary/ (where the submitter reads)."""
    fs, root = _storage_fs(storage)
    target = f"{root.rstrip('/')}/{name}/{SUMMARY_DIR}"
    fs.create_dir(target, recursive=True)
    for fname in (RESULTS_FILE, SUMMARY_FILE, BEST_FILE, SWEEP_FILE, PLOT_FILE):
        path = Path(out_dir) / fname
        if path.is_file():
            with fs.open_output_stream(f"{target}/{fname}") as stream:
                stream.write(path.read_bytes())


def fetch_summary(storage: str, name: str, out_dir: Path) -> None:
    """<storage>/<name>/summary/ into `out_dir` (a Ray Job's results, for the submitter)."""
    import pyarrow.fs

    fs, root = _storage_fs(storage)
    source = f"{root.rstrip('/')}/{name}/{SUMMARY_DIR}"
    out_dir.mkdir(parents=True, exist_ok=True)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(source, allow_not_found=True))
    if not infos:
        raise ConfigError(f"no sweep summary in {storage}/{name}/{SUMMARY_DIR}")
    for info in infos:
        if info.type == pyarrow.fs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                (out_dir / info.base_name).write_bytes(stream.read())
