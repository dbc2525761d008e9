"""The train stage end to end on the tiny archive, and the supervised method's loss."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from medssl.config import TrainConfig
from medssl.data.augment import to_float
from medssl.data.cache import open_cache
from medssl.data.contract import Dataset
from medssl.errors import ConfigError
from medssl.methods import METHODS, Supervised
from medssl.methods.supervised import multilabel_bce
from medssl.metrics.multilabel import best_thresholds, constant_score_thresholds, weighted_f1
from medssl.models import load_model
from medssl.stages.split import split
from medssl.stages.train import HISTORY_COLUMNS, train


@pytest.fixture(scope="module")
def tiny_split(tiny_archive, tiny_params, tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "abdominal-us"
    split(tiny_archive, out, tiny_params.split)
    return out


def _cfg(cache_dir, **overrides) -> TrainConfig:
    base = {
        "device": "cpu",
        "cache_dir": str(cache_dir),
        "batch_exams": 2,
        "max_batch_images": 32,
        "max_epochs": 16,
        "patience": 16,
        "lr": 1e-3,
        "checkpoint_every": 1000,
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = _cfg(root / "cache")
    return train(tiny_split, root / "model", cfg, progress=False), cfg


def test_supervised_is_registered():
    assert METHODS["supervised"] is Supervised


def test_bce_equals_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    by_hand = 0.0
    for i in range(2):
        for c in range(3):  # paper 000 eq. 9: 1/(C+1) Σ_c of the per-class cross-entropy
            p = 1 / (1 + math.exp(-logits[i, c].item()))
            v = targets[i, c].item()
            by_hand -= (v * math.log(p) + (1 - v) * math.log(1 - p)) / 3
    by_hand /= 2  # averaged over the batch
    assert multilabel_bce(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)
    assert multilabel_bce(logits.bfloat16(), targets).dtype == torch.float32


def test_train_writes_the_model_folder(trained, tiny_split):
    result, _ = trained
    out = result.out_dir
    for name in ("model.pt", "predictions.parquet", "history.csv", "train.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "last.pt").is_file()

    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == list(range(1, 17))
    assert history["step"].is_monotonic_increasing

    summary = json.loads((out / "train.json").read_text())
    for key in (
        "method",
        "backbone",
        "init",
        "best_epoch",
        "epochs",
        "steps",
        "stopped_early",
        "device",
        "images_per_s",
        "seconds",
        "best_val_f1_weighted",
        "train_images",
        "label_fraction",
    ):
        assert key in summary, key
    # every train row of the tiny archive is labeled (label fraction 1)
    train_rows = int((Dataset.open(tiny_split).manifest["split"] == "train").sum())
    assert summary["device"] == "cpu" and summary["train_images"] == train_rows
    best = history.loc[history["epoch"] == summary["best_epoch"], "val_f1_weighted"].item()
    assert best == pytest.approx(history["val_f1_weighted"].max())

    ds = Dataset.open(tiny_split)
    preds = pd.read_parquet(out / "predictions.parquet")
    manifest = ds.manifest
    expected = manifest[manifest["split"].isin(["val", "test"])]
    assert len(preds) == len(expected) and set(preds["split"]) == {"val", "test"}
    assert list(preds.columns[:4]) == ["image", "patient_id", "exam_id", "split"]
    for c in ds.info.classes:
        assert preds[f"label_{c}"].dtype == "Int8"
        assert preds[f"score_{c}"].dtype == np.float32
        assert preds[f"score_{c}"].between(0, 1).all()


def test_model_file_reproduces_the_predictions(trained, tiny_split):
    result, cfg = trained
    model, meta = load_model(result.out_dir / "model.pt")
    ds = Dataset.open(tiny_split)
    assert meta["classes"] == ds.info.classes and meta["in_channels"] == 1
    assert meta["image_size"] == 32 and meta["task"] == "multilabel"
    assert meta["method"] == "supervised" and meta["best_epoch"] == result.best_epoch
    preds = pd.read_parquet(result.out_dir / "predictions.parquet")
    cache = open_cache(ds, cfg.cache_dir, progress=False)
    position = pd.Series(np.arange(len(ds.manifest)), index=ds.manifest["image"])
    rows = position.loc[preds["image"]].to_numpy()
    with torch.no_grad():
        scores = torch.sigmoid(model(to_float(torch.from_numpy(cache.take(rows))))).numpy()
    expected = preds[[f"score_{c}" for c in ds.info.classes]].to_numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_a_few_steps_beat_the_label_prevalence_baseline(trained):
    # 64 steps from scratch on 97 images; seeds 0-9 all beat the baseline by 0.05-0.13 here
    result, _ = trained
    preds = pd.read_parquet(result.out_dir / "predictions.parquet")
    labels = [c for c in preds.columns if c.startswith("label_")]
    scores = [c.replace("label_", "score_") for c in labels]
    val, test = preds[preds["split"] == "val"], preds[preds["split"] == "test"]
    y_val, y_test = val[labels].to_numpy(int), test[labels].to_numpy(int)
    model_f1 = weighted_f1(y_test, test[scores].to_numpy() >= best_thresholds(y_val, val[scores]))
    constant = np.zeros(y_test.shape)
    baseline_f1 = weighted_f1(y_test, constant >= constant_score_thresholds(y_val))
    assert model_f1 > baseline_f1 + 0.03, (model_f1, baseline_f1)


def test_resuming_a_finished_run_does_not_train_again(trained, tiny_split):
    result, cfg = trained
    again = train(tiny_split, result.out_dir, cfg, resume=True, progress=False)
    assert again.resumed_from_step == result.steps == again.steps
    assert again.best_epoch == result.best_epoch
    assert "best epoch" in again.describe()


def test_label_fraction_selects_the_split_stage_subset(tiny_split, tmp_path):
    cfg = _cfg(tmp_path / "cache", label_fraction=0.2, max_epochs=1)
    result = train(tiny_split, tmp_path / "model", cfg, progress=False)
    m = Dataset.open(tiny_split).manifest
    subset = (m["split"] == "train") & (m["label_fraction"] <= 0.2)
    assert result.train_images == int(subset.sum()) < int((m["split"] == "train").sum())


def test_label_fraction_needs_the_split_stage(tiny_archive, tmp_path):
    with pytest.raises(ConfigError, match="label_fraction"):
        train(tiny_archive, tmp_path / "m", _cfg(tmp_path / "c", label_fraction=0.5))


def test_unknown_method_is_a_config_error(tiny_split, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown train\.method 'nope'"):
        train(tiny_split, tmp_path / "m", _cfg(tmp_path / "c", method="nope"))
