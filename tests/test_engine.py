"""The training loop: exact resume, atomic checkpoints, early stopping, step budgets, streams."""

import copy
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import nn

from medssl.config import TrainConfig
from medssl.data.cache import open_cache
from medssl.data.contract import Dataset
from medssl.data.samplers import RandomBatchSampler
from medssl.engine import Callback, Context, Method, StepOutput, Trainer
from medssl.engine.checkpoint import load_checkpoint
from medssl.errors import ConfigError
from medssl.methods.supervised import Supervised


class SimulatedKill(Exception):
    pass


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, output):
        if trainer.state.step == self.step:
            raise SimulatedKill


def _cfg(tmp_path, **overrides) -> TrainConfig:
    base = {
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "batch_exams": 2,
        "max_batch_images": 16,
        "max_epochs": 3,
        "checkpoint_every": 3,
        "lr": 1e-3,
    }
    return TrainConfig(**{**base, **overrides})


def _supervised(dataset_dir, checkpoint_dir, cfg, callbacks=()) -> Trainer:
    dataset = Dataset.open(dataset_dir)
    method = Supervised(cfg, dataset, open_cache(dataset, cfg.cache_dir, progress=False))
    return Trainer(method, cfg, checkpoint_dir, progress=False, callbacks=callbacks)


def _assert_same_tensors(a: Mapping, b: Mapping) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history]


def test_resume_after_a_kill_ends_with_exactly_the_same_weights(tiny_split, tmp_path):
    cfg = _cfg(tmp_path, max_epochs=2)
    full = _supervised(tiny_split, tmp_path / "full", cfg)
    expected = full.fit()
    assert expected.steps == 8 and expected.epochs == 2  # 4 batches of 2 exams per epoch

    # killed in epoch 2; the last checkpoint (step 3) is from epoch 1: the resumed run redoes
    # the end of epoch 1 (validation, early-stopping update) and all of epoch 2
    killed = _supervised(tiny_split, tmp_path / "killed", cfg, [KillAt(5)])
    with pytest.raises(SimulatedKill):
        killed.fit()
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["loop"]["step"] == 3

    resumed = _supervised(tiny_split, tmp_path / "killed", cfg)
    result = resumed.fit(resume=True)
    assert result.resumed_from_step == 3
    assert result.steps == expected.steps and result.best_epoch == expected.best_epoch
    # the best epoch's weights (restored at the end) and the last weights, optimizer included
    _assert_same_tensors(resumed.model.state_dict(), full.model.state_dict())
    last_full = load_checkpoint(tmp_path / "full" / "last.pt")
    last_resumed = load_checkpoint(tmp_path / "killed" / "last.pt")
    _assert_same_tensors(last_resumed["model"], last_full["model"])
    for a, b in zip(
        last_resumed["optimizer"]["state"].values(),
        last_full["optimizer"]["state"].values(),
        strict=True,
    ):
        _assert_same_tensors(a, b)
    assert _without_timing(result.history) == _without_timing(expected.history)


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_loadable(
    tiny_split, tmp_path, monkeypatch
):
    cfg = _cfg(tmp_path, checkpoint_every=2, max_epochs=1)
    real_save, calls = torch.save, []

    def failing_second_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise OSError("No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_second_save)
    ckpt_dir = tmp_path / "run"
    with pytest.raises(OSError, match="No space"):
        _supervised(tiny_split, ckpt_dir, cfg).fit()
    monkeypatch.undo()
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.pt"]  # no temporary file left
    assert load_checkpoint(ckpt_dir / "last.pt")["loop"]["step"] == 2
    assert _supervised(tiny_split, ckpt_dir, cfg).fit(resume=True).resumed_from_step == 2


def test_resume_refuses_a_checkpoint_of_another_run(tiny_split, tmp_path):
    cfg = _cfg(tmp_path, max_epochs=1, checkpoint_every=100)
    _supervised(tiny_split, tmp_path / "run", cfg).fit()
    other = cfg.model_copy(update={"lr": 0.5})
    with pytest.raises(ConfigError, match="different run"):
        _supervised(tiny_split, tmp_path / "run", other).fit(resume=True)
    # a missing checkpoint with resume=True starts afresh
    fresh = _supervised(tiny_split, tmp_path / "new", cfg).fit(resume=True)
    assert fresh.resumed_from_step is None and fresh.steps == 4


# --- the loop with a scripted method (no images) ---------------------------------------------


class Scripted(Method):
    """A linear regression whose validation scores follow a script."""

    name = "scripted"
    monitor = "score"

    def __init__(self, scores=(), rows: int = 8, batch: int = 4, second_stream: bool = False):
        self.scores = list(scores)
        self.calls = 0
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(rows, 3, generator=gen)
        self.y = torch.randn(rows, 1, generator=gen)
        self.rows, self.batch, self.second = rows, batch, second_stream
        self.epoch_starts: list[int] = []
        self.seen: list[dict] = []

    def build_model(self, ctx: Context) -> nn.Module:
        return nn.Linear(3, 1)

    def streams(self):
        out = {"main": RandomBatchSampler(np.arange(self.rows), self.batch, seed=0)}
        if self.second:
            out["extra"] = RandomBatchSampler(np.arange(6), 4, seed=0, stream=1)
        return out

    def make_batch(self, rows, ctx):
        self.seen.append({k: v.copy() for k, v in rows.items()})
        return self.x[rows["main"]], self.y[rows["main"]]

    def loss(self, model, batch, ctx):
        x, y = batch
        return StepOutput(((model(x) - y) ** 2).mean(), {"mse": 1.0})

    def on_epoch_start(self, model, epoch, ctx):
        self.epoch_starts.append(epoch)

    def validate(self, model, ctx):
        assert not model.training and not torch.is_grad_enabled()
        score = self.scores[self.calls] if self.calls < len(self.scores) else 0.0
        self.calls += 1
        return {"score": score}


class Snapshots(Callback):
    def __init__(self) -> None:
        self.weights: dict[int, dict] = {}

    def on_epoch_end(self, trainer, record):
        self.weights[int(record["epoch"])] = copy.deepcopy(trainer.model.state_dict())


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[dict, int | None]] = []

    run_id = None

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_params(self, params): ...
    def log_artifact(self, path): ...
    def log_artifacts(self, path, artifact_path=None): ...
    def set_tags(self, tags): ...


