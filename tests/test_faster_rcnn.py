"""Paper 003's detector: the Faster R-CNN module, the `faster-rcnn` method on the tiny chest X-ray
archive (fused truth, repeat-factor sampling, init from an encoder), the detection evaluation
(Tables I-II) and register → predict of a detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medssl.config import DataConfig, EvaluateConfig, SplitConfig, TrainConfig
from medssl.data.boxes import fuse_readers
from medssl.data.contract import Dataset
from medssl.data.samplers import repeat_factors
from medssl.errors import ConfigError
from medssl.method_params import FasterRcnnParams
from medssl.models import Classifier, load_model, save_model
from medssl.models.detector import Detector, anchor_sizes, freeze_batchnorm, proposal_counts
from medssl.stages.evaluate import evaluate
from medssl.stages.synth import synth
from medssl.stages.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_anchors_follow_the_image_size():
    assert anchor_sizes(512) == ((32,), (64,), (128,), (256,), (512,))
    assert anchor_sizes(128) == ((8,), (16,), (32,), (64,), (128,))
    assert anchor_sizes(32)[0] == (2,)
    assert proposal_counts(512) == {
        "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
    }  # fmt: skip
    assert proposal_counts(256)["rpn_post_nms_top_n_test"] == 250
    assert proposal_counts(64)["rpn_post_nms_top_n_train"] == 100


def test_frozen_batchnorm_computes_what_eval_mode_batchnorm_does():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    net.train()
    net(torch.randn(8, 1, 12, 12))  # running statistics away from their init
    net.eval()
    x = torch.randn(2, 1, 12, 12)
    expected = net(x)
    frozen = freeze_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    torch.testing.assert_close(frozen(x), expected)


def test_a_vgg_backbone_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="needs a ResNet backbone"):
        Detector("vgg16_bn", 3, 1, 64)


@pytest.fixture(scope="module")
def chest_tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chest") / "chest-xray"
    synth(out, DataConfig(kind="chest-xray", size="tiny", workers=1), SplitConfig(), progress=False)
    return out


def _cfg(tmp_path: Path, **overrides) -> TrainConfig:
    base = {
        "method": "faster-rcnn",
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "optimizer": "sgd",
        "lr": 2e-4,
        "weight_decay": 1e-4,
        "batch_exams": 2,
        "max_steps": 3,
        "checkpoint_every": 1000,
    }
    return TrainConfig(**{**base, **overrides})


def test_it_trains_on_fused_boxes_with_repeat_factors_and_evaluates(chest_tiny, tmp_path):
    """A few steps from random init; predictions hold every val/test image's readers' boxes,
    their fusion and the detections; evaluate gives Table I, per-class mAP and Table II."""
    out = tmp_path / "model"
    result = train(chest_tiny, out, _cfg(tmp_path), hparams=FasterRcnnParams(), progress=False)
    assert result.steps == 3 and result.monitor == "val_map"
    assert result.best_val_f1_weighted is None and result.best_val_score is not None
    ds = Dataset.open(chest_tiny)
    m = ds.manifest
    assert ds.boxes is not None
    fused = fuse_readers(ds.boxes)
    boxed = set(fused["image"])
    train_images = [i for i in m.loc[m["split"] == "train", "image"] if i in boxed]
    assert result.train_images == len(train_images)

    preds = pd.read_parquet(out / "predictions.parquet")
    assert set(preds["source"]) == {"reader", "truth", "model"}
    evaluated = m[m["split"].isin(["val", "test"]) & m["image"].isin(boxed)]
    truth = preds[preds["source"] == "truth"]
    assert set(truth["image"]) == set(evaluated["image"])
    expected = fused[fused["image"].isin(evaluated["image"])]
    assert len(truth) == len(expected)
    readers = preds[preds["source"] == "reader"]
    assert len(readers) == ds.boxes["image"].isin(evaluated["image"]).sum()
    found = preds[preds["source"] == "model"]
    assert found["score"].between(0, 1).all() and (found["x2"] > found["x1"]).all()

    meta = torch.load(out / "model.pt", weights_only=False)["meta"]
    assert meta["task"] == "detection" and meta["product"] == "detector"
    classes = [[c for c in fused.loc[fused["image"] == i, "label"]] for i in train_images]
    assert meta["repeat_factors"] == pytest.approx(repeat_factors(classes, 0.4)[1])
    detector, _ = load_model(out / "model.pt")
    assert isinstance(detector, Detector)

    metrics = evaluate(out, None, EvaluateConfig(bootstrap=10)).metrics
    for key in ("test_map", "test_map50", "test_map_small", "test_ar100", "test_ar_small"):
        assert key in metrics
    assert metrics["test_images"] == (evaluated["split"] == "test").sum()
    assert set(metrics["per_class"]) == set(ds.info.classes)
    assert len(metrics["readers"]) >= 1 and "test_model_iou" in metrics
    table = (out / "eval" / "table.txt").read_text()
    assert "Table I" in table and "Table II" in table
    assert (out / "eval" / "per_class.png").is_file()
    summary = json.loads((out / "train.json").read_text())
    assert summary["monitor"] == "val_map"


def test_it_starts_from_an_encoder_backbone(chest_tiny, tmp_path):
    """init=checkpoint takes a medssl model's ResNet: its batch norms frozen and its first two
    stages (trainable_layers 3) still equal to the encoder's after training."""
    torch.manual_seed(1)
    encoder = Classifier("resnet18", 4, 1, "image")
    weights = tmp_path / "encoder.pt"
    meta = {
        "method": "simclr", "backbone": "resnet18", "classes": list("abcd"), "in_channels": 1,
        "image_size": 64, "task": "encoder",
    }  # fmt: skip
    save_model(weights, encoder, meta)
    out = tmp_path / "model"
    cfg = _cfg(tmp_path, init="checkpoint", weights=str(weights), max_steps=2)
    train(chest_tiny, out, cfg, hparams=FasterRcnnParams(trainable_layers=3), progress=False)
    detector, dmeta = load_model(out / "model.pt")
    assert dmeta["frozen"] and dmeta["input_norm"] == "image"
    body = detector.backbone.body
    for name in ("conv1", "layer1"):
        mine = getattr(body, name).state_dict()
        theirs = getattr(encoder.backbone, name).state_dict()
        for key, value in mine.items():
            torch.testing.assert_close(value, theirs[key])
    assert not torch.equal(body.layer4[0].conv1.weight, encoder.backbone.layer4[0].conv1.weight)


