"""Lesion recognition (paper 004): the contrastive loss and its masks against hand computations,
binary metrics against scikit-learn, P × K batches, patient-grouped folds, and every variant
trained on the tiny breast-ultrasound archive."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medssl.config import DataConfig, SplitConfig, TrainConfig
from medssl.data.samplers import ExamBatchSampler
from medssl.data.splitting import cv_folds, cv_split
from medssl.engine.loop import Callback
from medssl.errors import ConfigError, DataContractError
from medssl.method_params import LesionRecognitionParams
from medssl.methods import METHODS, LesionRecognition
from medssl.methods.lesion import contrastive_loss, contrastive_masks
from medssl.metrics.binary import binary_report, mcr
from medssl.stages.evaluate import evaluate
from medssl.stages.synth import synth
from medssl.stages.train import train

VARIANTS = ("baseline", "lr", "ir", "lr-sc", "lr-dc", "lr-none")
REPO = Path(__file__).resolve().parents[1]


def test_registered():
    assert METHODS["lesion-recognition"] is LesionRecognition


# --- the loss ---------------------------------------------------------------------------------


def test_contrastive_loss_matches_a_hand_computation():
    """Three features: 0 and 1 one lesion (orthogonal), 2 another (opposite to 0). Anchor 0:
    P={1}, N={2}: -log(e^0 / (e^0 + e^-1)); anchor 1: P={0}, N={2}: -log(1/2); anchor 2: no
    positive, 0. Eq. 2 divides by N_b = 3."""
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # norms do not matter: cosine
    ids, classes = torch.tensor([7, 7, 9]), torch.tensor([0.0, 0.0, 1.0])
    pos, neg = contrastive_masks(ids, classes, "lr")
    expected = (math.log(1 + math.exp(-1)) + math.log(2)) / 3
    assert float(contrastive_loss(z, pos, neg)) == pytest.approx(expected, rel=1e-6)
    # temperature divides every similarity: anchor 0 then -log(1 / (1 + e^-2))
    expected_t = (math.log(1 + math.exp(-2)) + math.log(2)) / 3
    assert float(contrastive_loss(z, pos, neg, temperature=0.5)) == pytest.approx(expected_t)


def _loop_loss(z: np.ndarray, pos: np.ndarray, neg: np.ndarray, t: float) -> float:
    """Eq. 2 term by term."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(z)):
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(len(z)) if pos[i, k] or neg[i, k])
        for j in np.flatnonzero(pos[i]):
            total -= math.log(math.exp(z[i] @ z[j] / t) / denom)
    return total / len(z)


@pytest.mark.parametrize("variant", ["lr", "lr-sc", "lr-dc", "lr-none"])
def test_contrastive_loss_equals_eq2_term_by_term(variant):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, generator=gen)
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 5])
    classes = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0]).float()
    pos, neg = contrastive_masks(ids, classes, variant)
    got = float(contrastive_loss(z, pos, neg, temperature=0.3))
    assert got == pytest.approx(_loop_loss(z.numpy(), pos.numpy(), neg.numpy(), 0.3), rel=1e-5)


def test_masks_of_each_ablation():
    """Anchor 0 (lesion 0, benign): positive 1; negatives 2 (benign, other lesion) and 3
    (malignant). -SC drops 2, -DC drops 3, lr-none both."""
    ids, classes = torch.tensor([0, 0, 1, 2]), torch.tensor([0.0, 0.0, 0.0, 1.0])
    expected_neg = {"lr": [2, 3], "lr-sc": [3], "lr-dc": [2], "lr-none": []}
    for variant, negatives in expected_neg.items():
        pos, neg = contrastive_masks(ids, classes, variant)
        assert pos[0].nonzero().flatten().tolist() == [1]
        assert neg[0].nonzero().flatten().tolist() == negatives, variant
        assert not (pos & neg).any() and not pos.diagonal().any() and not neg.diagonal().any()
    # IR (eq. 5) is the same masks over image ids: the positive is the other view
    pos, neg = contrastive_masks(torch.tensor([5, 5, 6, 6]), torch.tensor([0.0, 0, 0, 0]), "ir")
    assert pos.nonzero().tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]
    assert neg.sum() == 8


