"""Paper 003 §III.C: SimCLR's NT-Xent loss, its augmentations, the histogram normalisation of the
model input, and `medssl pretrain -S pretrain.method=simclr` on the tiny archive (encoder.pt into
`build_classifier`, labels never read, the loss going down, exact resume)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from medssl.config import PretrainConfig, load_params
from medssl.data.augment import SIMCLR, SimclrSpec, gaussian_blur, simclr_views, to_float
from medssl.data.cache import open_cache
from medssl.data.contract import Dataset
from medssl.engine import Trainer
from medssl.engine.checkpoint import load_checkpoint
from medssl.engine.loop import Callback
from medssl.method_params import SimclrParams
from medssl.methods import METHODS, Simclr
from medssl.methods.lesion import contrastive_loss, contrastive_masks
from medssl.methods.simclr import nt_xent
from medssl.models import Classifier, build_classifier, load_model, save_model
from medssl.models.classifier import HistogramEqualize
from test_engine import KillAt, SimulatedKill

NO_PARAMS = "/nonexistent/params.yaml"  # built-in defaults, whatever the repository's file says
ONLY_GEOMETRY = dataclasses.replace(SIMCLR, blur=0.0, noise=0.0)
IDENTITY = dataclasses.replace(ONLY_GEOMETRY, scale=(1.0, 1.0), hflip=0.0)


def _cfg(tmp_path, **overrides) -> PretrainConfig:
    base = {
        "method": "simclr",
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "batch_exams": 2,
        "max_batch_images": 16,
        "checkpoint_every": 2,
        "lr": 1e-3,
        "tsne_points": 0,
    }
    return PretrainConfig(**{**base, **overrides})


# --- NT-Xent ----------------------------------------------------------------------------------


def test_nt_xent_against_a_hand_computation():
    """Two images, four views a, b (z1) and c, d (z2); partners a↔c, b↔d."""
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # a = e1, b = e2 (norms do not matter)
    z2 = torch.tensor([[3.0, 1.0], [-1.0, 2.0]])  # c = (3, 1)/√10, d = (−1, 2)/√5
    ac, ad, bc, bd = 3 / math.sqrt(10), -1 / math.sqrt(5), 1 / math.sqrt(10), 2 / math.sqrt(5)
    cd = -1 / math.sqrt(50)
    tau = 0.5
    cosines = [[1, 0, ac, ad], [0, 1, bc, bd], [ac, bc, 1, cd], [ad, bd, cd, 1]]  # a, b, c, d
    s = np.array(cosines) / tau

    def ell(i: int, j: int) -> float:  # SimCLR eq. 1
        others = [k for k in range(4) if k != i]
        return -s[i, j] + math.log(sum(math.exp(s[i, k]) for k in others))

    expected = (ell(0, 2) + ell(2, 0) + ell(1, 3) + ell(3, 1)) / 4
    loss, positive, accuracy = nt_xent(z1, z2, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert positive.item() == pytest.approx((ac + bd) / 2, rel=1e-5)
    assert accuracy.item() == 1.0  # every view's nearest other view is its partner
    # the views in the other order: the same numbers
    for got, want in zip(nt_xent(z2, z1, tau), (loss, positive, accuracy), strict=True):
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # the wrong partners (a↔d, b↔c): no view finds its partner first
    wrong = nt_xent(z1, z2.flip(0), tau)
    assert wrong[2].item() == 0.0 and wrong[0] > loss
    expected_wrong = (ell(0, 3) + ell(3, 0) + ell(1, 2) + ell(2, 1)) / 4
    assert wrong[0].item() == pytest.approx(expected_wrong, rel=1e-5)


def test_nt_xent_is_paper_004s_instance_recognition_loss():
    """The same formula as lesion recognition's eq. 2 with IR positives (eq. 5), from which it
    differs only by name."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    ids = torch.arange(6).repeat(2)
    positives, negatives = contrastive_masks(ids, torch.zeros(12), "lr")
    reference = contrastive_loss(torch.cat([z1, z2]), positives, negatives, temperature=0.2)
    assert nt_xent(z1, z2, 0.2)[0].item() == pytest.approx(reference.item(), rel=1e-5)


# --- augmentations ----------------------------------------------------------------------------


