import numpy as np
import pandas as pd
import pytest

from medssl.data.splitting import assign_splits, label_fraction_column

PAPER = {"unlabeled": 0.946, "train": 0.030, "val": 0.010, "test": 0.014}


def random_manifest(n_patients: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for e in range(rng.integers(1, 3)):
            for i in range(rng.integers(3, 25)):
                rows.append((f"P{p}", f"P{p}E{e}", f"img/{p}/{e}/{i}.png"))
    return pd.DataFrame(rows, columns=["patient_id", "exam_id", "image"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_are_patient_disjoint_and_close_to_the_fractions(seed):
    m = random_manifest(3000, seed)
    m["split"] = assign_splits(m, PAPER, seed)
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    largest_patient = m.groupby("patient_id").size().max()
    shares = m["split"].value_counts()
    for name, fraction in PAPER.items():
        # the greedy assignment ends each split within one patient of its target
        assert abs(shares[name] - fraction * len(m)) <= largest_patient


def test_splits_are_deterministic_and_depend_on_the_seed():
    m = random_manifest(300)
    a, b, c = (assign_splits(m, PAPER, s) for s in (5, 5, 6))
    assert a.equals(b)
    assert not a.equals(c)


def test_zero_fraction_splits_get_no_rows():
    m = random_manifest(50)
    s = assign_splits(m, {"unlabeled": 0.0, "train": 0.7, "val": 0.0, "test": 0.3}, 0)
    assert set(s) == {"train", "test"}


def test_label_fractions_are_nested_by_exam_and_minimal():
    m = random_manifest(400)
    m["split"] = "train"
    fractions = [0.1, 0.2, 0.5, 1.0]
    col = label_fraction_column(m, fractions, seed=3)
    assert col.notna().all()
    # an exam is never cut between subsets
    assert (col.groupby(m["exam_id"]).nunique() == 1).all()
    previous = set()
    for f in fractions:
        subset = m[col <= f]
        assert previous <= set(subset["image"])  # nested
        previous = set(subset["image"])
        assert len(subset) >= f * len(m)  # at least f of the images
        # and minimal: the prefix before its last exam fell short of f, so dropping the largest
        # exam added for f (at least as large as the last one) falls short too
        added = subset[col[subset.index] == f].groupby("exam_id").size()
        assert len(subset) - added.max() < f * len(m)
    # 10 % of images, not of exams
    assert abs((col <= 0.1).mean() - 0.1) < 0.03


def test_label_fractions_only_on_the_train_split():
    m = random_manifest(200)
    m["split"] = assign_splits(m, PAPER, 0)
    col = label_fraction_column(m, [0.5, 1.0], seed=0)
    assert col[m["split"] != "train"].isna().all()
    assert col[m["split"] == "train"].notna().all()
    assert col.dtype == "Float64"


def test_fractions_below_one_leave_the_rest_out():
    m = random_manifest(200)
    m["split"] = "train"
    col = label_fraction_column(m, [0.1, 0.2], seed=0)
    assert col.isna().any() and col.notna().any()
    assert (col.dropna() <= 0.2).all()
