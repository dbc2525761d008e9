"""Paper 003 §IV's detection metrics: the COCO summary of Table I against pycocotools' COCOeval,
and Table II's inter-observer and model IoUs by hand."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pandas as pd
import pytest

from medssl.metrics.detection import coco_metrics, model_iou, reader_agreement

COLUMNS = ["image", "label", "x1", "y1", "x2", "y2"]
# mass: truth, never predicted; fibrosis: predicted, never true; calcification: neither
CLASSES = ["aortic", "cardiomegaly", "nodule", "effusion", "mass", "fibrosis", "calcification"]
IMAGES = [f"img{i:02d}" for i in range(20)]


def _fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    """20 images: large (aortic, cardiomegaly), medium (effusion) and small (nodule, one exactly
    32×32 — small by COCO's inclusive bound) truth boxes with fractional (fused) coordinates;
    predictions jittered around them with misses, duplicates, same-image false positives, a
    wrong-class prediction, a predicted-only class, an image with only false positives (img18)
    and an image with neither (img19)."""
    truth = [
        ("img00", "aortic", 410.5, 300.25, 520.0, 430.0),
        ("img00", "cardiomegaly", 300.0, 550.0, 760.3333, 800.0),
        ("img00", "nodule", 200.0, 200.0, 220.0, 225.0),
        ("img01", "aortic", 400.0, 310.0, 505.0, 420.0),
        ("img01", "nodule", 600.0, 180.0, 632.0, 212.0),  # 32×32: area 1024, small
        ("img01", "nodule", 640.0, 400.0, 655.5, 414.0),
        ("img02", "cardiomegaly", 280.0, 560.0, 740.0, 790.0),
        ("img02", "effusion", 100.0, 700.0, 160.0, 760.0),
        ("img03", "effusion", 800.0, 690.0, 870.0, 770.0),
        ("img03", "effusion", 90.0, 710.0, 150.0, 750.0),
        ("img04", "mass", 500.0, 500.0, 560.0, 540.0),
        ("img04", "aortic", 420.0, 290.0, 530.0, 415.0),
        ("img05", "nodule", 300.0, 300.0, 318.0, 316.0),
        ("img05", "nodule", 700.0, 320.0, 712.0, 335.0),
        ("img05", "cardiomegaly", 310.0, 540.0, 770.0, 805.0),
        ("img06", "aortic", 415.0, 305.0, 515.0, 425.0),
        ("img07", "nodule", 150.0, 620.0, 175.0, 640.0),
        ("img07", "mass", 200.0, 300.0, 280.0, 370.0),
        ("img08", "cardiomegaly", 295.0, 555.0, 750.0, 795.0),
        ("img08", "effusion", 820.0, 700.0, 880.0, 780.0),
        ("img09", "aortic", 405.0, 295.0, 512.0, 428.0),
        ("img09", "nodule", 520.0, 240.0, 545.0, 266.0),
        ("img10", "cardiomegaly", 290.0, 548.0, 745.0, 810.0),
        ("img11", "effusion", 110.0, 690.0, 175.0, 765.0),
        ("img12", "nodule", 400.0, 150.0, 428.0, 176.0),
        ("img13", "aortic", 412.0, 301.0, 518.0, 433.0),
        ("img13", "cardiomegaly", 305.0, 545.0, 765.0, 802.0),
        ("img14", "nodule", 330.0, 420.0, 348.5, 439.5),
        ("img15", "effusion", 805.0, 680.0, 868.0, 775.0),
        ("img16", "aortic", 418.0, 298.0, 522.0, 427.0),
        ("img17", "cardiomegaly", 302.0, 552.0, 755.0, 798.0),
    ]
    truth = pd.DataFrame(truth, columns=COLUMNS)

    # per truth row: jitters (pixels) of its predictions, none for a miss; two for a duplicate
    rng = np.random.default_rng(3)
    jitter = {
        0: [2], 1: [25, 60], 2: [3], 3: [8], 4: [2], 5: [6], 6: [40], 7: [5, 9],
        8: [12], 10: [], 11: [4], 12: [1], 13: [], 14: [30], 15: [15], 16: [4],
        17: [], 18: [10], 19: [20], 20: [3], 21: [7], 22: [80], 23: [6], 24: [2],
        25: [5], 26: [18], 27: [5], 28: [9], 29: [35], 30: [12],
    }  # fmt: skip
    rows = []
    for i, jit in jitter.items():
        image, label, *box = truth.iloc[i]
        for j in jit:
            rows.append((image, label, *(np.asarray(box) + rng.uniform(-j, j, 4)).tolist()))
    # false positives: of a true class elsewhere on the image, of a wrong class on a truth box,
    # of the never-true class, and on the image without truth
    rows += [
        ("img00", "nodule", 700.0, 100.0, 715.0, 118.0),
        ("img02", "aortic", 285.0, 565.0, 735.0, 785.0),
        ("img03", "fibrosis", 400.0, 400.0, 480.0, 470.0),
        ("img06", "fibrosis", 100.0, 100.0, 130.0, 125.0),
        ("img09", "nodule", 90.0, 90.0, 110.0, 112.0),
        ("img11", "cardiomegaly", 300.0, 560.0, 740.0, 790.0),
        ("img14", "nodule", 610.0, 300.0, 640.0, 331.0),
        ("img18", "aortic", 410.0, 300.0, 515.0, 425.0),
        ("img18", "nodule", 200.0, 220.0, 224.0, 241.0),
        ("img18", "effusion", 820.0, 700.0, 880.0, 770.0),
    ]
    predictions = pd.DataFrame(rows, columns=COLUMNS)
    predictions["score"] = rng.permutation(len(predictions)) / len(predictions) + 0.01
    return truth, predictions


def _pycocotools(
    truth: pd.DataFrame, predictions: pd.DataFrame, classes: list[str], images: list[str]
) -> tuple[np.ndarray, dict[str, float]]:
    """COCOeval's stats and per-class AP@[.5:.95] (over the classes with ground truth), from the
    COCO json dicts (bbox xywh, area w·h given explicitly, iscrowd 0)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_id = {m: i + 1 for i, m in enumerate(images)}
    class_id = {c: i + 1 for i, c in enumerate(classes)}

    def annotation(k: int, row) -> dict:
        w, h = row.x2 - row.x1, row.y2 - row.y1
        return {
            "id": k + 1,
            "image_id": image_id[row.image],
            "category_id": class_id[row.label],
            "bbox": [row.x1, row.y1, w, h],
            "area": w * h,
            "iscrowd": 0,
        }

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in image_id.values()],
        "categories": [{"id": i, "name": c} for c, i in class_id.items()],
        "annotations": [annotation(k, r) for k, r in enumerate(truth.itertuples())],
    }
    results = [
        {**annotation(k, r), "score": r.score} for k, r in enumerate(predictions.itertuples())
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, cat in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        if (p > -1).any():
            per_class[classes[cat - 1]] = float(p[p > -1].mean())
    return np.asarray(evaluator.stats), per_class


def test_coco_metrics_agree_with_pycocotools():
    truth, predictions = _fixture()
    ours = coco_metrics(truth, predictions, CLASSES, IMAGES)
    stats, per_class = _pycocotools(truth, predictions, CLASSES, IMAGES)
    expected = {
        "map": stats[0],
        "map50": stats[1],
        "map_small": stats[3],
        "ar100": stats[8],
        "ar_small": stats[9],
    }
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    # the fixture is not degenerate
    assert 0.2 < ours["map"] < ours["map50"] < 1 and 0 < ours["map_small"] < ours["map"]
    assert set(ours["map_per_class"]) == {"aortic", "cardiomegaly", "nodule", "effusion", "mass"}
    assert ours["map_per_class"] == pytest.approx(per_class, abs=1e-6)
    assert ours["map_per_class"]["mass"] == 0.0  # truth, no predictions
    # the class mean is the mean over the classes with truth
    assert ours["map"] == pytest.approx(np.mean(list(ours["map_per_class"].values())), abs=1e-6)


def test_coco_metrics_tied_scores_agree_with_pycocotools():
    """Tied scores (all 0.5): the order of the ties decides AP; both evaluators keep the input
    order."""
    truth, predictions = _fixture()
    predictions["score"] = 0.5
    ours = coco_metrics(truth, predictions, CLASSES, IMAGES)
    stats, per_class = _pycocotools(truth, predictions, CLASSES, IMAGES)
    assert [ours[k] for k in ("map", "map50", "map_small", "ar100", "ar_small")] == pytest.approx(
        stats[[0, 1, 3, 8, 9]], abs=1e-6
    )
    assert ours["map_per_class"] == pytest.approx(per_class, abs=1e-6)


def test_coco_metrics_thresholds_are_pycocotools_float64_ones():
    """IoUs exactly on a threshold (0.55, 0.65, 0.9 from pixel boxes) and recalls exactly on one
    (k/10): torchmetrics' default float32 thresholds put them on the other side (mAP 0.437 and
    AR 0.84 here instead of COCOeval's 0.452 and 0.85); coco_metrics passes COCOeval's own."""
    images = [f"i{k}" for k in range(10)]
    truth = pd.DataFrame([(m, "a", 0.0, 0.0, 100.0, 100.0) for m in images], columns=COLUMNS)
    rows = []
    for k, m in enumerate(images):
        height = {1: 55.0, 2: 65.0, 3: 90.0}.get(k, 100.0)  # IoU 0.55, 0.65, 0.9, else 1
        rows.append((m, "a", 0.0, 0.0, 100.0, height, 1 - k / 20))
        rows.append((m, "a", 300.0, 300.0, 400.0, 400.0, 0.99 - k / 20))  # a false positive
    predictions = pd.DataFrame(rows, columns=[*COLUMNS, "score"])
    ours = coco_metrics(truth, predictions, ["a"], images)
    stats, _ = _pycocotools(truth, predictions, ["a"], images)
    assert [ours[k] for k in ("map", "map50", "ar100")] == pytest.approx(stats[[0, 1, 8]], abs=1e-6)
    # recall at IoU .50 .55 … .95: 10 10 9 9 8 8 8 8 8 7 of the 10 boxes
    assert ours["ar100"] == pytest.approx(0.85)


def test_images_without_rows_count():
    """An image listed with no boxes at all changes nothing; one with only false positives lowers
    precision; one in the tables but not listed is an error."""
    truth, predictions = _fixture()
    base = coco_metrics(truth, predictions, CLASSES, IMAGES)
    extra = coco_metrics(truth, predictions, CLASSES, [*IMAGES, "img20"])
    assert extra == base
    without_fp_image = predictions[predictions["image"] != "img18"]
    better = coco_metrics(truth, without_fp_image, CLASSES, IMAGES)
    assert better["map"] > base["map"]
    with pytest.raises(ValueError, match=r"image.*img18"):
        coco_metrics(truth, predictions, CLASSES, IMAGES[:18])


def test_empty_predictions_give_zero():
    truth, _ = _fixture()
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in [*COLUMNS, "score"]})
    empty[["image", "label"]] = empty[["image", "label"]].astype("string")
    out = coco_metrics(truth, empty, CLASSES, IMAGES)
    assert [out[k] for k in ("map", "map50", "map_small", "ar100", "ar_small")] == [0.0] * 5
    assert out["map_per_class"] == dict.fromkeys(
        ["aortic", "cardiomegaly", "nodule", "effusion", "mass"], 0.0
    )