def _scripted_cfg(**overrides) -> TrainConfig:
    base = {"device": "cpu", "lr": 0.1, "checkpoint_every": 1000, "max_epochs": 20}
    return TrainConfig(**{**base, **overrides})


def test_early_stopping_after_patience_epochs_restores_the_best_weights():
    method = Scripted(scores=[0.1, 0.5, 0.4, 0.3, 0.9])
    snapshots, tracker = Snapshots(), Recorder()
    trainer = Trainer(
        method,
        _scripted_cfg(patience=2),
        progress=False,
        callbacks=[snapshots],
        tracker=tracker,
        log_every=1,
    )
    result = trainer.fit()
    # epoch 2 is the best; epochs 3 and 4 do not improve: stop after epoch 4 (2 = patience)
    assert result.epochs == 4 and result.stopped_early
    assert result.best_epoch == 2 and result.best_score == 0.5
    assert result.steps == 8
    _assert_same_tensors(trainer.model.state_dict(), snapshots.weights[2])
    assert not torch.equal(snapshots.weights[2]["weight"], snapshots.weights[4]["weight"])
    assert method.epoch_starts == [0, 1, 2, 3]
    # per-step metrics and per-epoch records reach the tracker
    logged = [m for m, _ in tracker.metrics]
    assert any("step/train_loss" in m and "step/mse" in m for m in logged)
    assert [m["score"] for m in logged if "score" in m] == [0.1, 0.5, 0.4, 0.3]


def test_a_step_budget_replaces_epochs_and_still_selects_the_best_epoch():
    method = Scripted(scores=[0.9, 0.1, 0.2])
    snapshots = Snapshots()
    cfg = _scripted_cfg(max_steps=5, patience=1, max_epochs=1)
    result = Trainer(method, cfg, progress=False, callbacks=[snapshots]).fit()
    # 2 batches per epoch: epochs end at steps 2 and 4, the budget at step 5 (a partial epoch)
    assert result.steps == 5 and not result.stopped_early
    assert [r["step"] for r in result.history] == [2, 4, 5]
    assert result.best_epoch == 1


def test_an_unmonitored_method_keeps_the_last_weights():
    method = Scripted()
    method.monitor = None
    snapshots = Snapshots()
    trainer = Trainer(method, _scripted_cfg(max_epochs=3), progress=False, callbacks=[snapshots])
    result = trainer.fit()
    assert result.epochs == 3 and result.best_epoch is None
    _assert_same_tensors(trainer.model.state_dict(), snapshots.weights[3])


