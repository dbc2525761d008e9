"""Image cache, exam batch sampler and device augmentations."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.data import cache as cache_module
from medssl.data.augment import (
    NONE,
    STRONG,
    WEAK,
    AugmentSpec,
    augment,
    to_float,
    views,
    warp_points,
)
from medssl.data.cache import decode_image, open_cache
from medssl.data.contract import Dataset, write_dataset
from medssl.data.samplers import ExamBatchSampler

# --- exam batch sampler ----------------------------------------------------------------------


def _exams(n_exams: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 10, n_exams)
    exam_ids = np.repeat([f"E{i:02d}" for i in range(n_exams)], sizes)
    rows = np.arange(len(exam_ids)) + 100  # manifest positions, not 0..n-1
    return rows, exam_ids


def test_exam_batches_hold_whole_exams_and_cover_every_row_once_per_epoch():
    rows, exam_ids = _exams()
    by_row = dict(zip(rows, exam_ids, strict=True))
    sampler = ExamBatchSampler(rows, exam_ids, batch_exams=3, max_batch_images=1000, seed=0)
    assert len(sampler) == 4
    for epoch in range(2):
        seen = []
        for batch in sampler.batches(epoch):
            exams = {by_row[r] for r in batch}
            assert len(exams) <= 3
            assert sorted(batch) == sorted(rows[np.isin(exam_ids, list(exams))])
            seen += list(batch)
        assert sorted(seen) == list(rows)


def test_exam_batches_respect_the_image_cap():
    rows, exam_ids = _exams()
    by_row = dict(zip(rows, exam_ids, strict=True))
    sampler = ExamBatchSampler(rows, exam_ids, batch_exams=3, max_batch_images=5, seed=0)
    for batch in sampler.batches(0):
        assert len(batch) <= 5 and len(set(batch)) == len(batch)
        assert len({by_row[r] for r in batch}) <= 3


def test_exam_batches_depend_on_seed_and_epoch_only():
    rows, exam_ids = _exams()

    def batches(seed, epoch, order=slice(None)):
        s = ExamBatchSampler(rows[order], exam_ids[order], 3, 1000, seed=seed)
        return [sorted(b) for b in s.batches(epoch)]

    assert batches(0, 0) == batches(0, 0, order=slice(None, None, -1))  # input order ignored
    assert batches(0, 0) != batches(1, 0)
    assert batches(0, 0) != batches(0, 1)


def test_exam_sampler_resumes_from_its_state():
    rows, exam_ids = _exams()
    a = ExamBatchSampler(rows, exam_ids, 2, 8, seed=3)
    expected = [a.next_batch() for _ in range(15)]  # crosses epoch boundaries
    b = ExamBatchSampler(rows, exam_ids, 2, 8, seed=3)
    head = [b.next_batch() for _ in range(7)]
    c = ExamBatchSampler(rows, exam_ids, 2, 8, seed=3)
    c.load_state_dict(b.state_dict())
    got = head + [c.next_batch() for _ in range(8)]
    assert all(np.array_equal(x, y) for x, y in zip(got, expected, strict=True))


# --- image cache -----------------------------------------------------------------------------


@pytest.fixture
def small_dataset(tiny_archive, tmp_path):
    """A copy of the tiny archive's tables (first 40 rows) whose images stay where they are."""
    src = Dataset.open(tiny_archive)
    info = src.info.model_copy(update={"image_root": str(src.image_dir.resolve())})
    root = tmp_path / "ds"
    write_dataset(root, info, src.manifest.iloc[:40])
    return root


def test_cache_holds_the_decoded_pixels_in_manifest_order(small_dataset, tmp_path):
    ds = Dataset.open(small_dataset)
    cache = open_cache(ds, tmp_path / "cache", progress=False)
    assert cache.built and cache.images.shape == (40, 32, 32) and cache.images.dtype == np.uint8
    assert cache.channels == 1 and cache.image_size == 32
    for i in (0, 17, 39):
        pixels = np.asarray(Image.open(ds.image_path(ds.manifest["image"].iloc[i])).convert("L"))
        assert np.array_equal(cache.images[i], pixels)
    assert np.array_equal(cache.take([39, 0]), cache.images[[39, 0]])


