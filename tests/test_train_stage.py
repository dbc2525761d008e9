"""The train stage end to end on the tiny archive, and the supervised method's loss."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medssl.config import TrainConfig, load_params
from medssl.data.augment import to_float
from medssl.data.cache import open_cache
from medssl.data.contract import Dataset
from medssl.errors import ConfigError
from medssl.methods import METHODS, Supervised
from medssl.methods.supervised import multilabel_bce
from medssl.models import load_model
from medssl.stages.split import split
from medssl.stages.synth import synth
from medssl.stages.train import HISTORY_COLUMNS, train

EPOCHS = 20
SPLITS = "{unlabeled: 0.0, train: 0.6, val: 0.2, test: 0.2}"


def _cfg(cache_dir, **overrides) -> TrainConfig:
    base = {
        "device": "cpu",
        "cache_dir": str(cache_dir),
        "batch_exams": 2,
        "max_batch_images": 32,
        "max_epochs": EPOCHS,
        "patience": EPOCHS,
        "lr": 1e-3,
        "checkpoint_every": 1000,
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def labeled_split(tmp_path_factory) -> Path:
    """The tiny archive with every patient labeled, 60/20/20 % train/val/test: 180 / 87 / 63
    images, enough for a quality assertion that holds whatever the CPU (see below)."""
    root = tmp_path_factory.mktemp("labeled")
    params = load_params(Path("/nonexistent"), ["data.size=tiny", f"split.fractions={SPLITS}"])
    synth(root / "archive", params.data, params.split, progress=False)
    split(root / "archive", root / "split", params.split)
    return root / "split"


@pytest.fixture(scope="module")
def trained(labeled_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = _cfg(root / "cache")
    return train(labeled_split, root / "model", cfg, progress=False), cfg


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


def test_train_writes_the_model_folder(trained, labeled_split):
    result, _ = trained
    out = result.out_dir
    for name in ("model.pt", "predictions.parquet", "history.csv", "train.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "last.pt").is_file()

    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert history["step"].is_monotonic_increasing

    summary = json.loads((out / "train.json").read_text())
    _, cfg = trained
    ds = Dataset.open(labeled_split)
    train_rows = int((ds.manifest["split"] == "train").sum())  # all labeled, fraction 1
    assert summary == {
        **summary,  # timings: checked for sense below
        "out_dir": str(out),
        "dataset": str(labeled_split.resolve()),
        "method": "supervised",
        "backbone": cfg.backbone,
        "init": "random",
        "epochs": EPOCHS,
        "steps": int(history["step"].iloc[-1]),
        "stopped_early": False,
        "device": "cpu",
        "train_images": train_rows,
        "label_fraction": 1.0,
        "resumed_from_step": None,
        "model_sha256": hashlib.sha256((out / "model.pt").read_bytes()).hexdigest(),
    }
    # the best epoch is the one with the highest val F1, and its score is that F1
    best = int(history.loc[history["val_f1_weighted"].idxmax(), "epoch"])
    assert summary["best_epoch"] == best
    assert summary["best_val_f1_weighted"] == pytest.approx(history["val_f1_weighted"].max())
    assert summary["seconds"] >= history["seconds"].sum() * 0.99 > 0
    assert summary["images_per_s"] > 0

    preds = pd.read_parquet(out / "predictions.parquet")
    manifest = ds.manifest
    expected = manifest[manifest["split"].isin(["val", "test"])]
    assert len(preds) == len(expected) and set(preds["split"]) == {"val", "test"}
    assert list(preds.columns[:5]) == ["image", "patient_id", "exam_id", "lesion_id", "split"]
    for c in ds.info.classes:
        assert preds[f"label_{c}"].dtype == "Int8"
        assert preds[f"score_{c}"].dtype == np.float32
        assert preds[f"score_{c}"].between(0, 1).all()


def test_model_file_reproduces_the_predictions(trained, labeled_split):
    result, cfg = trained
    model, meta = load_model(result.out_dir / "model.pt")
    ds = Dataset.open(labeled_split)
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
    """Training learns: the test scores rank positives above negatives far better than the
    label-prevalence baseline (a constant score: ROC AUC 0.5 for every class).

    Threshold-free on purpose: the weighted F1 at val-tuned thresholds of a 20-epoch run on 180
    images moves by ±0.08 with the CPU's float kernels and came within 0.005 of the baseline's
    once. Mean per-class test ROC AUC, measured for seeds 0-3 under 1 and 2 torch threads with
    torch.backends.mkldnn on and off: 0.741-0.850; the bar is 0.65 (the baseline's 0.5 + 0.15).
    `python benchmarks/quality_numerics.py` reruns that study."""
    result, _ = trained
    preds = pd.read_parquet(result.out_dir / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    labels = [c for c in preds.columns if c.startswith("label_")]
    aucs = [
        roc_auc_score(test[c], test[c.replace("label_", "score_")])
        for c in labels
        if 0 < test[c].sum() < len(test)
    ]
    assert len(aucs) >= 5  # most classes have positives and negatives in the test split
    constant = [roc_auc_score(test[c], np.zeros(len(test))) for c in labels if test[c].any()]
    assert set(constant) == {0.5}
    assert np.mean(aucs) > 0.65, aucs


def test_resuming_a_finished_run_does_not_train_again(trained, labeled_split):
    result, cfg = trained
    again = train(labeled_split, result.out_dir, cfg, resume=True, progress=False)
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