def test_simclr_views_shapes_range_and_reproducibility():
    images = torch.randint(0, 256, (6, 32, 32), dtype=torch.uint8)
    v1, v2 = simclr_views(images, torch.Generator().manual_seed(3))
    assert v1.shape == v2.shape == (6, 1, 32, 32) and v1.dtype == torch.float32
    assert v1.min() >= 0 and v1.max() <= 1 and v2.min() >= 0 and v2.max() <= 1
    assert not torch.equal(v1, v2)  # two independent draws
    again = simclr_views(images, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], v1) and torch.equal(again[1], v2)
    other = simclr_views(images, torch.Generator().manual_seed(4))
    assert not torch.equal(other[0], v1)
    # float input is the uint8 input converted; RGB images keep their channels and memory format
    floats = simclr_views(to_float(images), torch.Generator().manual_seed(3))
    assert torch.equal(floats[0], v1)
    rgb = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    out = simclr_views(rgb, torch.Generator().manual_seed(0), channels_last=True)[0]
    assert out.shape == (2, 3, 32, 32) and out.is_contiguous(memory_format=torch.channels_last)


def test_crops_cover_a_fifth_to_all_of_the_image_with_simclr_aspect_ratios():
    """Ramps in x (channel 0) and y (channel 1): a view's value range along each is its crop's
    width and height."""
    n, side = 256, 64
    ramp = (torch.arange(side) + 0.5) / side
    x = torch.stack([ramp.expand(side, side), ramp[:, None].expand(side, side)])
    x = x.expand(n, 2, side, side).contiguous()
    view = simclr_views(x, torch.Generator().manual_seed(0), ONLY_GEOMETRY)[0]
    span = 1 - 1 / side  # a full-width view spans the pixel centres
    w = (view[:, 0].amax((1, 2)) - view[:, 0].amin((1, 2))) / span
    h = (view[:, 1].amax((1, 2)) - view[:, 1].amin((1, 2))) / span
    area = w * h
    assert area.min() >= 0.2 - 0.02 and area.max() <= 1 + 1e-4
    assert (w / h).min() >= 3 / 4 - 0.03 and (w / h).max() <= 4 / 3 + 0.03
    assert area.mean().item() == pytest.approx(0.6, abs=0.05)  # U(0.2, 1)
    assert area.min() < 0.3 and area.max() > 0.9
    # about half the views are flipped: the x ramp then decreases
    flipped = (view[:, 0, :, 0] > view[:, 0, :, -1]).all(dim=1).float().mean().item()
    assert 0.35 < flipped < 0.65


def test_noise_sigma_is_a_share_of_the_image_mean():
    for mean in (0.2, 0.4):
        x = torch.full((64, 1, 64, 64), mean)
        spec = dataclasses.replace(IDENTITY, noise=1.0)
        view = simclr_views(x, torch.Generator().manual_seed(1), spec)[0]
        sigma = (view - mean).std(dim=(1, 2, 3)) / mean  # in units of the mean pixel value
        assert sigma.min() >= 0.125 * 0.95 and sigma.max() <= 0.25 * 1.05
        assert sigma.min() < 0.15 and sigma.max() > 0.22  # the whole U(0.125, 0.25) range
        assert view.min() >= 0 and view.max() <= 1
    # noise_p = 0: no noise
    x = torch.rand(4, 1, 32, 32)
    assert torch.equal(simclr_views(x, torch.Generator().manual_seed(0), IDENTITY)[0], x)


def test_a_21_tap_blur_works_on_small_images_and_half_the_views_are_blurred():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 1, 32, 32)
    x[:, :, 16, 16] = 1
    y = gaussian_blur(x, 1.0, (1.5, 1.5), g, kernel_size=21)
    assert torch.allclose(y.sum((1, 2, 3)), torch.ones(3), atol=1e-5)
    assert y[0, 0, 16, 16].item() == pytest.approx(1 / (2 * math.pi * 1.5**2), rel=1e-2)
    # the default radius (3σ) gives the same Gaussian up to its truncation
    assert torch.allclose(gaussian_blur(x, 1.0, (1.5, 1.5), g), y, atol=1e-3)
    # images smaller than the kernel: the kernel is clipped to the image
    tiny = torch.rand(2, 1, 8, 8)
    assert gaussian_blur(tiny, 1.0, (0.1, 2.0), g, kernel_size=21).shape == tiny.shape
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(tiny, 1.0, (0.1, 2.0), g, kernel_size=20)
    # SIMCLR blurs with p = 0.5 (and σ ≥ 0.1 changes a noisy image)
    spec = dataclasses.replace(IDENTITY, blur=SIMCLR.blur)
    images = torch.rand(64, 1, 32, 32)
    view = simclr_views(images, torch.Generator().manual_seed(2), spec)[0]
    blurred = (view != images).flatten(1).any(dim=1).float().mean().item()
    assert 0.3 < blurred < 0.7
    assert isinstance(SIMCLR, SimclrSpec) and SIMCLR.blur_kernel == 21


