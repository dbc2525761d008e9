"""Paper 002: image-text pairs (`medssl data pairs`), the kidney task (`medssl data organ-task`),
ConVIRT's loss and pre-training, GCE fine-tuning and the Table 1 layout."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
)

from cli_helpers import cli
from medssl.config import PairsConfig
from medssl.data.augment import gaussian_blur
from medssl.data.contract import Dataset
from medssl.data.synth.archive import CLASSES, plan_archive
from medssl.errors import DataContractError
from medssl.methods.convirt import convirt_loss
from medssl.methods.supervised import generalized_bce, multilabel_bce
from medssl.metrics.binary import (
    accuracy_from_counts,
    balanced_accuracy_from_counts,
    binary_report,
    macro_f1_from_counts,
)
from medssl.metrics.bootstrap import bootstrap_paired_difference
from medssl.models import load_model
from medssl.stages.pairs import make_pairs, organ_task
from medssl.stages.validate import validate

# --- losses -----------------------------------------------------------------------------------


def test_convirt_loss_against_a_hand_computation():
    """Two pairs: I = (e1, e2), T = (e1, (e1 + e2)/√2); cosines [[1, c], [0, c]], c = 1/√2."""
    image = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms do not matter: cosine similarity
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    tau, lam, c = 0.5, 0.75, 1 / math.sqrt(2)
    s = np.array([[1.0, c], [0.0, c]]) / tau
    i2t = np.mean([-s[0, 0] + np.log(np.exp(s[0]).sum()), -s[1, 1] + np.log(np.exp(s[1]).sum())])
    t2i = np.mean(
        [-s[0, 0] + np.log(np.exp(s[:, 0]).sum()), -s[1, 1] + np.log(np.exp(s[:, 1]).sum())]
    )
    loss, got_i2t, got_t2i = convirt_loss(image, text, lam, tau)
    assert got_i2t.item() == pytest.approx(i2t, rel=1e-5)
    assert got_t2i.item() == pytest.approx(t2i, rel=1e-5)
    assert loss.item() == pytest.approx(lam * i2t + (1 - lam) * t2i, rel=1e-5)
    # λ = 1 and λ = 0 leave one direction
    assert convirt_loss(image, text, 1.0, tau)[0].item() == pytest.approx(i2t, rel=1e-5)
    assert convirt_loss(image, text, 0.0, tau)[0].item() == pytest.approx(t2i, rel=1e-5)


def test_convirt_loss_is_low_for_matched_pairs_and_pulls_them_together():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    matched = convirt_loss(z, z, 0.75, 0.1)[0]
    shuffled = convirt_loss(z, z.roll(1, 0), 0.75, 0.1)[0]
    assert matched < 0.1 < shuffled
    image = torch.randn(8, 16, generator=g, requires_grad=True)
    text = torch.randn(8, 16, generator=g)
    convirt_loss(image, text, 0.75, 0.1)[0].backward()
    step = image.detach() - 0.1 * image.grad
    cos = torch.nn.functional.cosine_similarity
    assert (cos(step, text) > cos(image.detach(), text)).float().mean() >= 0.75


def test_gce_limits_are_cross_entropy_and_mae():
    """Zhang & Sabuncu 2018: L_q → CE as q → 0 and L_1 = 1 − p_y = |y − p| (MAE)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 3, generator=g) * 3
    y = (torch.rand(64, 3, generator=g) < 0.4).float()
    assert generalized_bce(logits, y, 1e-5).item() == pytest.approx(
        multilabel_bce(logits, y).item(), rel=1e-3
    )
    mae = (y - torch.sigmoid(logits)).abs().mean()
    assert generalized_bce(logits, y, 1.0).item() == pytest.approx(mae.item(), rel=1e-5)
    # bounded by 1/q, and a confident mistake costs less than CE (the noise robustness)
    wrong = generalized_bce(torch.tensor([[8.0]]), torch.tensor([[0.0]]), 0.7)
    assert wrong.item() < 1 / 0.7 < multilabel_bce(torch.tensor([[8.0]]), torch.tensor([[0.0]]))


def test_gaussian_blur_keeps_mass_and_matches_the_kernel():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 1, 32, 32)
    x[:, :, 16, 16] = 1
    y = gaussian_blur(x, 1.0, (1.0, 1.0), g)
    assert torch.allclose(y.sum((1, 2, 3)), torch.ones(3), atol=1e-5)
    assert y[0, 0, 16, 16].item() == pytest.approx(1 / (2 * math.pi), rel=2e-3)
    assert torch.equal(gaussian_blur(x, 0.0, (0.1, 2.0), g), x)


