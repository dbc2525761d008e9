"""The pretrain stage and the encoder-method contract on the tiny archive: PICA and LSD a few
steps each, encoder.pt into `train`, exact resume, the method's params.yaml section, bad input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cli_helpers import cli, expect_error
from medssl.config import EvaluateConfig, PretrainConfig, TrainConfig, load_params
from medssl.data.cache import open_cache
from medssl.data.contract import Dataset
from medssl.engine import Trainer
from medssl.engine.checkpoint import load_checkpoint
from medssl.errors import ConfigError, DataContractError
from medssl.method_params import SECTIONS
from medssl.methods import METHODS, Lsd, Pica
from medssl.methods.clustering import size_column
from medssl.methods.pica import LsdParams
from medssl.models import build_classifier, load_model
from medssl.stages.evaluate import evaluate
from medssl.stages.pretrain import pretrain
from medssl.stages.train import train
from test_engine import KillAt, SimulatedKill

NO_PARAMS = "/nonexistent/params.yaml"  # built-in defaults, whatever the repository's file says
FAST = [
    "pretrain.device=cpu",
    "pretrain.batch_exams=4",
    "pretrain.max_batch_images=48",
    "pretrain.max_steps=3",
    "pretrain.checkpoint_every=2",
    "pretrain.tsne_points=60",
    "evaluate.bootstrap=50",
]


def _cfg(tmp_path: Path, **overrides) -> PretrainConfig:
    base = {
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "batch_exams": 4,
        "max_batch_images": 48,
        "max_epochs": 2,
        "checkpoint_every": 2,
        "lr": 1e-3,
        "tsne_points": 0,
    }
    return PretrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def lsd_run(tiny_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    out = root / "lsd"
    args = ["pretrain", tiny_split, "--out", out, "--no-track", "--params", NO_PARAMS]
    for s in [*FAST, f"pretrain.cache_dir={root / 'cache'}", "lsd.lambda=1.5"]:
        args += ["-S", s]
    from medssl.cli import run

    assert run([str(a) for a in args]) == 0
    return out


def test_pica_and_lsd_are_encoder_methods_with_their_own_sections():
    assert METHODS["pica"] is Pica and METHODS["lsd"] is Lsd
    # the light registry params.yaml is read with agrees with the methods' own declarations
    declared = {n: c.Hyperparameters for n, c in METHODS.items() if c.Hyperparameters}
    assert declared == SECTIONS
    assert Pica.product == Lsd.product == "encoder" and Lsd.monitor is None
    params = load_params(Path(NO_PARAMS), ["lsd.lambda=5", "lsd.alpha=1.3", "pica.clusters=9"])
    assert params.method_params("lsd") == LsdParams(**{"lambda": 5, "alpha": 1.3})
    assert params.method_params("pica").clusters == 9
    dumped = params.dump()
    assert dumped["lsd"] == {"lambda": 5.0, "clusters": None, "alpha": 1.3}
    assert dumped["pretrain"]["method"] == "lsd" and dumped["pretrain"]["max_epochs"] == 100
    # paper 000 §3.2 / §3.3.1 defaults
    defaults = load_params(Path(NO_PARAMS))
    assert defaults.method_params("pica").lambda_ == 2.0
    assert defaults.pretrain.batch_exams == 16 and defaults.pretrain.lr == 1e-4


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("lsd.alpha=0.5", "'lsd.alpha': Input should be greater than or equal to 1"),
        ("lsd.colour=1", "unknown parameter 'lsd.colour' (known: lsd.lambda, lsd.clusters"),
        ("pica.clusters=1", "'pica.clusters'"),
        ("lsd=3", "'lsd': expected a mapping"),
    ],
)
def test_a_bad_method_parameter_is_one_line(override, fragment):
    with pytest.raises(ConfigError, match=r"^parameter|^unknown") as err:
        load_params(Path(NO_PARAMS), [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_pretrain_writes_the_encoder_folder(lsd_run, tiny_split):
    out = lsd_run
    names = {p.name for p in out.iterdir()}
    assert {
        "encoder.pt", "history.csv", "metrics.json", "pretrain.json", "assignments.parquet",
        "clusters.json", "predictions.parquet", "table.txt", "cluster_sizes.png", "tsne.png",
        "checkpoints",
    } <= names  # fmt: skip
    ds = Dataset.open(tiny_split)
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["method"] == "lsd" and summary["steps"] == 3
    assert summary["hyperparameters"] == {"lambda": 1.5, "clusters": None, "alpha": 1.1}
    assert summary["train_images"] == int((ds.manifest["split"] == "unlabeled").sum())

    clusters = json.loads((out / "clusters.json").read_text())
    k = clusters["k"]
    val = ds.manifest[ds.manifest["split"] == "val"]
    label_cols = [
        c for c in ds.manifest.columns if c.startswith("label_") and c != "label_fraction"
    ]
    assert k == max(2, len(val[label_cols].drop_duplicates()))  # §2.2.3: K = combinations on val
    assignments = pd.read_parquet(out / "assignments.parquet")
    assert len(assignments) == len(ds.manifest)
    assert assignments["cluster"].between(0, k - 1).all()
    assert assignments["cluster_prob"].between(1 / k - 1e-6, 1).all()
    assert sum(c["images"] for c in clusters["clusters"]) == len(ds.manifest)
    # Algorithm 1: a cluster's soft label is the mean label of its val images
    val_rows = assignments[assignments["split"] == "val"]
    for c in clusters["clusters"]:
        members = val[(val_rows["cluster"] == c["cluster"]).to_numpy()]
        assert c["dev_images"] == len(members)
        if len(members):
            means = members[label_cols].astype(float).mean().to_numpy()
            np.testing.assert_allclose(list(c["soft_label"].values()), means, atol=1e-6)

    # the unsupervised classifier's numbers are `medssl evaluate`'s numbers on its predictions
    metrics = json.loads((out / "metrics.json").read_text())
    again = evaluate(out, out.parent / "lsd-eval", EvaluateConfig(bootstrap=50))
    assert metrics["test_f1_weighted"] == again.metrics["test_f1_weighted"]
    assert metrics["clusters"] == k and 0 <= metrics["test_nmi"] <= 1
    history = pd.read_csv(out / "history.csv")
    sizes = history[[size_column(i) for i in range(k)]].to_numpy()
    np.testing.assert_allclose(sizes.sum(axis=1), 1.0, atol=1e-9)

    encoder, meta = load_model(out / "encoder.pt")
    assert meta["method"] == "lsd" and meta["product"] == "encoder"
    assert encoder.num_classes == k


def test_train_starts_from_the_encoder(lsd_run, tiny_split, tmp_path):
    encoder, _ = load_model(lsd_run / "encoder.pt")
    model = build_classifier("resnet18", 7, 1, init="checkpoint", weights=lsd_run / "encoder.pt")
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    cfg = TrainConfig(
        device="cpu",
        init="checkpoint",
        weights=str(lsd_run / "encoder.pt"),
        max_steps=1,
        batch_exams=2,
        cache_dir=str(tmp_path / "cache"),
    )
    assert train(tiny_split, tmp_path / "model", cfg, progress=False).steps == 1
    # an encoder of another backbone is one clear line
    with pytest.raises(ConfigError, match=r"a resnet18 model, but train\.backbone is resnet50"):
        build_classifier("resnet50", 7, 1, init="checkpoint", weights=lsd_run / "encoder.pt")


def test_pica_runs_a_few_steps(tiny_split, tmp_path):
    cfg = _cfg(tmp_path, method="pica", max_steps=2)
    result = pretrain(tiny_split, tmp_path / "pica", cfg, progress=False)
    assert result.steps == 2 and (tmp_path / "pica" / "encoder.pt").is_file()
    assert "test_f1_weighted" in result.metrics and "pica" in result.describe()


def _lsd_trainer(dataset_dir, ckpt, cfg, hparams=None, callbacks=()) -> Trainer:
    ds = Dataset.open(dataset_dir)
    method = Lsd(cfg, ds, open_cache(ds, cfg.cache_dir, progress=False), hparams)
    return Trainer(method, cfg, ckpt, progress=False, callbacks=callbacks)


def test_lsd_resume_is_exact_across_an_epoch_boundary(tiny_split, tmp_path):
    cfg = _cfg(tmp_path)
    full = _lsd_trainer(tiny_split, tmp_path / "full", cfg)
    expected = full.fit()
    per_epoch = expected.steps // 2
    assert expected.epochs == 2 and per_epoch >= 2
    kill = per_epoch + 1  # in epoch 2; the last checkpoint is from epoch 1 or the boundary
    killed = _lsd_trainer(tiny_split, tmp_path / "killed", cfg, callbacks=[KillAt(kill)])
    with pytest.raises(SimulatedKill):
        killed.fit()
    saved = load_checkpoint(tmp_path / "killed" / "last.pt")["loop"]["step"]
    assert 0 < saved < kill
    resumed = _lsd_trainer(tiny_split, tmp_path / "killed", cfg)
    result = resumed.fit(resume=True)
    assert result.resumed_from_step == saved
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key

    def plain(history):
        return [
            {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history
        ]

    assert plain(result.history) == plain(expected.history)  # cluster sizes of every epoch too
    # another λ is another run: its checkpoint is refused
    other = LsdParams(**{"lambda": 0.5})
    with pytest.raises(ConfigError, match="different run"):
        _lsd_trainer(tiny_split, tmp_path / "killed", cfg, hparams=other).fit(resume=True)


def test_bad_input_is_one_clear_line(tiny_split, tmp_path, capsys):
    ds = Dataset.open(tiny_split)
    cache = open_cache(ds, str(tmp_path / "cache"), progress=False)
    # K larger than a batch
    with pytest.raises(ConfigError, match="K=200 clusters but a batch holds"):
        Lsd(_cfg(tmp_path), ds, cache, LsdParams(clusters=200))
    # no unlabeled rows
    ds.manifest = ds.manifest.assign(split=ds.manifest["split"].replace("unlabeled", "train"))
    with pytest.raises(DataContractError, match="no unlabeled rows to pre-train on"):
        Lsd(_cfg(tmp_path), ds, cache)
    # a classifier method in the pretrain stage, an encoder method in the train stage
    args = ["--no-track", "--params", NO_PARAMS, "--out", tmp_path / "x"]
    expect_error(
        cli(capsys, "pretrain", tiny_split, *args, "-S", "pretrain.method=supervised"),
        2,
        "pretrain.method 'supervised' is not an encoder method "
        "(known: convirt, deepcluster, lsd, pica, simclr)",
    )
    expect_error(
        cli(capsys, "train", tiny_split, *args, "-S", "train.method=lsd"),
        2,
        "makes an encoder: run it with `medssl pretrain`",
    )
    expect_error(cli(capsys, "pretrain", tiny_split, *args, "-S", "lsd.alpha=0.9"), 2, "lsd.alpha")


def test_the_unsupervised_classifier_is_evaluated_registered_and_served(
    lsd_run, tiny_split, module_store, tmp_path
):
    """model.pt of a clustering run is Algorithm 1 as a classifier: its probabilities are the
    soft labels of the image's cluster, and it registers (abdominal-organs-clusters) and serves
    like any medssl classifier."""
    import mlflow

    from medssl.config import RegisterConfig
    from medssl.models import ClusterClassifier
    from medssl.stages.register import register

    model, meta = load_model(lsd_run / "model.pt")
    assert isinstance(model, ClusterClassifier) and meta["method"] == "lsd"
    ds = Dataset.open(tiny_split)
    assert meta["classes"] == ds.info.classes and model.num_classes == len(ds.info.classes)
    clusters = json.loads((lsd_run / "clusters.json").read_text())["clusters"]
    soft = np.array([list(c["soft_label"].values()) for c in clusters])
    np.testing.assert_allclose(model.soft_labels.numpy(), soft, atol=1e-6)

    eval_dir = tmp_path / "eval"
    evaluate(lsd_run, eval_dir, EvaluateConfig(bootstrap=20))
    name = "abdominal-organs-clusters"
    result = register(lsd_run, eval_dir, None, RegisterConfig(model_name=name))
    assert result.version == "1" and result.promoted  # the first version of its own task
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    preds = pd.read_parquet(lsd_run / "predictions.parquet")
    test = preds[preds["split"] == "test"].reset_index(drop=True)
    frame = pd.DataFrame({"image": [ds.image_path(p).read_bytes() for p in test["image"]]})
    out = served.predict(frame)
    probs = out[[f"{c}_prob" for c in ds.info.classes]].to_numpy()
    want = test[[f"score_{c}" for c in ds.info.classes]].to_numpy()
    np.testing.assert_allclose(probs, np.clip(want, 1e-6, 1 - 1e-6), atol=1e-5)