def test_a_detector_registers_and_predicts_its_boxes(chest_tiny, tmp_path, module_store):
    """register gates a detector on test_map; predict from the registry gives the train
    stage's test detections."""
    from medssl.config import PredictConfig, RegisterConfig
    from medssl.stages.predict import predict
    from medssl.stages.register import register

    model = tmp_path / "model"
    train(chest_tiny, model, _cfg(tmp_path, max_steps=2), progress=False)
    evaluate(model, None, EvaluateConfig(bootstrap=10))
    result = register(model, None, None, RegisterConfig(model_name="chest-findings"))
    assert result.promoted and result.decision.metric == "test_map"
    out = tmp_path / "pred"
    predict("models:/chest-findings@champion", chest_tiny, out, PredictConfig())
    table = pd.read_parquet(out / "predictions.parquet")
    own = pd.read_parquet(model / "predictions.parquet")
    own = own[(own["source"] == "model") & (own["split"] == "test")]
    mine = table[table["image"].isin(own["image"].unique())]
    assert len(mine) == len(own)
    key = ["image", "label"]
    a = mine.sort_values([*key, "score"]).reset_index(drop=True)
    b = own.sort_values([*key, "score"]).reset_index(drop=True)
    assert (a["label"] == b["label"]).all()
    np.testing.assert_allclose(a[["x1", "y1", "x2", "y2"]], b[["x1", "y1", "x2", "y2"]], atol=1e-3)
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)


def test_the_pretrain_split_study_runs_and_reports(chest_tiny, tmp_path):
    """`medssl study pretrain-split` on tiny: the baseline and one p = 40 % cell (SimCLR on the
    train rows outside the 60 % subset, the detector fine-tuned from it on that subset), one
    seed, a few steps each; the report holds Table I-II and the paired difference (resuming is
    the tune sweep's, tested in test_tune.py)."""
    from cli_helpers import medssl

    cache = str(tmp_path / "cache")
    detector = (
        "train.method: faster-rcnn, train.init: random, train.weights: null, train.backbone: "
        "resnet18, train.optimizer: sgd, train.lr: 0.0002, train.batch_exams: 2, "
        "train.max_steps: 2"
    )
    baseline = f"{{train.label_fraction: [1.0], {detector}}}"
    ssl = (
        "{'pretrain.label_fraction,train.label_fraction': [0.6], pretrain.method: simclr, "
        "pretrain.rows: train-rest, pretrain.backbone: resnet18, pretrain.batch_exams: 4, "
        "pretrain.max_batch_images: 4, pretrain.max_steps: 2, pretrain.tsne_points: 0, "
        f"simclr.val_images: 0, {detector}}}"
    )
    out = tmp_path / "study"
    args = [
        "study", "pretrain-split", str(chest_tiny), "--out", str(out), "--seeds", "1",
        "--max-concurrent", "1", "--no-track",
        "-S", f"tune.presets.pretrain-split-baseline.space={baseline}",
        "-S", f"tune.presets.pretrain-split.space={ssl}",
        "-S", f"train.cache_dir={cache}", "-S", f"pretrain.cache_dir={cache}",
        "-S", "train.device=cpu", "-S", "pretrain.device=cpu", "-S", "evaluate.bootstrap=10",
    ]  # fmt: skip
    first = medssl(*args, timeout=900, cwd=ROOT)  # the repository's params.yaml (its presets)
    assert first.code == 0, first.err[-3000:]
    for name in ("study.md", "study.json", "fig4.png", "data/dataset.yaml"):
        assert (out / name).is_file(), name
    report = json.loads((out / "study.json").read_text())
    cells = pd.DataFrame(report["cells"])
    assert sorted(zip(cells["arm"], cells["p"], strict=True)) == [("baseline", 0), ("ssl", 40)]
    split = Dataset.open(out / "data").manifest
    train_rows = split[(split["split"] == "train")]
    labeled = [
        i
        for i in train_rows["image"]
        if i in set(fuse_readers(Dataset.open(chest_tiny).boxes)["image"])
    ]
    ssl_cell = cells[cells["arm"] == "ssl"].iloc[0]
    subset = train_rows[train_rows["label_fraction"] <= 0.6 + 1e-9]
    assert ssl_cell["train_images"] == subset["image"].isin(labeled).sum() < len(labeled)
    # the encoder saw exactly the other train rows
    pretrain = json.loads(next(out.glob("sweep/trials/*/pretrain/pretrain.json")).read_text())
    assert pretrain["train_images"] == len(train_rows) - len(subset)
    effects = pd.DataFrame(report["effects"])
    assert list(effects["model"]) == ["SSL 40%"]
    assert (
        effects["ci_low"].item() <= effects["Δ mAP vs baseline"].item() <= effects["ci_high"].item()
    )
    text = (out / "study.md").read_text()
    assert "Table I" in text and "Table II" in text and "(0.129)" in text
    assert len(list(out.glob("*/trials/*/train/model.pt"))) == 2
