"""RandAugment-style strong view (FixMatch, Sohn et al. 2020; paper 000 §2.3.1): `rand_augment`."""

from __future__ import annotations

import pytest
import torch

from medssl.data.augment import _OPS, RAND_AUGMENT, AugmentSpec, RandAugmentSpec, rand_augment


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(c: int = 1, n: int = 16, size: int = 32) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=_gen(123))


def _blob(n: int = 16, size: int = 32) -> torch.Tensor:
    """A bright centred Gaussian blob on black, well inside the frame."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    blob = torch.exp(-(r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) / (2 * (size / 10) ** 2))
    return blob.expand(n, 1, size, size).contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
def test_shape_dtype_range_and_memory_format(channels_last: bool) -> None:
    x = _images(c=3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = rand_augment(x, RAND_AUGMENT, _gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert not torch.allclose(out, x)


def test_deterministic_given_generator_state() -> None:
    x = _images()
    a, b = rand_augment(x, RAND_AUGMENT, _gen(7)), rand_augment(x, RAND_AUGMENT, _gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, rand_augment(x, RAND_AUGMENT, _gen(8)))


@pytest.mark.parametrize("op", _OPS)
def test_every_op_is_a_no_op_at_magnitude_zero(op: str) -> None:
    x = _images(c=3)
    spec = RandAugmentSpec(ops=2, magnitude=0.0, cutout=0.0, base=AugmentSpec(), only=(op,))
    torch.testing.assert_close(rand_augment(x, spec, _gen()), x, atol=1e-6, rtol=0)


def test_every_op_changes_images_at_full_magnitude() -> None:
    x = _images(c=1) * 0.5 + 0.2  # within [0.2, 0.7], so autocontrast has work to do
    for op in set(_OPS) - {"identity"}:
        spec = RandAugmentSpec(ops=1, magnitude=1.0, cutout=0.0, base=AugmentSpec(), only=(op,))
        assert (rand_augment(x, spec, _gen()) - x).abs().amax() > 0.05, op


def test_unknown_op_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        RandAugmentSpec(only=("equalize",))


def test_posterize_keeps_four_to_eight_bits() -> None:
    x = _images(n=64)
    spec = RandAugmentSpec(ops=1, cutout=0.0, base=AugmentSpec(), only=("posterize",))
    out = rand_augment(x, spec, _gen())
    # m ~ U(0, 1) keeps round(8 - 4 m) bits: 8 bits (m < 1/8) leaves the image as it was, fewer
    # leave 8-bit levels on a grid of 2 ** (8 - bits)
    steps = []
    for y, orig in zip(out, x, strict=True):
        if torch.equal(y, orig):
            continue
        img = y * 255
        torch.testing.assert_close(img, img.round(), atol=1e-3, rtol=0)
        u = img.round().long()
        steps.append(max(2**k for k in range(6) if bool((u % 2**k == 0).all())))
        assert 2 <= steps[-1] <= 16 and u.unique().numel() <= 256 // steps[-1]
    assert 16 in steps and len(steps) > 40  # some images keep 4 bits: at most 2 ** 4 levels


def test_rotate_changes_blob_but_keeps_its_mass() -> None:
    x = _blob()
    spec = RandAugmentSpec(ops=1, magnitude=1.0, cutout=0.0, base=AugmentSpec(), only=("rotate",))
    out = rand_augment(x, spec, _gen())
    assert (out - x).abs().amax() > 0.01  # the grid is square, so a rotation moves pixels...
    torch.testing.assert_close(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.02, rtol=0.05)
    # ...but a centred isotropic blob stays centred
    r = torch.arange(32, dtype=torch.float32) - 15.5
    cy = (out.sum(3).squeeze(1) * r).sum(1) / out.sum((1, 2, 3))
    assert cy.abs().max() < 0.5


def test_translate_moves_the_blob() -> None:
    spec = RandAugmentSpec(
        ops=1, magnitude=1.0, cutout=0.0, base=AugmentSpec(), only=("translate_x",)
    )
    x = _blob()
    out = rand_augment(x, spec, _gen())
    r = torch.arange(32, dtype=torch.float32) - 15.5
    cx = (out.sum(2).squeeze(1) * r).sum(1) / out.sum((1, 2, 3))
    assert cx.abs().max() > 2  # up to 0.3 · 32 ≈ 9.6 pixels
    assert cx.abs().max() < 0.3 * 32 + 0.5


def test_autocontrast_stretches_each_image_to_full_range() -> None:
    x = _images() * 0.5 + 0.2  # each image within [0.2, 0.7]
    spec = RandAugmentSpec(only=("autocontrast",), ops=1, cutout=0.0)  # default base crop + flip
    out = rand_augment(x, spec, _gen())
    torch.testing.assert_close(out.amin((1, 2, 3)), torch.zeros(16), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.amax((1, 2, 3)), torch.ones(16), atol=1e-6, rtol=0)


def test_solarize_inverts_bright_pixels() -> None:
    x = torch.full((16, 1, 8, 8), 0.95)
    spec = RandAugmentSpec(ops=1, cutout=0.0, base=AugmentSpec(), only=("solarize",))
    out = rand_augment(x, spec, _gen())
    # threshold 1 - 0.9 m with m ~ U(0, 1): 0.95 is inverted to 0.05 when m > 1/18
    inverted = (out - 0.05).abs() < 1e-6
    assert (inverted | ((out - 0.95).abs() < 1e-6)).all()
    assert inverted.float().mean() > 0.7


def test_cutout_zeroes_about_a_quarter() -> None:
    x = torch.ones(64, 1, 32, 32)
    spec = RandAugmentSpec(ops=1, cutout=0.5, base=AugmentSpec(), only=("identity",))
    out = rand_augment(x, spec, _gen())
    assert set(out.unique().tolist()) == {0.0, 1.0}
    zeroed = (out == 0).float().mean().item()
    # a square of side 0.5 centred uniformly: 25 % when fully inside, less when clipped at a border
    assert 0.12 < zeroed <= 0.26