def test_loss_gradient_pulls_positives_together():
    z = torch.tensor([[1.0, 0.2], [0.2, 1.0], [1.0, -0.1]], requires_grad=True)
    pos, neg = contrastive_masks(torch.tensor([0, 0, 1]), torch.tensor([0.0, 0, 1]), "lr")
    contrastive_loss(z, pos, neg).backward()
    step = z.detach() - 0.5 * z.grad
    cos = torch.nn.functional.cosine_similarity
    assert cos(step[0], step[1], dim=0) > cos(z[0], z[1], dim=0)
    assert cos(step[0], step[2], dim=0) < cos(z[0], z[2], dim=0)


# --- metrics ----------------------------------------------------------------------------------


def test_binary_report_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.6
    scores = np.clip(0.3 * y + rng.random(300) * 0.8, 0, 1)
    pred = scores >= 0.5
    lesions = np.repeat(np.arange(100), 3)
    got = binary_report(y, scores, pred, lesions)
    assert got["auc"] == pytest.approx(roc_auc_score(y, scores))
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert got["precision"] == pytest.approx(precision_score(y, pred))
    assert got["specificity"] == pytest.approx(recall_score(~y, ~pred))
    assert got["f1"] == pytest.approx(f1_score(y, pred))


def test_mcr_is_averaged_over_lesions_with_an_error():
    """Paper 004 §3.2: lesion A 1 of 2 wrong (0.5), B 0 of 3 (left out), C 3 of 3 (1.0)."""
    lesions = np.array(["A", "A", "B", "B", "B", "C", "C", "C"])
    y = np.array([1, 1, 0, 0, 0, 1, 1, 1])
    pred = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    assert mcr(y, pred, lesions) == (pytest.approx(0.75), 2)
    value, count = mcr(y, y, lesions)
    assert math.isnan(value) and count == 0


# --- batches and folds ------------------------------------------------------------------------


def test_p_by_k_batches():
    """P groups × K images each: distinct images when a group has K, repeats otherwise."""
    groups = np.array(["a"] * 10 + ["b"] * 2 + ["c"] * 5 + ["d"] * 8)
    rows = np.arange(len(groups)) + 100
    sampler = ExamBatchSampler(rows, groups, 2, 64, seed=3, per_group=4)
    batches = [sampler.next_batch() for _ in range(len(sampler))]
    assert len(batches) == 2 and all(len(b) == 8 for b in batches)
    for batch in batches:
        for part in (batch[:4], batch[4:]):
            owner = set(groups[part - 100])
            assert len(owner) == 1
            distinct = len(set(part.tolist()))
            assert distinct == min(4, int((groups == owner.pop()).sum()))
    assert sorted(set(np.concatenate(batches) - 100) & set(range(10, 12))) == [10, 11]


def test_cross_validation_folds_are_patient_disjoint_and_balanced():
    patients = [f"p{i}" for i in np.random.default_rng(1).integers(0, 120, 600)]
    split = ["unlabeled"] * 60 + ["train"] * 400 + ["val"] * 60 + ["test"] * 80
    manifest = pd.DataFrame({"patient_id": patients, "split": split})
    manifest = manifest.sort_values("patient_id").reset_index(drop=True)
    manifest["split"] = np.where(np.arange(600) < 60, "unlabeled", manifest["split"])
    folds = cv_folds(manifest, 5)
    labeled = manifest["split"] != "unlabeled"
    assert folds[~labeled].isna().all() and folds[labeled].notna().all()
    assert manifest[labeled].assign(f=folds).groupby("patient_id")["f"].nunique().max() == 1
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 15  # within about one patient's images
    union = set()
    for k in range(5):
        split_k = cv_split(manifest, 5, k)
        test = set(manifest.index[split_k == "test"])
        assert not union & test
        union |= test
        assert set(split_k[labeled]) == {"train", "test"}
        assert (split_k[~labeled] == "unlabeled").all()
    assert union == set(manifest.index[labeled])


def test_cv_config_errors():
    with pytest.raises(ValueError, match="cv_fold 5 is not one of 0 … 4"):
        TrainConfig(cv_folds=5, cv_fold=5)
    with pytest.raises(ValueError, match="at least 2"):
        TrainConfig(cv_folds=1)
    with pytest.raises(ValueError, match="label_fraction must be 1"):
        TrainConfig(cv_folds=5, label_fraction=0.5)


# --- training on the tiny breast archive ------------------------------------------------------


