"""The synthetic chest X-ray detection archive (medssl.data.synth.chest): paper 003's counts and
splits, the class imbalance of its Fig. 3, box sizes, three readers per image and their agreement
(Table II), the data contract through the CLI, determinism. Pixels at `tiny` only (and a few
`small` images in memory); the plans of `small` and `paper` are drawn without pixels."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from cli_helpers import cli
from medssl.config import SYNTH_SIZES, DataConfig, SplitConfig, load_params
from medssl.data.contract import BOX_COLUMNS, MANIFEST_ID_COLUMNS, Dataset
from medssl.data.synth import chest
from medssl.data.synth.chest import (
    CLASS_IMAGE_SHARE,
    CLASSES,
    READERS,
    class_image_shares,
    inter_reader_iou,
    plan_chest,
)
from medssl.errors import ConfigError
from medssl.stages.synth import synth

PAPER_003_SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


@pytest.fixture(scope="module")
def small_plan():
    return plan_chest("small", seed=0, split_fractions=PAPER_003_SPLITS)


@pytest.fixture(scope="module")
def paper_plan():
    return plan_chest("paper", seed=0, split_fractions=PAPER_003_SPLITS)


@pytest.fixture(scope="module")
def tiny_chest(tmp_path_factory):
    out = tmp_path_factory.mktemp("chest") / "chest-xray"
    synth(out, DataConfig(kind="chest-xray", size="tiny", seed=1, workers=1), SplitConfig(), False)
    return out


def _labeled(plan) -> np.ndarray:
    return np.array([len(f) > 0 for f in plan.findings])


def test_paper_size_is_paper_003s_dataset(paper_plan):
    m = paper_plan.manifest
    has = _labeled(paper_plan)
    assert has.sum() == 4394 and (~has).sum() == 2 * 4394  # §II.A; VinDr: ~2/3 no finding
    counts = m["split"].value_counts().to_dict()
    assert counts["unlabeled"] == 8788
    # §II.A: 3,075 / 440 / 878 (the paper's three add up to 4,393)
    assert abs(counts["train"] - 3075) <= 2 and abs(counts["val"] - 440) <= 2
    assert abs(counts["test"] - 878) <= 2
    assert paper_plan.info.image_size == 512 and paper_plan.info.task == "detection"


def test_manifest_structure_and_splits(small_plan):
    m = small_plan.manifest
    assert list(m.columns) == list(MANIFEST_ID_COLUMNS)  # no label columns: boxes are the labels
    assert m["lesion_id"].dtype == "string" and m["lesion_id"].isna().all()
    assert m["split"].dtype == "string"
    assert m["image"].is_unique and m["exam_id"].is_unique and m["patient_id"].is_unique
    has = _labeled(small_plan)
    assert (m.loc[~has, "split"] == "unlabeled").all()
    assert set(m.loc[has, "split"]) == {"train", "val", "test"}
    shares = m.loc[has, "split"].value_counts(normalize=True)
    for name, share in PAPER_003_SPLITS.items():
        assert shares[name] == pytest.approx(share, abs=0.01)
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    # boxes (and readers) exactly on the images with findings
    assert set(small_plan.boxes["image"]) == set(m.loc[has, "image"])
    assert set(small_plan.readings["image"]) == set(m.loc[has, "image"])
    assert set(small_plan.true_boxes["image"]) == set(m.loc[has, "image"])


def test_default_fractions_are_renormalised_and_fall_back():
    plan = plan_chest("tiny", 0, SplitConfig().fractions)  # paper 000's: 3.0 / 1.0 / 1.4 % labeled
    labeled = plan.manifest.loc[_labeled(plan), "split"]
    assert set(labeled) == {"train", "val", "test"}
    assert labeled.value_counts(normalize=True)["train"] == pytest.approx(0.03 / 0.054, abs=0.05)
    fallback = plan_chest("tiny", 0, {"unlabeled": 1.0}).manifest
    assert set(fallback["split"]) == {"unlabeled", "train", "val", "test"}


def test_class_frequencies_follow_fig3(small_plan, paper_plan):
    for plan in (small_plan, paper_plan):
        n = int(_labeled(plan).sum())
        truth = class_image_shares(plan.true_boxes, n)
        target = pd.Series(CLASS_IMAGE_SHARE)[list(CLASSES)]
        assert (truth - target).abs().max() < 0.04, truth
        readers = class_image_shares(plan.boxes, n)
        assert (readers >= truth - 1e-9).all()  # every true finding is marked by someone
        for shares in (truth, readers):
            assert spearmanr(shares, target).statistic > 0.9
            for common in ("cardiomegaly", "aortic_enlargement"):
                for rare in ("atelectasis", "consolidation"):
                    assert shares[common] > 5 * shares[rare]


def test_box_sizes_small_objects_exist(small_plan, paper_plan):
    def small_share(table: pd.DataFrame) -> pd.Series:
        area = (table["x2"] - table["x1"]) * (table["y2"] - table["y1"])
        return (area < 32**2).groupby(table["label"]).mean()

    at_small = small_share(small_plan.true_boxes)  # 128 px: most findings are COCO-small
    assert at_small["nodule_mass"] == 1.0 and at_small["cardiomegaly"] == 0.0
    assert at_small.mean() > 0.5
    at_paper = small_share(paper_plan.true_boxes)  # 512 px: nodules and calcifications
    assert at_paper["nodule_mass"] > 0.85 and at_paper["calcification"] > 0.85
    assert at_paper[["cardiomegaly", "aortic_enlargement", "pleural_effusion"]].max() == 0.0
    boxes = paper_plan.true_boxes
    area = (boxes["x2"] - boxes["x1"]) * (boxes["y2"] - boxes["y1"])
    assert 0.05 < (area < 32**2).mean() < 0.3
    width = (boxes["x2"] - boxes["x1"]).groupby(boxes["label"]).median()
    assert width["cardiomegaly"] > 3 * width["aortic_enlargement"] > 3 * width["nodule_mass"]
    per_image = small_plan.true_boxes.groupby(["image", "label"]).size()
    assert per_image.xs("nodule_mass", level="label").max() == 3  # several instances


def test_anatomy_findings_are_the_anatomy(small_plan):
    """Cardiomegaly is a wide heart (its box), aortic enlargement a wide knob."""
    for an, fs in zip(small_plan.anatomies, small_plan.findings, strict=True):
        labels = {f.label for f in fs}
        ctr = an.heart[2] / (an.lung_offset + an.lung_lateral)
        assert (ctr > 0.5) == ("cardiomegaly" in labels)
        assert (an.knob[2] > 0.033) == ("aortic_enlargement" in labels)
        for f in fs:
            if f.label == "cardiomegaly":
                assert f.box[2] - f.box[0] == pytest.approx(2 * an.heart[2])


def test_three_readers_per_image_with_the_papers_skew(small_plan):
    r = small_plan.readings
    per_image = r.groupby("image")["reader_id"]
    assert (per_image.size() == 3).all() and (per_image.nunique() == 3).all()
    assert set(r["reader_id"]) <= set(READERS) and len(READERS) == 17
    read = set(map(tuple, r[["image", "reader_id"]].to_numpy()))
    drawn = set(map(tuple, small_plan.boxes[["image", "reader_id"]].to_numpy()))
    assert drawn <= read  # only an image's readers draw on it
    images = r["image"].unique()

    def together(a: str, b: str) -> float:
        return float(np.mean([(i, a) in read and (i, b) in read for i in images]))

    # paper 003 §IV: R09 with R10 on 85 % of its test images, R09 with R11 on 85.4 %
    assert together("R09", "R10") == pytest.approx(0.85, abs=0.04)
    assert together("R09", "R11") == pytest.approx(0.85, abs=0.04)
    share = r["reader_id"].value_counts() / len(images)
    assert share.drop(["R09", "R10", "R11"]).max() < 0.15


def test_boxes_are_valid(small_plan):
    n = small_plan.info.image_size
    for table in (small_plan.boxes, small_plan.true_boxes):
        assert (table[["x1", "y1", "x2", "y2"]].dtypes == "float64").all()
        assert (table["x2"] > table["x1"]).all() and (table["y2"] > table["y1"]).all()
        assert table[["x1", "y1"]].min().min() >= 0 and table[["x2", "y2"]].max().max() <= n
        assert set(table["label"]) <= set(CLASSES)
    assert dict(small_plan.boxes.dtypes.astype(str)) == {
        "image": "string",
        **{c: t for c, t in BOX_COLUMNS.items() if c != "image"},
    }


def test_inter_reader_iou_is_near_table_2(small_plan):
    r10 = inter_reader_iou(small_plan.boxes, "R09", "R10")
    r11 = inter_reader_iou(small_plan.boxes, "R09", "R11")
    assert len(r10) > 500 and len(r11) > 500 and r10.min() > 0.2
    # Table II: 0.580 ± 0.284 and 0.674 ± 0.149; measured (seed 0): 0.59 ± 0.26, 0.67 ± 0.15
    assert 0.52 < r10.mean() < 0.64 and 0.22 < r10.std() < 0.32
    assert 0.61 < r11.mean() < 0.73 and 0.11 < r11.std() < 0.19


def test_findings_change_the_pixels_inside_their_boxes(small_plan):
    n = small_plan.info.image_size
    rows = [i for i, fs in enumerate(small_plan.findings) if fs][:40]
    for row in rows:
        img = small_plan.render(row)
        assert img.shape == (n, n) and img.dtype == np.uint8
        delta = img.astype(int) - small_plan.render(row, findings=False)
        inside = np.zeros((n, n), dtype=bool)
        for f in small_plan.findings[row]:
            x1, y1, x2, y2 = (v * n for v in f.box)
            i0, i1, j0, j1 = int(y1), int(np.ceil(y2)), int(x1), int(np.ceil(x2))
            if f.label not in ("cardiomegaly", "aortic_enlargement"):
                assert np.abs(delta[i0:i1, j0:j1]).max() > 0, f
            # the box and one pixel around it (the detector's unsharpness blurs the edge)
            inside[max(0, i0 - 1) : i1 + 1, max(0, j0 - 1) : j1 + 1] = True
        assert not delta[~inside].any()


def test_a_radiograph_look(small_plan):
    """Dark lungs, a bright mediastinum and abdomen, black air outside the body at the top."""
    n = small_plan.info.image_size
    for row in range(0, 60, 7):
        img = small_plan.render(row).astype(float)
        an = small_plan.anatomies[row]
        ym = int((an.top + 0.35 * (an.base[0] - an.top)) * n)
        lung = img[ym, int((an.cx - an.lung_offset) * n)]
        mediastinum = img[ym, int(an.cx * n)]
        abdomen = img[min(n - 1, int((an.base[1] + 0.15) * n)), int(an.cx * n)]
        assert lung + 30 < mediastinum and lung + 30 < abdomen
        assert img[0, 0] < 50 and img[0, -1] < 50


def digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_tiny_is_byte_identical_whatever_the_workers(tmp_path, tiny_chest):
    for name, seed in (("b", 1), ("c", 2)):
        data = DataConfig(kind="chest-xray", size="tiny", seed=seed, workers=2)
        synth(tmp_path / name, data, SplitConfig(), progress=False)
    a, b, c = digest(tiny_chest), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a != c
    assert len(a) == 120 + 3 and "boxes.parquet" in a


def test_written_archive_is_in_the_contract_and_renders_like_the_plan(tiny_chest):
    ds = Dataset.open(tiny_chest)
    assert ds.info.name == "chest-xray-tiny" and ds.info.task == "detection"
    assert ds.info.classes == list(CLASSES) and len(CLASSES) == 13
    assert ds.info.modality == "DX" and ds.info.channels == 1 and ds.info.image_size == 64
    assert ds.reports is None and ds.boxes is not None
    plan = plan_chest("tiny", 1, SplitConfig().fractions)
    pd.testing.assert_frame_equal(ds.manifest, plan.manifest.astype("string"))
    pd.testing.assert_frame_equal(ds.boxes, plan.boxes)
    for row in (0, 7, len(plan.manifest) - 1):
        written = np.asarray(Image.open(tiny_chest / plan.manifest["image"][row]))
        np.testing.assert_array_equal(written, plan.render(row))


def test_cli_writes_and_validates_it(tmp_path, capsys):
    none = tmp_path / "none.yaml"  # built-in defaults, not the repository's params.yaml
    ds, report = tmp_path / "ds", tmp_path / "report"
    args = ["--kind", "chest-xray", "--size", "tiny", "--workers", "1", "--params", none]
    out = cli(capsys, "data", "synth", "--out", ds, *args)
    assert out.code == 0, out.err
    assert "wrote 120 images from 120 exams of 120 patients" in out.out
    assert "unlabeled: 80" in out.out
    ok = cli(capsys, "validate", ds, "--out", report, "--params", none, "-S", "validate.workers=1")
    assert ok.code == 0, ok.out + ok.err
    assert "validate: OK" in ok.out and " boxes)" in ok.out


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown chest-xray size 'small-3'"):
        plan_chest("small-3", 0, PAPER_003_SPLITS)
    with pytest.raises(ConfigError) as info:
        load_params(tmp_path / "none.yaml", ["data.kind=chest-xray", "data.size=paper-3"])
    assert "chest-xray sizes: tiny, small, paper" in str(info.value)


def test_config_sizes_are_the_modules_sizes():
    assert SYNTH_SIZES["chest-xray"] == tuple(chest.SIZES)
    assert set(chest.CLASS_IMAGE_SHARE) == set(CLASSES) == set(chest.INSTANCES)
    assert set(chest.AMBIGUITY) == set(CLASSES)
