"""Evaluate stage: val-tuned per-class thresholds, test metrics, exam-level bootstrap CI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, precision_recall_fscore_support

from medssl.config import EvaluateConfig
from medssl.errors import DataContractError
from medssl.metrics.bootstrap import (
    bootstrap_weighted_f1,
    group_confusion,
    resample_multiplicities,
    weighted_f1_from_counts,
)
from medssl.stages.evaluate import evaluate, format_table

CLASSES = ["Liver", "Gallbladder", "Other", "Kidney", "Pancreas", "Spleen", "Bladder"]
FLAT_KEYS = [
    "test_f1_weighted",
    "test_precision_weighted",
    "test_recall_weighted",
    "test_f1_weighted_ci_low",
    "test_f1_weighted_ci_high",
    "test_prevalence_f1_weighted",
    "test_images",
    "test_exams",
]


def make_predictions(
    n_val_exams: int = 30,
    n_test_exams: int = 40,
    classes: list[str] = CLASSES,
    seed: int = 0,
    signal: float = 1.5,
    images_per_exam: tuple[int, int] = (2, 8),
    perfect: bool = False,
) -> pd.DataFrame:
    """A predictions table as the train stage writes it: random labels, noisy scores."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.15, 0.45, len(classes))
    rows = []
    for split, n_exams in (("val", n_val_exams), ("test", n_test_exams)):
        for e in range(n_exams):
            n = int(rng.integers(*images_per_exam, endpoint=True))
            for k in range(n):
                rows.append((f"{split}/e{e}/{k}.png", f"p-{split}-{e}", f"{split}-e{e}", split))
    table = pd.DataFrame(rows, columns=["image", "patient_id", "exam_id", "split"])
    y = rng.random((len(table), len(classes))) < prevalence
    y[: len(classes)] |= np.eye(len(classes), dtype=bool)  # every class positive in val
    test_start = int((table["split"] == "test").to_numpy().argmax())
    y[test_start : test_start + len(classes)] |= np.eye(len(classes), dtype=bool)
    if perfect:
        scores = y.astype(np.float32)
    else:
        logits = signal * (2 * y - 1) + rng.normal(size=y.shape)
        scores = (1 / (1 + np.exp(-logits))).astype(np.float32)
    for i, c in enumerate(classes):
        table[f"label_{c}"] = pd.array(y[:, i].astype(int), dtype="Int8")
    for i, c in enumerate(classes):
        table[f"score_{c}"] = scores[:, i]
    return table