# --- histogram normalisation ------------------------------------------------------------------


def _levels(n: int, seed: int = 0) -> torch.Tensor:
    """Skewed images on 64 grey levels (multiples of 4/255)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) ** 3
    return torch.round(x * 63) * 4 / 255


def test_histogram_normalisation_is_zero_mean_unit_std_and_ignores_the_grey_scale():
    x = _levels(8)
    out = HistogramEqualize()(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.mean(dim=(1, 2, 3)).abs().max() < 1e-5  # every image, exactly
    # the mid-ranks' std (ties: a level's pixels share one value): √(1 − Σ_k p_k³) + O(1/N²)
    for image, got in zip(x, out, strict=True):
        p = image.flatten().unique(return_counts=True)[1].double() / image.numel()
        expected = math.sqrt(1 - (p**3).sum().item())
        assert got.std(unbiased=False).item() == pytest.approx(expected, abs=1e-4)
        assert 0.99 < expected < 1  # 20 % of the pixels on the darkest level: still ~1
    assert torch.equal(HistogramEqualize()(torch.full((2, 1, 8, 8), 0.3)), torch.zeros(2, 1, 8, 8))
    # an increasing map of the grey levels (gamma, gain) changes nothing
    for changed in (x**0.7, x * 0.5, 0.2 + 0.8 * x):  # distinct 8-bit levels stay distinct
        torch.testing.assert_close(HistogramEqualize()(changed), out, atol=1e-6, rtol=0)
    # whereas the dataset normalisation does see it
    model = Classifier("resnet18", 2, 1)
    assert not torch.allclose(model.normalize(x**0.7), model.normalize(x))
    # memory format kept
    last = x.contiguous(memory_format=torch.channels_last)
    assert HistogramEqualize()(last).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_histogram_normalisation_on_cuda_equals_the_cpu():
    x = _levels(4)
    torch.testing.assert_close(HistogramEqualize()(x.cuda()).cpu(), HistogramEqualize()(x))


def test_a_histogram_model_saves_loads_and_hands_its_normalisation_on(tmp_path):
    torch.manual_seed(0)
    model = Classifier("resnet18", 3, 1, input_norm="histogram").eval()
    meta = {
        "method": "simclr", "backbone": "resnet18", "classes": ["a", "b", "c"],
        "in_channels": 1, "image_size": 32, "task": "encoder",
    }  # fmt: skip
    save_model(tmp_path / "model.pt", model, meta)
    loaded, saved = load_model(tmp_path / "model.pt")
    assert saved["input_norm"] == "histogram" and isinstance(loaded.normalize, HistogramEqualize)
    x = _levels(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded(x**0.7), model(x))  # the grey scale does not matter
    tuned = build_classifier("resnet18", 5, 1, init="checkpoint", weights=tmp_path / "model.pt")
    assert tuned.input_norm == "histogram" and isinstance(tuned.normalize, HistogramEqualize)


# --- the method -------------------------------------------------------------------------------


def test_simclr_is_an_encoder_method_with_its_own_section():
    assert METHODS["simclr"] is Simclr and Simclr.product == "encoder" and Simclr.monitor is None
    defaults = load_params(NO_PARAMS).method_params("simclr")
    assert defaults == SimclrParams()
    assert (defaults.temperature, defaults.projection_dim, defaults.input_norm) == (
        0.5, 128, "histogram",
    )  # fmt: skip
    assert (defaults.crop_min, defaults.blur_p, defaults.noise_p) == (0.2, 0.5, 1.0)
    params = load_params(NO_PARAMS, ["simclr.temperature=0.1", "simclr.input_norm=image"])
    assert params.method_params("simclr").temperature == 0.1
    assert params.dump()["simclr"]["input_norm"] == "image"


def test_pretrain_writes_an_encoder_that_train_and_the_detector_can_load(
    tiny_split, tmp_path, capsys
):
    from cli_helpers import cli

    out = tmp_path / "simclr"
    args = ["pretrain", str(tiny_split), "--out", str(out), "--no-track", "--params", NO_PARAMS]
    overrides = [
        "pretrain.method=simclr", "pretrain.device=cpu", "pretrain.max_steps=2",
        "pretrain.batch_exams=2", "pretrain.max_batch_images=12",
        f"pretrain.cache_dir={tmp_path / 'cache'}", "simclr.val_images=8",
        "simclr.projection_dim=32",
    ]  # fmt: skip
    result = cli(capsys, *args, *[a for s in overrides for a in ("-S", s)])
    assert result.code == 0, result.err[-2000:]
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["method"] == "simclr" and summary["steps"] == 2
    assert summary["hyperparameters"]["projection_dim"] == 32
    history = pd.read_csv(out / "history.csv")
    for column in ("train_loss", "contrastive_acc", "positive_cosine", "val_contrastive_acc"):
        assert np.isfinite(history[column]).all(), column
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_images"] == 8 and 0 <= metrics["contrastive_acc"] <= 1

    encoder, meta = load_model(out / "encoder.pt")
    assert meta["method"] == "simclr" and meta["product"] == "encoder"
    assert meta["input_norm"] == "histogram" and isinstance(encoder.normalize, HistogramEqualize)
    assert encoder.num_classes == 512  # the projection head's hidden layer W⁽¹⁾
    state = torch.load(out / "encoder.pt", weights_only=False)["state_dict"]
    assert not any(k.startswith("extra_heads.") for k in state)  # g's last layer is dropped
    assert {k for k in state if k.startswith("backbone.")}  # what a detector takes
    model = build_classifier("resnet18", 3, 1, init="checkpoint", weights=out / "encoder.pt")
    assert isinstance(model.normalize, HistogramEqualize)
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_labels_are_never_read(tiny_split, tmp_path):
    """Without label columns, or as a detection dataset without boxes, the same rows train."""
    ds = Dataset.open(tiny_split)
    cache = open_cache(ds, tmp_path / "cache", progress=False)
    cfg = _cfg(tmp_path, rows="unlabeled+train", max_steps=1)
    labeled = Simclr(cfg, ds, cache)
    labels = [c for c in ds.manifest.columns if c.startswith("label_")]
    stripped = dataclasses.replace(ds, manifest=ds.manifest.drop(columns=labels))
    info = ds.info.model_copy(update={"task": "detection"})
    detection = dataclasses.replace(stripped, info=info, boxes=None)
    for other in (Simclr(cfg, stripped, cache), Simclr(cfg, detection, cache)):
        np.testing.assert_array_equal(other.train_rows, labeled.train_rows)
        np.testing.assert_array_equal(other.val_sample, labeled.val_sample)
    method = Simclr(cfg, detection, cache)
    assert method.task == "detection"
    result = Trainer(method, cfg, None, progress=False).fit()
    assert result.steps == 1 and np.isfinite(result.history[0]["train_loss"])


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, trainer, output) -> None:
        self.losses.append(output.loss.item())


def test_the_loss_goes_down_on_one_exam(tiny_split, tmp_path):
    """40 steps on the 17 images of one exam, batches of 16: seeds 0-4 drop 0.22-0.55 (seed 0:
    0.55 on 1 or 2 threads), the margin is about half the smallest drop."""
    ds = Dataset.open(tiny_split)
    m = ds.manifest
    unlabeled = m["split"] == "unlabeled"
    exam = sorted(m.loc[unlabeled, "exam_id"].unique())[0]
    ds.manifest = m.assign(split=m["split"].where(~unlabeled | (m["exam_id"] == exam), "test"))
    cfg = _cfg(tmp_path, batch_exams=1, max_steps=40, checkpoint_every=1000, seed=0)
    cache = open_cache(ds, cfg.cache_dir, progress=False)
    method = Simclr(cfg, ds, cache, SimclrParams(val_images=0))
    record = _Losses()
    Trainer(method, cfg, None, progress=False, callbacks=[record]).fit()
    losses = np.array(record.losses)
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean() - 0.12, np.round(losses, 2)


def test_resume_is_exact_within_an_epoch(tiny_split, tmp_path):
    """The epoch's contrastive sums live in the checkpoint: a resumed run's history is the same."""
    cfg = _cfg(tmp_path, max_epochs=1, checkpoint_every=2, max_batch_images=8)
    params = SimclrParams(val_images=8, projection_dim=16)

    def trainer(ckpt, callbacks=()) -> Trainer:
        ds = Dataset.open(tiny_split)
        method = Simclr(cfg, ds, open_cache(ds, cfg.cache_dir, progress=False), params)
        return Trainer(method, cfg, ckpt, progress=False, callbacks=callbacks)

    full = trainer(tmp_path / "full")
    expected = full.fit()
    assert expected.steps >= 4
    killed = trainer(tmp_path / "killed", callbacks=[KillAt(3)])
    with pytest.raises(SimulatedKill):
        killed.fit()
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["loop"]["step"] == 2
    resumed = trainer(tmp_path / "killed")
    result = resumed.fit(resume=True)
    assert result.resumed_from_step == 2
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key

    def plain(history):
        return [
            {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history
        ]

    assert plain(result.history) == plain(expected.history)
    assert "contrastive_acc" in result.history[0]