@pytest.fixture(scope="module")
def breast_tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("breast") / "breast-us"
    data = DataConfig(kind="breast-us", size="tiny", workers=1)
    split = SplitConfig(fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    synth(out, data, split, progress=False)
    return out


def _cfg(tmp_path: Path, **overrides) -> TrainConfig:
    base = {
        "method": "lesion-recognition",
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "max_batch_images": 16,
        "max_steps": 6,
        "lr": 1e-3,
        "checkpoint_every": 1000,
    }
    return TrainConfig(**{**base, **overrides})


def _params(variant: str) -> LesionRecognitionParams:
    return LesionRecognitionParams(variant=variant, groups_per_batch=4, images_per_group=4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_and_evaluates(breast_tiny, tmp_path, variant):
    """A few steps of every variant in a cross-validation round (no val: threshold 0.5, the last
    epoch kept), then paper 004's Table 1 metrics from the evaluate stage."""
    out = tmp_path / "model"
    cfg = _cfg(tmp_path, cv_folds=5, cv_fold=1)
    logged: list[set[str]] = []

    class Logs(Callback):
        def on_step_end(self, trainer, output):
            logged.append(set(output.logs))

    hparams = _params(variant)
    result = train(breast_tiny, out, cfg, hparams=hparams, progress=False, callbacks=[Logs()])
    assert result.steps == 6 and result.best_epoch is None
    expected = {"loss_cls"} if variant == "baseline" else {"loss_cls", "loss_con"}
    assert all(keys == expected for keys in logged) and len(logged) == 6
    history = pd.read_csv(out / "history.csv")
    assert np.isfinite(history["train_loss"]).all()
    # the predictions are exactly fold 1's rows, patient-disjoint from the rows trained on
    manifest = pd.read_parquet(breast_tiny / "manifest.parquet")
    rounds = cv_split(manifest, 5, 1)
    preds = pd.read_parquet(out / "predictions.parquet")
    assert set(preds["image"]) == set(manifest.loc[rounds == "test", "image"])
    trained = set(manifest.loc[rounds == "train", "patient_id"])
    assert (
        not trained & set(preds["patient_id"]) and result.train_images == (rounds == "train").sum()
    )
    assert set(preds["split"]) == {"test"} and preds["lesion_id"].notna().all()
    assert list(preds.filter(like="score_").columns) == ["score_malignant"]
    metrics = evaluate(out, None, _eval_cfg()).metrics
    for key in ("test_auc", "test_accuracy", "test_sensitivity", "test_specificity", "test_mcr"):
        assert key in metrics
    assert metrics["per_class"]["malignant"]["threshold"] == 0.5
    # one class: the weighted F1 is the positive class's F1, not an average over both classes
    assert metrics["test_f1_weighted"] == pytest.approx(metrics["test_f1"])
    summary = json.loads((out / "train.json").read_text())
    assert summary["method"] == "lesion-recognition"
    assert (summary["cv_folds"], summary["cv_fold"]) == (5, 1)


def _eval_cfg():
    from medssl.config import EvaluateConfig

    return EvaluateConfig(bootstrap=20)


def test_without_cross_validation_it_validates(breast_tiny, tmp_path):
    """With val rows it logs val AUC; the step decay runs through the loop (×0.1 per epoch
    here: the checkpoint's learning rate is lr × 0.1^(epochs − 1))."""
    from medssl.engine.checkpoint import load_checkpoint

    out = tmp_path / "model"
    cfg = _cfg(tmp_path, max_steps=None, max_epochs=3, lr_decay_every=1)
    train(breast_tiny, out, cfg, hparams=_params("lr"), progress=False)
    group = load_checkpoint(out / "checkpoints" / "last.pt")["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(1e-3 * 0.1**2) and group["initial_lr"] == 1e-3
    history = pd.read_csv(out / "history.csv")
    assert {"val_auc", "val_f1_weighted", "val_loss"} <= set(history.columns)
    assert set(pd.read_parquet(out / "predictions.parquet")["split"]) == {"val", "test"}


def test_lesion_ids_are_required(breast_tiny, tmp_path):
    import shutil

    from medssl.data.contract import Dataset

    copy = tmp_path / "copy"
    shutil.copytree(breast_tiny, copy)
    ds = Dataset.open(copy)
    ds.manifest["lesion_id"] = pd.array([pd.NA] * len(ds.manifest), dtype="string")
    ds.save()
    with pytest.raises(DataContractError, match="needs a lesion_id on every train row"):
        train(copy, tmp_path / "m", _cfg(tmp_path), hparams=_params("lr"), progress=False)


# --- the cross-validation study ---------------------------------------------------------------


def test_effects_are_paired_over_folds_and_seeds():
    from scipy import stats

    from medssl.stages.cv_study import effect_table, variant_table

    rng = np.random.default_rng(0)
    rows = []
    for fold in range(5):
        for seed in range(2):
            base = 0.8 + 0.05 * rng.random()
            for variant, shift in (("baseline", 0.0), ("lr", 0.02), ("ir", -0.01)):
                auc = base + shift + 0.005 * rng.standard_normal()
                mcr_value = 0.6 - shift
                rows.append(dict(variant=variant, fold=fold, seed=seed, auc=auc, mcr=mcr_value))
    cells = pd.DataFrame(rows)
    for key in ("accuracy", "sensitivity", "precision", "specificity", "f1"):
        cells[key] = 0.5
    effects = effect_table(cells).set_index(["effect", "metric"])
    diff = 100 * (
        cells[cells.variant == "lr"].set_index(["fold", "seed"]).auc
        - cells[cells.variant == "baseline"].set_index(["fold", "seed"]).auc
    )
    per_fold = diff.groupby(level="fold").mean()  # a fold's seeds are not independent
    row = effects.loc[("LR − baseline", "AUC")]
    half = stats.t.ppf(0.975, 4) * per_fold.std(ddof=1) / math.sqrt(5)
    assert row["delta"] == pytest.approx(diff.mean(), abs=0.01) and row["folds"] == 5
    assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * half, abs=0.02)
    assert row["paper"] == pytest.approx(1.5)
    assert effects.loc[("LR − baseline", "MCR")]["delta"] == pytest.approx(-2.0)
    table = variant_table(cells, ["baseline", "ir", "lr"]).set_index("method")
    assert table.loc["LR", "AUC"].endswith("(96.2)") and table.loc["IR", "cells"] == 10


def test_the_study_runs_every_cell_reports_and_resumes(breast_tiny, tmp_path):
    """2 variants × 2 folds × 1 seed on tiny through `medssl study cv`: the report, the plot, one
    MLflow sweep run with a child per cell; --resume trains nothing again."""
    from mlflow import MlflowClient

    from cli_helpers import medssl

    cache = str(tmp_path / "cache")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "MEDSSL_TRACKING": "1"}
    space = (
        "{lesion-recognition.variant: [baseline, lr], train.cv_fold: [0, 1],"
        " train.method: lesion-recognition, train.cv_folds: 5, train.init: random,"
        " train.weights: null, train.max_steps: 3, train.max_batch_images: 16,"
        " lesion-recognition.images_per_group: 4, lesion-recognition.groups_per_batch: 4}"
    )
    out = tmp_path / "study"
    args = [
        "study", "cv", str(breast_tiny), "--out", str(out), "--seeds", "1",
        "--max-concurrent", "2", "-S", f"tune.presets.cv.space={space}",
        "-S", f"train.cache_dir={cache}", "-S", "train.device=cpu", "-S", "evaluate.bootstrap=20",
    ]  # fmt: skip
    first = medssl(*args, env=env, timeout=600)
    assert first.code == 0, first.err[-3000:]
    for name in ("cv.md", "cv.json", "cv.png", "sweep/results.csv"):
        assert (out / name).is_file(), name
    report = json.loads((out / "cv.json").read_text())
    cells = pd.DataFrame(report["cells"])
    assert len(cells) == 4 and set(cells["variant"]) == {"baseline", "lr"}
    assert set(cells["fold"]) == {0, 1}
    # every cell's numbers are its own evaluation's
    results = pd.read_csv(out / "sweep" / "results.csv")
    for row in results.to_dict(orient="records"):
        metrics = json.loads(
            (out / "sweep/trials" / row["trial"] / "eval/metrics.json").read_text()
        )
        cell = cells[
            (cells["variant"] == row["lesion-recognition.variant"])
            & (cells["fold"] == row["train.cv_fold"])
        ]
        assert cell["auc"].item() == pytest.approx(metrics["test_auc"])
    assert "Table 1" in (out / "cv.md").read_text()
    effects = pd.DataFrame(report["effects"])
    assert set(effects["effect"]) == {"LR − baseline"} and set(effects["folds"]) == {2}
    mc = MlflowClient(uri)
    runs = mc.search_runs([mc.get_experiment_by_name("medssl").experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("medssl.kind") == "sweep"]
    assert len(sweeps) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweeps[0].info.run_id]
    assert len(children) == 4
    artifacts = {a.path for a in mc.list_artifacts(sweeps[0].info.run_id, "study")}
    assert {"study/cv.md", "study/cv.png"} <= artifacts
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("sweep/trials/*/train/model.pt")}
    again = medssl(*args, "--resume", env=env, timeout=600)
    assert again.code == 0, again.err[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_binary_model_registers_and_predicts(breast_tiny, tmp_path, module_store):
    """A binary model: evaluate (AUC … MCR), register (the gate reads AUC), then `predict` from
    the registry gives the train stage's test scores and decides at the val threshold. A
    cross-validation round's model is refused by register in one line."""
    from medssl.config import PredictConfig, RegisterConfig
    from medssl.errors import ConfigError
    from medssl.stages.predict import predict
    from medssl.stages.register import register

    gate = RegisterConfig(model_name="lesions", metric="test_auc")
    fold = tmp_path / "fold"
    train(breast_tiny, fold, _cfg(tmp_path, cv_folds=5, cv_fold=2), hparams=_params("lr"))
    evaluate(fold, None, _eval_cfg())
    with pytest.raises(ConfigError, match=r"a cross-validation round \(fold 2 of 5\)"):
        register(fold, None, None, gate)
    model = tmp_path / "model"
    train(breast_tiny, model, _cfg(tmp_path), hparams=_params("lr"), progress=False)
    metrics = evaluate(model, None, _eval_cfg()).metrics
    result = register(model, None, None, gate)
    assert result.promoted
    out = predict("models:/lesions@champion", breast_tiny, tmp_path / "pred", PredictConfig())
    assert out.images == len(pd.read_parquet(breast_tiny / "manifest.parquet"))
    table = pd.read_parquet(tmp_path / "pred" / "predictions.parquet")
    assert list(table.filter(like="malignant").columns) == ["malignant_prob", "malignant"]
    assert table["lesion_id"].notna().all()
    own = pd.read_parquet(model / "predictions.parquet").set_index("image")
    mine = table.set_index("image").loc[own.index]
    np.testing.assert_allclose(mine["malignant_prob"], own["score_malignant"], atol=1e-5)
    threshold = metrics["per_class"]["malignant"]["threshold"]
    assert (mine["malignant"] == (own["score_malignant"] >= threshold)).all()


def test_step_decay_of_the_learning_rate():
    """Paper 004 §3.1: ×0.1 every 50 epochs, here every 2; a function of the epoch alone."""
    from medssl.engine.loop import decay_learning_rate

    cfg = TrainConfig(lr=1e-3, lr_decay_every=2, lr_decay=0.1)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    opt.param_groups[0]["initial_lr"] = cfg.lr
    seen = []
    for epoch in (0, 1, 2, 3, 4, 1):
        decay_learning_rate(opt, cfg, epoch)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-3])
    decay_learning_rate(opt, TrainConfig(lr=1e-3), 10)  # off by default
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_cross_validation_errors_are_one_line(breast_tiny, tiny_split, tmp_path):
    """Too few patients for the folds; a method that keeps its best val epoch; the study on a
    dataset it cannot use."""
    from cli_helpers import medssl
    from medssl.stages.cv_study import check_dataset

    with pytest.raises(DataContractError, match=r"cannot fill train\.cv_folds=50 patient-disjoint"):
        train(breast_tiny, tmp_path / "m", _cfg(tmp_path, cv_folds=50), hparams=_params("lr"))
    with pytest.raises(ConfigError, match="leaves no val rows, and 'supervised' keeps its best"):
        train(tiny_split, tmp_path / "m", _cfg(tmp_path, method="supervised", cv_folds=5))
    with pytest.raises(DataContractError, match="cannot fill 50 patient-disjoint folds"):
        check_dataset(breast_tiny, 50)
    with pytest.raises(DataContractError, match="a multilabel dataset; the study needs a binary"):
        check_dataset(tiny_split, 5)
    result = medssl("study", "cv", str(REPO / "tests"), "--out", str(tmp_path / "s"), "--no-track")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1


def test_lesions_are_keyed_within_their_patient():
    """Two patients may both number a lesion L1: they are different lesions (for the positives
    of eq. 3 and for MCR)."""
    from medssl.data.contract import DatasetInfo, lesion_keys

    table = pd.DataFrame(
        {"patient_id": ["p1", "p1", "p2", "p2"], "lesion_id": ["L1", "L1", "L1", None]}
    )
    keys = lesion_keys(table)
    assert keys[0] == keys[1] != keys[2] and pd.isna(keys[3])
    with pytest.raises(ValueError, match="exactly one class"):
        DatasetInfo(name="x", task="binary", classes=["benign", "malignant"], modality="US",
                    image_size=8)  # fmt: skip