def write(table: pd.DataFrame, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(model_dir / "predictions.parquet", index=False)
    return model_dir


def run(tmp_path: Path, table: pd.DataFrame, **cfg):
    model_dir = write(table, tmp_path / "model")
    return evaluate(model_dir, tmp_path / "eval", EvaluateConfig(**cfg))


def arrays(table: pd.DataFrame, split: str, classes: list[str] = CLASSES):
    rows = table[table["split"] == split]
    y = rows[[f"label_{c}" for c in classes]].to_numpy(dtype=int)
    s = rows[[f"score_{c}" for c in classes]].to_numpy(dtype=float)
    return y, s, rows["exam_id"].to_numpy()


def test_metrics_equal_scikit_learn_with_the_thresholds_applied(tmp_path):
    table = make_predictions(seed=1)
    result = run(tmp_path, table, bootstrap=200)
    thresholds = pd.read_csv(tmp_path / "eval" / "thresholds.csv")
    assert list(thresholds.columns) == ["class", "threshold", "val_f1"]
    assert list(thresholds["class"]) == CLASSES
    y, s, _ = arrays(table, "test")
    pred = s >= thresholds["threshold"].to_numpy()
    p, r, f, n = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    wp, wr, wf, _ = precision_recall_fscore_support(y, pred, average="weighted", zero_division=0)
    m = result.metrics
    assert m["test_f1_weighted"] == pytest.approx(wf)
    assert m["test_precision_weighted"] == pytest.approx(wp)
    assert m["test_recall_weighted"] == pytest.approx(wr)
    for i, c in enumerate(CLASSES):
        assert m["per_class"][c]["precision"] == pytest.approx(p[i])
        assert m["per_class"][c]["recall"] == pytest.approx(r[i])
        assert m["per_class"][c]["f1"] == pytest.approx(f[i])
        assert m["per_class"][c]["support"] == n[i]
        assert m["per_class"][c]["threshold"] == pytest.approx(thresholds["threshold"][i])
    assert m["test_images"] == len(y)
    assert m["test_exams"] == 40
    assert m["test_labels"] == y.sum()
    # val_f1 is the F1 of the chosen threshold on val
    yv, sv, _ = arrays(table, "val")
    val_f1 = f1_score(yv, sv >= thresholds["threshold"].to_numpy(), average=None)
    np.testing.assert_allclose(thresholds["val_f1"], val_f1)


@pytest.mark.parametrize("seed", range(3))
def test_thresholds_are_the_val_f1_maximisers(tmp_path, seed):
    table = make_predictions(n_val_exams=5, n_test_exams=5, classes=["a", "b", "c"], seed=seed)
    for c in "abc":  # ties on purpose
        table[f"score_{c}"] = table[f"score_{c}"].round(1)
    result = run(tmp_path, table, bootstrap=0)
    y, s, _ = arrays(table, "val", ["a", "b", "c"])
    for i, c in enumerate("abc"):
        t = result.metrics["per_class"][c]["threshold"]
        brute = max(
            f1_score(y[:, i], s[:, i] >= cand, zero_division=0)
            for cand in np.r_[np.unique(s[:, i]), np.inf]
        )
        assert f1_score(y[:, i], s[:, i] >= t) == pytest.approx(brute)
        assert t in set(s[:, i])  # a threshold is one of the val scores


def test_ci_contains_the_estimate_and_narrows_with_more_exams(tmp_path):
    widths = []
    for n_exams in (20, 400):
        table = make_predictions(n_test_exams=n_exams, seed=2)
        m = run(tmp_path / str(n_exams), table, bootstrap=500).metrics
        low, high = m["test_f1_weighted_ci_low"], m["test_f1_weighted_ci_high"]
        assert low <= m["test_f1_weighted"] <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(20) scaling


def test_ci_is_reproducible_and_depends_on_seed(tmp_path):
    table = make_predictions(seed=3)
    a = run(tmp_path / "a", table, bootstrap=300, seed=7).metrics
    b = run(tmp_path / "b", table, bootstrap=300, seed=7).metrics
    c = run(tmp_path / "c", table, bootstrap=300, seed=8).metrics
    assert a == b
    assert (a["test_f1_weighted_ci_low"], a["test_f1_weighted_ci_high"]) != (
        c["test_f1_weighted_ci_low"],
        c["test_f1_weighted_ci_high"],
    )


def test_bootstrap_resamples_whole_exams():
    """Each resample's statistic equals scikit-learn's weighted F1 with every image weighted by how
    often its exam was drawn: images of an exam always enter a resample together."""
    table = make_predictions(n_test_exams=25, seed=4)
    y, s, exams = arrays(table, "test")
    pred = s >= 0.5
    ci = bootstrap_weighted_f1(y, pred, exams, n_resamples=50, level=0.9, seed=11)
    codes, uniques = pd.factorize(exams)  # order of first appearance, as group_confusion
    multiplicities = resample_multiplicities(len(uniques), 50, np.random.default_rng(11))
    assert (multiplicities.sum(axis=1) == len(uniques)).all()  # as many exams as the test set
    for b in range(50):
        w = multiplicities[b][codes]
        expected = f1_score(y, pred, average="weighted", sample_weight=w, zero_division=0)
        assert ci.samples[b] == pytest.approx(expected)
    assert ci.estimate == pytest.approx(f1_score(y, pred, average="weighted"))


def test_exam_level_ci_is_wider_than_image_level_for_correlated_exams():
    """Exams of 10 identical images, each exam wholly right or wholly wrong: resampling exams
    sees 40 independent units, resampling images would pretend there are 400."""
    rng = np.random.default_rng(5)
    n_exams, per = 40, 10
    exam_y = rng.random((n_exams, 2)) < 0.5
    exam_ok = rng.random((n_exams, 2)) < 0.7
    y = np.repeat(exam_y, per, axis=0)
    pred = np.repeat(np.where(exam_ok, exam_y, ~exam_y), per, axis=0)
    exams = np.repeat(np.arange(n_exams), per)
    by_exam = bootstrap_weighted_f1(y, pred, exams, 1000, 0.95, seed=0)
    by_image = bootstrap_weighted_f1(y, pred, np.arange(len(y)), 1000, 0.95, seed=0)
    assert by_exam.estimate == by_image.estimate
    assert by_exam.high - by_exam.low > 2 * (by_image.high - by_image.low)


def test_counts_formula_matches_scikit_learn():
    rng = np.random.default_rng(6)
    y = rng.random((300, 5)) < [0.0, 0.1, 0.3, 0.5, 0.9]
    pred = rng.random((300, 5)) < 0.4
    pred[:, 0] = False  # a class with no support and no predictions
    tp, fp, fn, n = group_confusion(y, pred, np.arange(300) // 7)
    assert n == 43
    got = weighted_f1_from_counts(tp.sum(0), fp.sum(0), fn.sum(0))
    assert got == pytest.approx(f1_score(y, pred, average="weighted", zero_division=0))
    assert weighted_f1_from_counts(np.zeros(3), np.ones(3), np.zeros(3)) == 0.0  # no support


def test_bootstrap_1000_resamples_of_1300_images():
    """The paper's test-set size: 1000 exam resamples, each a weighted F1, around the estimate
    (its speed is measured in benchmarks/evaluate_bootstrap.py, not asserted here)."""
    rng = np.random.default_rng(7)
    y = rng.random((1300, 7)) < 0.3
    pred = np.where(rng.random((1300, 7)) < 0.8, y, ~y)  # a better-than-chance classifier
    exams = np.sort(rng.integers(0, 100, 1300))
    ci = bootstrap_weighted_f1(y, pred, exams, 1000, 0.95, 0)
    assert len(ci.samples) == 1000 and np.isfinite(ci.samples).all()
    assert ci.low < ci.estimate < ci.high
    assert ci.estimate == pytest.approx(f1_score(y, pred, average="weighted"))
    assert np.quantile(ci.samples, [0.025, 0.975]) == pytest.approx([ci.low, ci.high])


def test_prevalence_baseline_is_2p_over_1_plus_p_weighted(tmp_path):
    table = make_predictions(seed=8)
    m = run(tmp_path, table, bootstrap=0).metrics
    y, _, _ = arrays(table, "test")
    p, support = y.mean(axis=0), y.sum(axis=0)
    expected = np.sum(support * 2 * p / (1 + p)) / support.sum()
    assert m["test_prevalence_f1_weighted"] == pytest.approx(expected)
    assert m["test_prevalence_f1_weighted"] < m["test_f1_weighted"]


def test_perfect_scores_give_f1_one_and_a_degenerate_ci(tmp_path):
    result = run(tmp_path, make_predictions(perfect=True, seed=9), bootstrap=300)
    m = result.metrics
    assert m["test_f1_weighted"] == 1.0
    assert m["test_precision_weighted"] == 1.0
    assert m["test_recall_weighted"] == 1.0
    assert (m["test_f1_weighted_ci_low"], m["test_f1_weighted_ci_high"]) == (1.0, 1.0)
    assert all(c["f1"] == 1.0 for c in m["per_class"].values())


def test_files_are_written(tmp_path):
    table = make_predictions(seed=10)
    result = run(tmp_path, table, bootstrap=100)
    out = tmp_path / "eval"
    for name in (
        "metrics.json",
        "thresholds.csv",
        "pr_curves.csv",
        "pr_curves.png",
        "report.md",
        "table.txt",
    ):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0
    assert set(result.paths.values()) == {p for p in out.iterdir()}

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=_no_constants)
    keys = list(metrics)
    assert keys[: len(FLAT_KEYS)] == FLAT_KEYS  # flat numbers first, per_class last
    assert keys[-2:] == ["per_class", "inputs"]  # then what was scored
    predictions = (tmp_path / "model" / "predictions.parquet").read_bytes()
    assert metrics["inputs"] == {
        "predictions_sha256": hashlib.sha256(predictions).hexdigest(),
        "model_sha256": None,  # this model folder has predictions only
    }
    assert all(isinstance(metrics[k], int | float) for k in keys[:-2])
    assert list(metrics["per_class"]) == CLASSES
    assert set(metrics["per_class"]["Liver"]) == {
        "precision",
        "recall",
        "f1",
        "support",
        "threshold",
    }
    assert metrics == result.metrics

    curves = pd.read_csv(out / "pr_curves.csv")
    assert list(curves.columns) == ["class", "recall", "precision", "threshold"]
    assert list(curves["class"].unique()) == CLASSES
    y, s, _ = arrays(table, "test")
    for i, c in enumerate(CLASSES):
        part = curves[curves["class"] == c]
        per_class_file = pd.read_csv(out / "pr" / f"{c}.csv")  # what `dvc plots` reads
        pd.testing.assert_frame_equal(
            per_class_file, part.drop(columns="class").reset_index(drop=True)
        )
        assert part["recall"].is_monotonic_increasing
        precision, recall, thr = precision_recall_curve(y[:, i], s[:, i])
        np.testing.assert_allclose(part["recall"], recall[::-1])
        np.testing.assert_allclose(part["precision"], precision[::-1])
        np.testing.assert_allclose(part["threshold"].iloc[1:], thr[::-1], rtol=1e-6)
        assert math.isnan(part["threshold"].iloc[0])

    report = (out / "report.md").read_text()
    assert "| | Liver | Gallbladder | Other | Kidney | Pancreas | Spleen | Bladder |" in report
    assert "weighted avg" in report
    assert "95% CI" in report
    assert "pr_curves.png" in report


def test_format_table_has_the_paper_table_2_layout(tmp_path):
    result = run(tmp_path, make_predictions(seed=11), bootstrap=100)
    text = format_table(result)
    lines = text.splitlines()
    assert lines[0].split() == [*CLASSES, "weighted", "avg"]
    assert [line.split()[0] for line in lines[1:5]] == [
        "F1-score",
        "Precision",
        "Recall",
        "nlabels",
    ]
    m = result.metrics
    f1_row = lines[1].split()[1:]
    assert f1_row == [f"{m['per_class'][c]['f1']:.2f}" for c in CLASSES] + [
        f"{m['test_f1_weighted']:.2f}"
    ]
    nlabels = lines[4].split()[1:]
    assert nlabels == [str(m["per_class"][c]["support"]) for c in CLASSES] + [str(m["test_labels"])]
    assert sum(map(int, nlabels[:-1])) == int(nlabels[-1])
    assert "95% CI" in text
    assert "baseline" in text
    # columns line up: every row as long as the header
    assert len({len(line) for line in lines[:5]}) == 1


def test_no_bootstrap_writes_null_ci(tmp_path):
    result = run(tmp_path, make_predictions(seed=12), bootstrap=0)
    assert result.metrics["test_f1_weighted_ci_low"] is None
    assert "no bootstrap CI" in format_table(result)


def test_class_without_val_positives_is_never_predicted(tmp_path):
    table = make_predictions(seed=13)
    val = table["split"] == "val"
    table.loc[val, "label_Spleen"] = 0
    result = run(tmp_path, table, bootstrap=50)
    spleen = result.metrics["per_class"]["Spleen"]
    assert spleen["threshold"] is None
    assert spleen["recall"] == 0.0
    json.loads((tmp_path / "eval" / "metrics.json").read_text(), parse_constant=_no_constants)
    csv = pd.read_csv(tmp_path / "eval" / "thresholds.csv")
    assert csv.loc[csv["class"] == "Spleen", "threshold"].item() == np.inf


class RecordingTracker:
    def __init__(self):
        self.metrics: dict[str, float] = {}
        self.artifacts: list[str] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_artifacts(self, path, artifact_path=None):
        self.artifacts.append(str(path))


def test_tracker_gets_the_metrics_json_names_and_the_folder(tmp_path):
    tracker = RecordingTracker()
    model_dir = write(make_predictions(seed=14), tmp_path / "model")
    result = evaluate(model_dir, tmp_path / "eval", EvaluateConfig(bootstrap=50), tracker=tracker)
    m = result.metrics
    assert tracker.metrics["test_f1_weighted"] == m["test_f1_weighted"]
    assert tracker.metrics["test_f1_weighted_ci_low"] == m["test_f1_weighted_ci_low"]
    assert tracker.metrics["test_prevalence_f1_weighted"] == m["test_prevalence_f1_weighted"]
    assert tracker.metrics["test_images"] == m["test_images"]
    assert tracker.metrics["val_exams"] == m["val_exams"]
    for c in CLASSES:
        for k in ("f1", "precision", "recall"):
            assert tracker.metrics[f"test_{k}_{c}"] == m["per_class"][c][k]
    # one naming scheme: every flat number of metrics.json under its own name, and per class
    flat = {k for k, v in m.items() if isinstance(v, int | float)}
    per_class = {f"test_{k}_{c}" for c in CLASSES for k in ("f1", "precision", "recall")}
    assert set(tracker.metrics) == flat | per_class
    assert all(isinstance(v, float) for v in tracker.metrics.values())
    assert tracker.artifacts == [str(tmp_path / "eval")]


def _drop_split(split):
    return lambda t: t[t["split"] != split]


def _set(column, value, rows=slice(None)):
    def edit(t):
        t = t.copy()
        t.loc[t.index[rows], column] = value
        return t

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop_split("test"), "no 'test' rows"),
        (lambda t: t.drop(columns=["score_Liver"]), "label(s) without a score column: Liver"),
        (lambda t: t.drop(columns=["label_Liver"]), "score(s) without a label column: Liver"),
        (lambda t: t.assign(score_Extra=0.5), "score(s) without a label column: Extra"),
        (lambda t: t.drop(columns=[c for c in t if c.startswith("label_")]), "no label_<class>"),
        (lambda t: t.drop(columns=["exam_id"]), "missing column(s) exam_id"),
        (_set("label_Kidney", pd.NA, slice(0, 1)), "missing labels in 'label_Kidney'"),
        (_set("label_Kidney", 2, slice(0, 1)), "'label_Kidney' has values other than 0/1"),
        (_set("score_Other", np.nan, slice(-1, None)), "'score_Other' has missing or non-finite"),
    ],
)
def test_bad_predictions_raise_one_line_errors(tmp_path, edit, message):
    table = edit(make_predictions(n_val_exams=4, n_test_exams=4, seed=15))
    with pytest.raises(DataContractError) as info:
        run(tmp_path, table, bootstrap=0)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_or_unreadable_predictions_file(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(DataContractError, match="predictions file not found") as info:
        evaluate(tmp_path / "model", tmp_path / "eval", EvaluateConfig())
    assert "\n" not in str(info.value)
    (tmp_path / "model" / "predictions.parquet").write_text("not parquet")
    with pytest.raises(DataContractError, match="not a readable parquet file") as info:
        evaluate(tmp_path / "model", tmp_path / "eval", EvaluateConfig())
    assert "\n" not in str(info.value)
    assert not (tmp_path / "eval").exists()  # nothing written on bad input


def _no_constants(name):
    raise AssertionError(f"metrics.json is not strict JSON: {name}")


def test_without_val_rows_thresholds_are_one_half(tmp_path):
    """A cross-validation round has no val split: every class is decided at score >= 0.5, and
    the label-prevalence baseline predicts every class that has a positive."""
    table = _drop_split("val")(make_predictions(n_val_exams=4, n_test_exams=6, seed=3))
    model = tmp_path / "model"
    model.mkdir()
    table.to_parquet(model / "predictions.parquet")
    result = evaluate(model, None, EvaluateConfig(bootstrap=0))
    per = result.metrics["per_class"]
    assert all(m["threshold"] == 0.5 for m in per.values())
    test = table[table["split"] == "test"]
    classes = list(per)
    y = test[[f"label_{c}" for c in classes]].to_numpy(dtype=bool)
    pred = test[[f"score_{c}" for c in classes]].to_numpy() >= 0.5
    weighted = f1_score(y, pred, average="weighted", zero_division=0)
    assert result.metrics["test_f1_weighted"] == pytest.approx(weighted)
    assert result.metrics["val_images"] == 0
    assert "no val rows: threshold 0.5" in format_table(result)