def test_cache_is_reused_and_invalidated_when_the_manifest_changes(
    small_dataset, tmp_path, monkeypatch
):
    first = open_cache(Dataset.open(small_dataset), tmp_path / "cache", progress=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "decode_image", no_decoding)
    again = open_cache(Dataset.open(small_dataset), tmp_path / "cache", progress=False)
    assert not again.built and again.path == first.path
    monkeypatch.undo()

    ds = Dataset.open(small_dataset)
    write_dataset(small_dataset, ds.info, ds.manifest.iloc[:30])
    changed = open_cache(Dataset.open(small_dataset), tmp_path / "cache", progress=False)
    assert changed.built and changed.path != first.path and len(changed) == 30
    # the key the train stage fingerprints a run with follows the dataset, as the file name does
    assert again.key == first.key != changed.key and changed.key in changed.path.name
    assert np.array_equal(changed.images, first.images[:30])


def test_cache_notices_an_image_edited_in_place(tiny_archive, tmp_path):
    """Same manifest, same dataset.yaml, one image file rewritten: a new cache, new pixels."""
    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root)
    first = open_cache(Dataset.open(root), tmp_path / "cache", progress=False)
    image = root / Dataset.open(root).manifest["image"].iloc[3]
    inverted = 255 - np.asarray(Image.open(image).convert("L"))
    Image.fromarray(inverted).save(image)
    again = open_cache(Dataset.open(root), tmp_path / "cache", progress=False)
    assert again.built and again.key != first.key
    assert np.array_equal(again.images[3], inverted)
    assert np.array_equal(again.images[4], first.images[4])


def test_cache_resizes_to_the_nominal_size(small_dataset, tmp_path):
    ds = Dataset.open(small_dataset)
    write_dataset(small_dataset, ds.info.model_copy(update={"image_size": 16}), ds.manifest)
    cache = open_cache(Dataset.open(small_dataset), tmp_path / "cache", progress=False)
    assert cache.images.shape == (40, 16, 16)


def test_an_interrupted_cache_build_leaves_nothing_behind(small_dataset, tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return np.zeros((32, 32), np.uint8)

    monkeypatch.setattr(cache_module, "decode_image", failing)
    with pytest.raises(KeyboardInterrupt):
        open_cache(Dataset.open(small_dataset), tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_parallel_decoding_writes_the_same_cache(small_dataset, tmp_path):
    ds = Dataset.open(small_dataset)
    serial = open_cache(ds, tmp_path / "a", progress=False)
    parallel = open_cache(ds, tmp_path / "b", workers=2, chunk_size=16, parallel_from=0)
    assert parallel.built and np.array_equal(serial.images, parallel.images)


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    wide = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png", 16, 1, bit_depth=16)
    assert out.dtype == np.uint8 and out.shape == (16, 16)
    assert np.array_equal(out, (wide / 257).round().astype(np.uint8))


# --- augmentations ---------------------------------------------------------------------------


def _images(n=6, size=16):
    return torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=_gen(9))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_to_float_and_no_augmentation_keep_the_pixels():
    u8 = _images()
    x = to_float(u8, channels_last=True)
    assert x.shape == (6, 1, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], u8.float() / 255)
    assert torch.equal(augment(x, NONE, _gen(0)), x)
    rgb = to_float(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    assert rgb.shape == (2, 3, 8, 8)


@pytest.mark.parametrize("spec", [WEAK, STRONG])
def test_augmentations_are_seeded_and_stay_in_range(spec):
    x = to_float(_images())
    a, b = augment(x, spec, _gen(1)), augment(x, spec, _gen(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(augment(x, spec, _gen(2)), a)


def test_views_draw_independent_augmentations():
    weak, strong = views(_images(), [WEAK, STRONG], _gen(0))
    assert weak.shape == strong.shape == (6, 1, 16, 16)
    assert not torch.equal(weak, strong)


def test_flip_and_warp_points_agree():
    x = to_float(_images())
    flip = AugmentSpec(hflip=1.0)
    out, theta = augment(x, flip, _gen(0), return_theta=True)
    assert torch.allclose(out, torch.flip(x, dims=[-1]), atol=1e-6)
    points = torch.tensor([[[-0.5, 0.25], [0.75, -1.0]]]).expand(6, 2, 2)
    assert torch.allclose(warp_points(points, theta), points * torch.tensor([-1.0, 1.0]))
