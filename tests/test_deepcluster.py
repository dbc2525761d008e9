"""DeepCluster (paper 001 §3): the k-means backends, uniform sampling over pseudo-labels, the
method a few epochs on a tiny archive (NMI(t, t−1) logged, purity as a hand count, the exported
nearest-centroid classifier) and an exact resume."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_SPLITS
from medssl.config import PretrainConfig, load_params
from medssl.data.cache import open_cache
from medssl.data.contract import Dataset, label_column
from medssl.data.samplers import UniformLabelSampler
from medssl.engine import Trainer
from medssl.engine.checkpoint import load_checkpoint
from medssl.kmeans import _split_largest, assign, kmeans
from medssl.methods import METHODS, DeepCluster
from medssl.metrics.clustering import label_combinations, nmi
from medssl.models import load_model
from medssl.stages.pretrain import pretrain
from medssl.stages.split import split
from medssl.stages.synth import synth
from test_engine import KillAt, SimulatedKill


def _blobs(n: int, k: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 6
    truth = rng.integers(0, k, n)
    return (centres[truth] + rng.normal(size=(n, d))).astype(np.float32), truth


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kmeans_finds_the_blobs_deterministically(backend):
    x, truth = _blobs(3000, 6)
    a = kmeans(x, 6, iterations=20, seed=3, backend=backend)
    b = kmeans(x, 6, iterations=20, seed=3, backend=backend)
    assert a.backend == backend and np.array_equal(a.labels, b.labels)  # same seed, same labels
    assert nmi(truth, a.labels) > 0.95 and a.empty == 0
    assert a.centroids.shape == (6, 16) and np.array_equal(assign(x, a.centroids), a.labels)


def test_faiss_keeps_every_point():
    """faiss samples 256 points per centroid by default; here every point counts, so each
    centroid is the exact mean of its (well-separated) cluster."""
    x, _ = _blobs(4000, 2, d=8, seed=1)
    result = kmeans(x, 2, iterations=10, seed=0, backend="faiss")
    for k in range(2):
        mean = x[result.labels == k].mean(axis=0)
        np.testing.assert_allclose(result.centroids[k], mean, atol=1e-4)


def test_an_empty_cluster_is_reseeded_by_splitting_the_largest():
    c = torch.tensor([[0.0, 0.0], [4.0, 2.0], [9.0, 9.0]])
    counts = torch.tensor([0.0, 10.0, 3.0])
    new, new_counts = _split_largest(c, counts, [0], torch.Generator().manual_seed(0))
    assert not torch.equal(new[0], new[1])  # two distinct centroids near the big one
    torch.testing.assert_close((new[0] + new[1]) / 2, torch.tensor([4.0, 2.0]))
    assert new_counts.tolist() == [5.0, 5.0, 3.0]
    # too few distinct points for k: the torch backend still returns k centroids
    x = np.repeat(np.eye(3, dtype=np.float32), 20, axis=0)
    result = kmeans(x, 5, iterations=5, seed=0, backend="torch")
    assert result.centroids.shape == (5, 3) and result.reseeded > 0
    with pytest.raises(ValueError, match="k-means needs"):
        kmeans(x, 100, backend="torch")


def test_uniform_label_sampler_balances_pseudo_labels():
    rows = np.arange(100, 400)
    sampler = UniformLabelSampler(rows, batch_size=64, seed=0)
    first = np.concatenate(sampler.batches(0))
    assert sorted(first.tolist()) == rows.tolist()  # before k-means: a shuffle of the rows
    labels = np.r_[np.zeros(270, int), np.ones(20, int), np.full(10, 2)]  # 90 % in cluster 0
    sampler.set_labels(labels)
    batches = sampler.batches(0)
    drawn = np.concatenate(batches)
    assert len(drawn) == len(rows) and len(batches) == len(sampler) == 5
    counts = np.bincount(labels[np.searchsorted(rows, drawn)], minlength=3)
    assert counts.max() - counts.min() <= 1  # 100 each: uniform over the pseudo-labels
    assert np.array_equal(drawn, np.concatenate(sampler.batches(0)))  # (seed, epoch) decides
    assert not np.array_equal(drawn, np.concatenate(sampler.batches(1)))


def _cfg(tmp_path, **overrides) -> PretrainConfig:
    base = {
        "method": "deepcluster",
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "optimizer": "sgd",
        "lr": 0.05,
        "weight_decay": 1e-5,
        "max_batch_images": 64,
        "max_epochs": 3,
        "checkpoint_every": 3,
        "tsne_points": 0,
    }
    return PretrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def cardiac_split(tmp_path_factory):
    """The tiny cardiac-MR archive (paper 001's 13 categories) through the split stage."""
    root = tmp_path_factory.mktemp("cardiac")
    params = load_params(Path("/nonexistent"), [*TINY_SPLITS, "data.kind=cardiac-mr"])
    synth(root / "archive", params.data, params.split, progress=False)
    split(root / "archive", root / "splits", params.split)
    return root / "splits"


@pytest.fixture(scope="module")
def deepcluster_run(cardiac_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("deepcluster")
    hp = DeepCluster.Hyperparameters(overcluster=2)
    cfg = _cfg(root, tsne_points=40, rows="unlabeled+train")
    return pretrain(cardiac_split, root / "enc", cfg, hparams=hp, progress=False)


def test_deepcluster_logs_stability_and_its_purity_is_a_hand_count(deepcluster_run, cardiac_split):
    result = deepcluster_run
    out = result.out_dir
    assert METHODS["deepcluster"] is DeepCluster and result.epochs == 3
    history = pd.read_csv(out / "history.csv")
    # NMI(t, t-1) from the second epoch on, the paper's other curves every epoch
    assert history["nmi_prev"].isna().tolist() == [True, False, False]
    assert history["nmi_prev"].iloc[1:].between(0, 1).all()
    for key in ("val_nmi", "val_purity", "train_loss", "clusters_empty", "feature_seconds"):
        assert history[key].notna().all(), key
    assert {"training_curves.png", "tsne.png", "cluster_sizes.png", "model.pt"} <= {
        p.name for p in out.iterdir()
    }
    assert "paper 001 Table 1 layout" in (out / "table.txt").read_text()

    # purity (paper 001 eq. 3) of the test rows, counted by hand from the written files
    ds = Dataset.open(cardiac_split)
    assignments = pd.read_parquet(out / "assignments.parquet")
    cols = [label_column(c) for c in ds.info.classes]
    test = ds.manifest["split"].to_numpy() == "test"
    combos = label_combinations(ds.manifest.loc[test, cols].to_numpy(dtype=float))
    clusters = assignments.loc[test, "cluster"].to_numpy()
    majority = sum(np.bincount(combos[clusters == k]).max() for k in np.unique(clusters))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_purity"] == pytest.approx(majority / test.sum())
    assert metrics["clusters"] == 2 * len(np.unique(label_combinations(
        ds.manifest[cols].dropna().to_numpy(dtype=float))))  # fmt: skip
    assert 0 <= metrics["nmi_prev"] <= 1

    # model.pt is the nearest-final-centroid classifier of the assignments
    model, meta = load_model(out / "model.pt")
    assert meta["input_norm"] == "image" and meta["l2_features"] is True
    cache = open_cache(ds, str(out.parent / "cache"), progress=False)
    rows = np.flatnonzero(test)
    x = torch.from_numpy(cache.take(rows)).unsqueeze(1).float() / 255
    with torch.no_grad():
        picked = model.head(F.normalize(model.features(x), dim=1)).argmax(dim=1).numpy()
    assert (picked == clusters).mean() > 0.95  # float ties aside


def _trainer(dataset_dir, ckpt, cfg, callbacks=()) -> Trainer:
    ds = Dataset.open(dataset_dir)
    method = DeepCluster(cfg, ds, open_cache(ds, cfg.cache_dir, progress=False))
    return Trainer(method, cfg, ckpt, progress=False, callbacks=callbacks)


def test_deepcluster_resume_is_exact(tiny_split, tmp_path):
    """Pseudo-labels and centroids are method state: a run killed mid-epoch and resumed ends
    with the weights and history of an uninterrupted one."""
    cfg = _cfg(tmp_path, max_epochs=2, checkpoint_every=2, max_batch_images=32)
    full = _trainer(tiny_split, tmp_path / "full", cfg)
    expected = full.fit()
    per_epoch = expected.steps // 2
    kill = per_epoch + 3  # in epoch 2, after its checkpoint
    killed = _trainer(tiny_split, tmp_path / "killed", cfg, callbacks=[KillAt(kill)])
    with pytest.raises(SimulatedKill):
        killed.fit()
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["loop"]["step"] > per_epoch
    resumed = _trainer(tiny_split, tmp_path / "killed", cfg)
    result = resumed.fit(resume=True)
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    drop = ("seconds", "images_per_s", "feature_seconds", "kmeans_seconds")
    plain = [[{k: v for k, v in r.items() if k not in drop} for r in h] for h in
             (result.history, expected.history)]  # fmt: skip
    assert plain[0] == plain[1]