def test_secondary_streams_cycle_independently_and_resume(tmp_path):
    cfg = _scripted_cfg(max_steps=7, checkpoint_every=3)
    full = Scripted(second_stream=True)
    Trainer(full, cfg, tmp_path / "a", progress=False).fit()
    # primary: 2 batches per epoch; extra: 2 batches (4 + 2 rows) per epoch, cycling
    assert all(set(b) == {"main", "extra"} for b in full.seen)
    extra = np.concatenate([b["extra"] for b in full.seen[:2]])
    assert sorted(extra) == list(range(6))
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    assert ckpt["streams"]["extra"] == {"epoch": 3, "position": 1}

    killed = Scripted(second_stream=True)
    with pytest.raises(SimulatedKill):
        Trainer(killed, cfg, tmp_path / "b", progress=False, callbacks=[KillAt(5)]).fit()
    resumed = Scripted(second_stream=True)
    Trainer(resumed, cfg, tmp_path / "b", progress=False).fit(resume=True)
    for got, want in zip(killed.seen[:3] + resumed.seen, full.seen, strict=True):
        assert got.keys() == want.keys()
        for key in got:
            assert np.array_equal(got[key], want[key])
    _assert_same_tensors(load_checkpoint(tmp_path / "b" / "last.pt")["model"], ckpt["model"])


def test_resuming_a_finished_run_with_a_larger_budget_trains_on(tmp_path):
    cfg = _scripted_cfg(max_epochs=2, checkpoint_every=100)
    Trainer(Scripted(), cfg, tmp_path / "a", progress=False).fit()
    longer = cfg.model_copy(update={"max_epochs": 3})
    resumed = Trainer(Scripted(), longer, tmp_path / "a", progress=False)
    result = resumed.fit(resume=True)
    assert result.resumed_from_step == 4 and result.steps == 6 and result.epochs == 3
    Trainer(Scripted(), longer, tmp_path / "b", progress=False).fit()
    _assert_same_tensors(
        load_checkpoint(tmp_path / "a" / "last.pt")["model"],
        load_checkpoint(tmp_path / "b" / "last.pt")["model"],
    )


def test_a_gpu_checkpoint_resumes_on_the_cpu(tiny_split, tmp_path, capsys):
    """No GPU here: a CPU checkpoint is rewritten as a CUDA run writes it (device_type "cuda", the
    CUDA generator's 16-byte Philox state). Resuming it on the CPU restores weights, optimizer,
    samplers and early stopping, re-seeds only the augmentation generator, and says so."""
    from medssl.engine.checkpoint import save_checkpoint

    cfg = _cfg(tmp_path, max_epochs=2)
    killed = _supervised(tiny_split, tmp_path / "run", cfg, [KillAt(5)])
    with pytest.raises(SimulatedKill):
        killed.fit()
    path = tmp_path / "run" / "last.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["device_type"] == "cpu"
    ckpt.update(device_type="cuda", generator=torch.zeros(16, dtype=torch.uint8))
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})

    resumed = _supervised(tiny_split, tmp_path / "run", cfg)
    result = resumed.fit(resume=True)
    assert result.resumed_from_step == 3 and result.steps == 8 and result.epochs == 2
    assert "resuming a cuda checkpoint on cpu" in capsys.readouterr().err
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_methods_see_epoch_and_step_and_may_reset_optimizer_state_at_an_epoch_start():
    class Relabelling(Scripted):
        """Re-initialises its bias every epoch (as DeepCluster does its head)."""

        def __init__(self):
            super().__init__()
            self.seen_ctx: list[tuple[int, int]] = []

        def make_batch(self, rows, ctx):
            self.seen_ctx.append((ctx.epoch, ctx.step))
            return super().make_batch(rows, ctx)

        def on_epoch_start(self, model, epoch, ctx):
            super().on_epoch_start(model, epoch, ctx)
            return [model.bias]

    class AdamSteps(Callback):
        def __init__(self):
            self.steps: list[tuple[int, int]] = []

        def on_step_end(self, trainer, output):
            state = trainer.optimizer.state
            model = trainer.model
            self.steps.append((int(state[model.weight]["step"]), int(state[model.bias]["step"])))

    method, counts = Relabelling(), AdamSteps()
    method.monitor = None
    Trainer(method, _scripted_cfg(max_epochs=3), progress=False, callbacks=[counts]).fit()
    # 2 batches per epoch
    assert method.seen_ctx == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]
    # the weight's Adam moments live on; the bias's restart at every epoch
    assert counts.steps == [(1, 1), (2, 2), (3, 1), (4, 2), (5, 1), (6, 2)]


def test_a_diverged_run_stops_at_the_next_loss_read_in_one_line():
    """A NaN loss (lr far too high) is not trained on for epochs: the run fails with a line that
    names the step and the learning rate."""
    from medssl.errors import RunFailed

    class Diverging(Scripted):
        def loss(self, model, batch, ctx):
            out = super().loss(model, batch, ctx)
            return StepOutput(out.loss * float("nan") if ctx.step >= 3 else out.loss)

    trainer = Trainer(Diverging(), _scripted_cfg(max_epochs=5), progress=False, log_every=2)
    with pytest.raises(RunFailed, match=r"diverged: the loss is nan by step 4 .*lr 0\.1"):
        trainer.fit()