# --- Table 1 metrics --------------------------------------------------------------------------


def test_two_class_metrics_and_bootstrap_statistics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    scores = np.clip(0.35 * y + rng.random(300) * 0.7, 0, 1)
    pred = scores >= 0.5
    got = binary_report(y, scores, pred)
    assert got["npv"] == pytest.approx(precision_score(~y, ~pred))
    assert got["specificity"] == pytest.approx(recall_score(~y, ~pred))
    assert got["f1_negative"] == pytest.approx(f1_score(~y, ~pred))
    assert got["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert got["precision_macro"] == pytest.approx(precision_score(y, pred, average="macro"))
    exams = np.repeat(np.arange(60), 5)
    for stat, ref in (
        (accuracy_from_counts, accuracy_score(y, pred)),
        (balanced_accuracy_from_counts, balanced_accuracy_score(y, pred)),
        (macro_f1_from_counts, f1_score(y, pred, average="macro")),
    ):
        ci = bootstrap_paired_difference(y[:, None], [pred[:, None]], [], exams, statistic=stat)
        assert ci.estimate == pytest.approx(ref)
        assert ci.low < ref < ci.high


# --- pairs and the kidney task ----------------------------------------------------------------


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


KIDNEY_WORDS = re.compile(r"\b(reins?|renal|renale|renaux|renales|pyelocalic\w*|rd|rg)\b")


@pytest.fixture(scope="module")
def truth_clusters(tiny_split, tiny_params, tmp_path_factory) -> Path:
    """A pretrain folder whose clusters are the generator's truth: cluster 1 = the kidney frames
    (soft label 0.9 kidney), cluster 0 = the others (0.05) — the input `pairs` reads."""
    plan = plan_archive("tiny", tiny_params.data.seed, tiny_params.split.fractions)
    kidney = pd.Series(plan.truth()[:, CLASSES.index("kidney")], index=plan.manifest["image"])
    m = Dataset.open(tiny_split).manifest
    folder = tmp_path_factory.mktemp("clusters")
    assignments = m[["image", "exam_id", "split"]].copy()
    assignments["cluster"] = kidney.loc[m["image"]].to_numpy().astype("int32")
    assignments["cluster_prob"] = np.float32(1.0)
    assignments.to_parquet(folder / "assignments.parquet")
    soft = [{c: (0.9 if c == "kidney" else 0.1) * k + (0.05 if c == "kidney" else 0.2) * (1 - k)
             for c in CLASSES} for k in (0, 1)]  # fmt: skip
    clusters = {
        "k": 2,
        "classes": list(CLASSES),
        "clusters": [
            {"cluster": k, "images": 1, "dev_images": (30, 10)[k], "soft_label": soft[k]}
            for k in (0, 1)
        ],
    }
    (folder / "clusters.json").write_text(json.dumps(clusters))
    return folder


@pytest.fixture(scope="module")
def pairs(tiny_split, truth_clusters, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "pairs"
    make_pairs(tiny_split, truth_clusters, out, PairsConfig())
    return out


def test_pairs_are_the_unlabeled_kidney_images_with_their_exams_kidney_sentences(
    tiny_split, truth_clusters, pairs
):
    """§3.4: every kidney image (per its cluster) of an unlabeled exam whose report mentions the
    kidneys, with those sentences; images of exams that never mention them are dropped."""
    source = Dataset.open(tiny_split)
    reports = source.reports.set_index("exam_id")["text"]
    a = pd.read_parquet(truth_clusters / "assignments.parquet").set_index("image")["cluster"]
    m = source.manifest
    candidates = m[(m["split"] == "unlabeled") & (a.loc[m["image"]].to_numpy() == 1)]
    ds = Dataset.open(pairs)
    got = ds.manifest
    assert ds.info.task == "image-text"
    assert set(got["image"]) <= set(candidates["image"]) and len(got) > 0
    assert (got["split"] == "unlabeled").all()
    assert not any(c.startswith("label_") for c in got.columns)
    for _, row in got.iterrows():
        report = reports[row["exam_id"]]
        assert KIDNEY_WORDS.search(_fold(row["text"])), row["text"]
        # every paired sentence comes from the exam's own report
        assert all(s.strip(" .") in report for s in re.split(r"(?<=\.)\s+", row["text"]) if s)
    for exam in set(candidates["exam_id"]) - set(got["exam_id"]):
        sentences = re.split(r"(?<=\.)\s+", reports[exam])
        body = [s for s in sentences if not s.startswith(("Indication", "Conclusion"))]
        assert not any(KIDNEY_WORDS.search(_fold(s)) for s in body), reports[exam]
    flow = json.loads((pairs / "flow.json").read_text())
    assert flow["organ_images"]["images"] == len(candidates)
    assert flow["pairs"]["images"] == len(got)
    assert flow["pairs"]["images"] + flow["unpaired"]["images"] == len(candidates)
    assert (pairs / "flow.png").is_file() and (pairs / "tokenizer" / "vocab.txt").is_file()
    assert (pairs / "mentions.parquet").is_file()
    # images are shared with the source, not copied
    assert ds.image_path(got["image"].iloc[0]).is_file() and not (pairs / "images").exists()


def test_pairs_dataset_validates_and_an_empty_description_fails(pairs, tmp_path):
    assert validate(pairs, tmp_path / "ok").success
    bad = tmp_path / "bad"
    ds = Dataset.open(pairs)
    ds.manifest.loc[0, "text"] = ""
    ds.root = bad
    ds.info = ds.info.model_copy(update={"image_root": str(Dataset.open(pairs).image_dir)})
    ds.save()
    result = validate(bad, tmp_path / "bad-report")
    assert not result.success and "text is not empty" in result.failed_names


def test_organ_task_is_the_labeled_kidney_images_with_their_finding(tiny_split, tmp_path):
    out = tmp_path / "kidney"
    result = organ_task(tiny_split, out, PairsConfig())
    ds = Dataset.open(out)
    m, src = ds.manifest, Dataset.open(tiny_split).manifest
    want = src[src["split"].isin(["train", "val", "test"]) & (src["label_kidney"] == 1)]
    assert ds.info.task == "binary" and ds.info.classes == ["abnormal"]
    assert sorted(m["image"]) == sorted(want["image"])
    truth = want.set_index("image")["kidney_abnormal"].astype(int)
    assert (m["target"].astype(int).to_numpy() == truth.loc[m["image"]].to_numpy()).all()
    assert sum(c["images"] for c in result.counts.values()) == len(m)
    # a val/test split of one class is named in a warning line (its metrics are undefined)
    one_class = [
        s for s in ("val", "test") if m.loc[m["split"] == s, "target"].nunique() == 1
    ]  # fmt: skip
    assert result.one_class() == one_class
    assert all(f"warning: {s} holds one class only" in result.describe() for s in one_class)


def test_one_line_errors(tiny_split, truth_clusters, tmp_path, capsys):
    with pytest.raises(DataContractError, match="no cluster's soft label gives kidney more"):
        make_pairs(tiny_split, truth_clusters, tmp_path / "p", PairsConfig(threshold=0.95))
    with pytest.raises(DataContractError, match="not found"):
        make_pairs(tiny_split, tmp_path, tmp_path / "p", PairsConfig())
    assert not (tmp_path / "p").exists()
    out = cli(capsys, "data", "organ-task", str(tiny_split), "--out", str(tmp_path / "k"),
              "--target", "exam_id")  # fmt: skip
    assert out.code == 2 and "exam_id is not 0/1" in out.error_line()
    out = cli(capsys, "data", "organ-task", str(tiny_split), "--out", str(tmp_path / "k"),
              "--target", "nope")  # fmt: skip
    assert out.code == 2 and "no nope column" in out.error_line()
    out = cli(capsys, "pretrain", str(tiny_split), "--out", str(tmp_path / "c"),
              "-S", "pretrain.method=convirt")  # fmt: skip
    assert out.code == 2 and "needs an image-text dataset" in out.error_line()


# --- the chain on tiny: pairs → ConVIRT → kidney task → GCE fine-tuning → evaluate --------------


def test_convirt_pretrains_and_gce_fine_tunes_from_its_encoder(pairs, tiny_split, tmp_path, capsys):
    cache = f"pretrain.cache_dir={tmp_path / 'cache'}"
    small = ["-S", "convirt.projection_dim=16", "-S", "convirt.text_hidden=16",
             "-S", "convirt.text_layers=1", "-S", "convirt.max_length=32"]  # fmt: skip
    enc = tmp_path / "convirt"
    out = cli(capsys, "pretrain", str(pairs), "--out", str(enc), "-S", "pretrain.method=convirt",
              "-S", "pretrain.max_steps=4", "-S", "pretrain.batch_exams=4", "-S", cache,
              "-S", "pretrain.device=cpu", *small)  # fmt: skip
    assert out.code == 0, out.err[-2000:]
    history = pd.read_csv(enc / "history.csv")
    assert np.isfinite(history["train_loss"]).all()
    encoder, meta = load_model(enc / "encoder.pt")
    assert meta["method"] == "convirt" and encoder.num_classes == 16  # the image projection
    kidney = tmp_path / "kidney"
    assert cli(capsys, "data", "organ-task", str(tiny_split), "--out", str(kidney)).code == 0
    model = tmp_path / "model"
    out = cli(capsys, "train", str(kidney), "--out", str(model), "-S", "supervised.loss=gce",
              "-S", "train.init=checkpoint", "-S", f"train.weights={enc / 'encoder.pt'}",
              "-S", "train.max_steps=3", "-S", f"train.cache_dir={tmp_path / 'cache'}",
              "-S", "train.device=cpu")  # fmt: skip
    assert out.code == 0, out.err[-2000:]
    train_json = json.loads((model / "train.json").read_text())
    assert train_json["hyperparameters"] == {"loss": "gce", "q": 0.7}
    out = cli(capsys, "evaluate", str(model), "--out", str(tmp_path / "eval"))
    assert out.code == 0, out.err[-2000:]
    table = (tmp_path / "eval" / "table.txt").read_text()
    assert "no abnormal" in table and "macro avg" in table and "weighted avg" in table
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"test_npv", "test_specificity", "test_f1_macro", "test_balanced_accuracy"} <= set(
        metrics
    )


def test_pairs_and_organ_task_component_bodies(tiny_split, truth_clusters, tmp_path, monkeypatch):
    """The KFP components (pipelines/image_text.py) call the same stage functions."""
    from kfp.dsl import Dataset as Artifact
    from kfp.dsl import Model

    from medssl.config import load_params
    from medssl.orchestration import params_argument

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import components as c

    params = params_argument(load_params(Path("/nonexistent"), ["pairs.threshold=auto"]))
    splits = Artifact(name="splits", uri=str(tiny_split))
    images = Artifact(name="dataset", uri=str(tiny_split))
    encoder = Model(name="encoder", uri=str(truth_clusters))
    image_text = Artifact(name="image_text", uri=str(tmp_path / "pairs"))
    c.pairs.python_func(
        splits=splits, images=images, encoder=encoder, params=params, image_text=image_text
    )
    assert image_text.metadata["pairs"] == len(Dataset.open(image_text.path).manifest) > 0
    assert image_text.metadata["clusters"] == [1]  # auto: above the base rate
    task = Artifact(name="task", uri=str(tmp_path / "task"))
    c.organ_task.python_func(splits=splits, images=images, params=params, task=task)
    assert Dataset.open(task.path).info.task == "binary" and task.metadata["images_train"] > 0


def test_a_retrained_tokenizer_changes_the_resume_fingerprint(pairs, tmp_path):
    """Re-running `pairs` with another vocabulary leaves the manifest as it was; the resume
    fingerprint must still change, or a resumed run would read new ids with old embeddings."""
    import shutil

    from medssl.config import load_params
    from medssl.data.cache import open_cache
    from medssl.method_params import ConvirtParams
    from medssl.methods.convirt import Convirt
    from medssl.text.tokens import train_tokenizer

    cfg = load_params(Path("/nonexistent"), [f"pretrain.cache_dir={tmp_path / 'cache'}"]).pretrain
    ds = Dataset.open(pairs)
    cache = open_cache(ds, cfg.cache_dir, progress=False)
    before = Convirt(cfg, ds, cache, ConvirtParams()).fingerprint()
    shutil.copytree(pairs / "tokenizer", tmp_path / "tok")
    train_tokenizer(ds.reports["text"].tolist(), tmp_path / "tok", vocab_size=150)
    after = Convirt(cfg, ds, cache, ConvirtParams(tokenizer=str(tmp_path / "tok"))).fingerprint()
    assert before["convirt.tokenizer_sha256"] != after["convirt.tokenizer_sha256"]
    assert {k: v for k, v in before.items() if "tokenizer" not in k} == {
        k: v for k, v in after.items() if "tokenizer" not in k
    }