def test_no_small_objects_is_nan():
    """COCO's −1 (no truth in the area range) becomes NaN: map_small and ar_small without small
    truth boxes, everything without truth."""
    truth, predictions = _fixture()
    large = truth[truth["label"] != "nodule"]
    out = coco_metrics(large, predictions, CLASSES, IMAGES)
    assert math.isnan(out["map_small"]) and math.isnan(out["ar_small"])
    assert 0 < out["map"] < 1 and "nodule" not in out["map_per_class"]
    nothing = coco_metrics(truth.iloc[:0], predictions, CLASSES, IMAGES)
    assert all(math.isnan(nothing[k]) for k in ("map", "map50", "ar100"))
    assert nothing["map_per_class"] == {}


def test_unknown_label_is_an_error():
    truth, predictions = _fixture()
    predictions.loc[3, "label"] = "pneumothorax"
    with pytest.raises(ValueError, match=r"predictions: label.*pneumothorax"):
        coco_metrics(truth, predictions, CLASSES, IMAGES)
    with pytest.raises(ValueError, match=r"truth: label.*nodule"):
        coco_metrics(truth, predictions, ["aortic"], IMAGES)


def _boxes(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image", "reader_id", "label", "x1", "y1", "x2", "y2"])


def test_reader_agreement_by_hand():
    """R9's boxes on the images both R9 and R10 read (a, d):
    nodule [0 0 10 10] vs R10's nodules: IoU 0.8 ([0 0 10 8]) and 80/120 → 0.8;
    nodule [50 50 60 60] vs R10's [57 50 67 60]: 30/170 = 0.176 < 0.2 → dropped;
    cardiomegaly [0 0 100 100] vs [0 0 100 50]: 0.5; effusion: R10 drew none on a → dropped;
    mass on d: 1.0. Image b (R9 only), c (R10 only) and R11's boxes do not count."""
    boxes = _boxes(
        [
            ("a", "R9", "nodule", 0, 0, 10, 10),
            ("a", "R9", "nodule", 50, 50, 60, 60),
            ("a", "R9", "cardiomegaly", 0, 0, 100, 100),
            ("a", "R9", "effusion", 0, 0, 20, 20),
            ("a", "R10", "nodule", 0, 0, 10, 8),
            ("a", "R10", "nodule", 2, 0, 12, 10),
            ("a", "R10", "nodule", 57, 50, 67, 60),
            ("a", "R10", "cardiomegaly", 0, 0, 100, 50),
            ("a", "R11", "effusion", 0, 0, 20, 20),
            ("b", "R9", "mass", 0, 0, 10, 10),
            ("c", "R10", "mass", 0, 0, 10, 10),
            ("d", "R9", "mass", 0, 0, 10, 10),
            ("d", "R10", "mass", 0, 0, 10, 10),
        ]
    )
    kept = np.array([0.8, 0.5, 1.0])
    out = reader_agreement(boxes, "R9", "R10")
    assert out == pytest.approx(
        {"mean": kept.mean(), "std": np.std(kept), "n": 3, "images": 2}, abs=1e-12
    )
    # a threshold below 0.176 keeps the second nodule
    low = reader_agreement(boxes, "R9", "R10", threshold=0.1)
    assert low["n"] == 4 and low["mean"] == pytest.approx((kept.sum() + 30 / 170) / 4)
    none = reader_agreement(boxes, "R9", "R12")
    assert none["n"] == 0 and none["images"] == 0 and math.isnan(none["mean"])


def test_model_iou_by_hand():
    """a/nodule: best of IoU 0.8 and 0.5 → 0.8; a/cardiomegaly: only a nodule prediction
    overlaps it → 0 (no prediction of its class); b/mass: 0.5."""
    truth = pd.DataFrame(
        [
            ("a", "nodule", 0, 0, 10, 10),
            ("a", "cardiomegaly", 0, 0, 100, 100),
            ("b", "mass", 0, 0, 10, 10),
        ],
        columns=COLUMNS,
    )
    predictions = pd.DataFrame(
        [
            ("a", "nodule", 0, 0, 5, 10, 0.9),
            ("a", "nodule", 0, 0, 10, 8, 0.3),
            ("b", "mass", 0, 0, 10, 5, 0.7),
            ("b", "nodule", 0, 0, 10, 10, 0.7),
        ],
        columns=[*COLUMNS, "score"],
    )
    ious = np.array([0.8, 0.0, 0.5])
    out = model_iou(truth, predictions)
    assert out == pytest.approx(
        {"mean": ious.mean(), "std": np.std(ious), "n": 3, "matched": 2 / 3, "mean_matched": 0.65}
    )
