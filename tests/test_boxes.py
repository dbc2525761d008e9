"""Paper 003's data pieces: fusing the readers' boxes (§II.A) and LVIS repeat-factor sampling
(§III.A)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medssl.data.boxes import box_iou, fuse_boxes, fuse_readers
from medssl.data.samplers import RepeatFactorSampler, repeat_factors


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    # overlap 5×10 = 50, union 100 + 100 − 50 = 150
    assert box_iou(a, b)[0] == pytest.approx([50 / 150, 0.0, 1.0])


def test_fusion_averages_overlapping_boxes_of_one_class():
    """Three readers draw one nodule (IoU ≈ 0.8 with the running mean box: fused into their
    mean), one reader a second nodule far away, and a cardiomegaly box where the nodule is."""
    boxes = pd.DataFrame(
        {
            "image": ["a"] * 5 + ["b"],
            "reader_id": ["R1", "R2", "R3", "R1", "R2", "R1"],
            "label": ["nodule", "nodule", "nodule", "nodule", "cardiomegaly", "nodule"],
            "x1": [10.0, 12.0, 11.0, 60.0, 10.0, 10.0],
            "y1": [10.0, 11.0, 9.0, 60.0, 10.0, 10.0],
            "x2": [30.0, 31.0, 29.0, 70.0, 30.0, 30.0],
            "y2": [30.0, 30.0, 32.0, 70.0, 30.0, 30.0],
        }
    )
    fused = fuse_readers(boxes)
    assert len(fused) == 4  # a: one fused nodule, one lone nodule, one cardiomegaly; b: one
    first = fused.iloc[0]
    assert (first["image"], first["label"], first["readers"]) == ("a", "nodule", 3)
    assert first[["x1", "y1", "x2", "y2"]].tolist() == pytest.approx([11.0, 10.0, 30.0, 92 / 3])
    lone = fused[(fused["image"] == "a") & (fused["readers"] == 1) & (fused["label"] == "nodule")]
    assert lone[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[60.0, 60.0, 70.0, 70.0]]
    # another class is never fused with the nodules, even where the boxes coincide
    assert set(fused[fused["image"] == "a"]["label"]) == {"nodule", "cardiomegaly"}


def test_fusion_threshold_is_strict():
    """Two boxes with IoU exactly 0.2 stay apart (> 0.2 fuses): overlap 20, union 100."""
    a, b = [0.0, 0.0, 6.0, 10.0], [3.0, 0.0, 9.0, 10.0]  # overlap 30, union 90
    assert box_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(1 / 3)
    c, d = [0.0, 0.0, 10.0, 6.0], [0.0, 4.0, 10.0, 10.0]  # overlap 20, union 100
    assert box_iou(np.array([c]), np.array([d]))[0, 0] == pytest.approx(0.2)
    assert [len(m) for m in fuse_boxes(np.array([c, d]))] == [1, 1]
    assert [len(m) for m in fuse_boxes(np.array([a, b]))] == [2]


def test_repeat_factors_by_hand():
    """10 images: 'cardiomegaly' in 8 (f 0.8), 'nodule' in 1 (f 0.1), 'mass' in 2 (f 0.2);
    r = max(1, √(0.4 / f)): 1, 2, √2; an image takes the max over its classes."""
    images = [["cardiomegaly"]] * 7 + [["cardiomegaly", "nodule"], ["mass"], ["mass"]]
    per_image, per_class = repeat_factors(images, 0.4)
    assert per_class == pytest.approx({"cardiomegaly": 1.0, "mass": math.sqrt(2), "nodule": 2.0})
    assert per_image.tolist() == pytest.approx([1.0] * 7 + [2.0, math.sqrt(2), math.sqrt(2)])
    assert repeat_factors([[], ["a"]])[0].tolist() == [1.0, 1.0]  # f(a) 0.5 ≥ t: no repeat


def test_repeat_factor_sampler_rounds_stochastically_and_resumes():
    rows = np.arange(4)
    factors = np.array([1.0, 2.0, 1.5, 1.25])
    sampler = RepeatFactorSampler(rows, factors, batch_size=3, seed=7)
    counts = np.zeros(4)
    epochs = 400
    for epoch in range(epochs):
        batch_rows = np.concatenate(sampler.batches(epoch))
        seen = np.bincount(batch_rows, minlength=4)
        assert seen[0] == 1 and seen[1] == 2 and seen[2] in (1, 2) and seen[3] in (1, 2)
        counts += seen
    # E[times] = r; 400 epochs put the means within ±0.1 of it (binomial sd ≤ 0.025)
    assert counts / epochs == pytest.approx(factors, abs=0.1)
    # the batches of an epoch depend only on (seed, epoch): a resumed sampler sees the same ones
    again = RepeatFactorSampler(rows, factors, batch_size=3, seed=7)
    again.load_state_dict({"epoch": 5, "position": 1})
    assert np.array_equal(again.next_batch(), sampler.batches(5)[1])
    with pytest.raises(ValueError, match="repeat factor"):
        RepeatFactorSampler(rows, [1.0, 0.5, 1.0, 1.0], batch_size=2)
