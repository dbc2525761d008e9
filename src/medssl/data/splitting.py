"""Patient-disjoint splits and nested label-fraction subsets (pure functions on the manifest)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medssl.data.contract import LABELED_SPLITS, SPLITS

LABEL_FRACTION_COLUMN = "label_fraction"


def assign_splits(manifest: pd.DataFrame, fractions: Mapping[str, float], seed: int) -> pd.Series:
    """One split per row, patient-disjoint, with image shares close to `fractions`.

    Patients are visited in a seeded random order and each goes to the split furthest below its
    target relative to that target, so small splits are served early (every split with a share gets
    at least one patient when there are enough) and each split ends within about one patient of its
    share (paper 000 §3.1: "no overlap of patients between sets").
    """
    names = [s for s in SPLITS if fractions.get(s, 0) > 0]
    by_patient = _patient_bins(manifest, [fractions[s] for s in names], seed)
    labels = pd.Series(
        np.asarray(names, dtype=object)[by_patient.to_numpy()], index=by_patient.index
    )
    return manifest["patient_id"].map(labels).astype("string").rename("split")


def _patient_bins(manifest: pd.DataFrame, shares: Sequence[float], seed: int) -> pd.Series:
    """The bin (0 … len(shares) - 1) of every patient, by patient id: patients in a seeded random
    order, each to the bin furthest below its share of the images relative to that share."""
    per_patient = manifest.groupby("patient_id", sort=True).size()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(per_patient))
    targets = np.asarray(shares, dtype=float) * len(manifest)
    counts = np.zeros(len(targets))
    choice = np.empty(len(per_patient), dtype=np.int64)
    sizes = per_patient.to_numpy()
    for i in order:
        k = int(np.argmax((targets - counts) / targets))
        choice[i] = k
        counts[k] += sizes[i]
    return pd.Series(choice, index=per_patient.index)


def cv_folds(manifest: pd.DataFrame, folds: int, seed: int = 0) -> pd.Series:
    """The fold (0 … folds - 1, Int64) of every labeled row (train/val/test), patient-disjoint with
    about equal images per fold (paper 004 §3.1: "randomly split into 5 disjoint folds"); NA on
    the other rows."""
    labeled = manifest["split"].isin(list(LABELED_SPLITS)).to_numpy(dtype=bool)
    out = pd.Series(pd.NA, index=manifest.index, dtype="Int64", name="fold")
    if labeled.any():
        bins = _patient_bins(manifest[labeled], [1.0 / folds] * folds, seed)
        out[labeled] = manifest.loc[labeled, "patient_id"].map(bins).astype("Int64")
    return out


def cv_split(manifest: pd.DataFrame, folds: int, fold: int, seed: int = 0) -> pd.Series:
    """The split column of round `fold` of a k-fold cross-validation (paper 004 §3.1: trained on
    4 folds, evaluated on the held-out one): labeled rows of the fold → test, the other labeled
    rows → train, no val; unlabeled rows stay unlabeled."""
    fold_of = cv_folds(manifest, folds, seed)
    split = manifest["split"].astype("string").copy()
    labeled = fold_of.notna().to_numpy(dtype=bool)
    held_out = (fold_of == fold).fillna(False).to_numpy(dtype=bool)
    split[labeled] = "train"
    split[held_out] = "test"
    return split.rename("split")


def label_fraction_column(
    manifest: pd.DataFrame, fractions: Sequence[float], seed: int, split: str = "train"
) -> pd.Series:
    """For each row of `split`, the smallest label fraction whose subset contains it (NA elsewhere).

    Exams of the split are put in a seeded random order; the subset for fraction f is the shortest
    prefix of that order holding at least f of the split's images (paper 000 §3.3.2: 275 of 2,742
    images = 10 %, sampled by exam as batches are, §3.2). Subsets are nested by construction:
    the f-subset is `manifest[label_fraction <= f]`.
    """
    fractions = sorted(set(fractions))
    rows = manifest[manifest["split"] == split]
    out = pd.Series(pd.NA, index=manifest.index, dtype="Float64", name=LABEL_FRACTION_COLUMN)
    if rows.empty:
        return out
    per_exam = rows.groupby("exam_id", sort=True).size()
    order = np.random.default_rng(seed).permutation(len(per_exam))
    cumulative = np.cumsum(per_exam.to_numpy()[order]) / len(rows)
    exam_fraction = np.full(len(per_exam), np.nan)  # NaN: in no subset (largest f < 1)
    for position, exam_index in enumerate(order):
        # an exam is in the f-subset while the prefix before it still holds less than f
        before = cumulative[position - 1] if position else 0.0
        exam_fraction[exam_index] = next((f for f in fractions if before < f - 1e-12), np.nan)
    mapping = pd.Series(exam_fraction, index=per_exam.index)
    out.loc[rows.index] = pd.array(rows["exam_id"].map(mapping).to_numpy(), dtype="Float64")
    return out
