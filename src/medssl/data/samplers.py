"""Batch samplers. A sampler yields arrays of manifest row positions; its state is an
(epoch, position) pair, and the batches of an epoch depend only on (seed, epoch), so a run resumed
from that pair sees exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class BatchSampler(Protocol):
    """What the engine needs from a sampler (every stream of a method is one)."""

    epoch: int
    position: int

    def __len__(self) -> int: ...  # batches per epoch

    def next_batch(self) -> np.ndarray: ...

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


class EpochSampler:
    """Base: seeded per-epoch batch lists and the (epoch, position) state.

    `next_batch()` returns the next batch and advances; past the end of an epoch it rolls over to
    the next one, so a secondary stream (e.g. FixMatch's unlabeled data) simply cycles."""

    def __init__(self, seed: int, stream: int = 0) -> None:
        self.seed = seed
        self.stream = stream  # distinguishes several samplers sharing a seed
        self.epoch = 0
        self.position = 0
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def make_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        raise NotImplementedError

    def batches(self, epoch: int) -> list[np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            self._cached = (epoch, self.make_batches(rng))
        return self._cached[1]

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    @property
    def epoch_done(self) -> bool:
        return self.position >= len(self)

    def next_batch(self) -> np.ndarray:
        if self.epoch_done:
            self.start_next_epoch()
        batch = self.batches(self.epoch)[self.position]
        self.position += 1
        return batch

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class ExamBatchSampler(EpochSampler):
    """The engine's group sampler. Paper 000 §3.2: "at each iteration we randomly sample a subset
    t of exams, instead of sampling a set of images". Each epoch visits every group (exam, or
    patient / lesion: `exam_ids` holds any group id) once in a seeded random order; a batch is
    t = `batch_exams` groups with all their images, randomly capped at `max_batch_images`.

    `per_group` = K makes P × K batches (paper 004 §3.1: 8 patients × 8 images): each group gives
    exactly K images, drawn without replacement, topped up by repeats when it has fewer (a
    repeated image is augmented anew)."""

    def __init__(
        self,
        rows: Sequence[int] | np.ndarray,
        exam_ids: Sequence[str] | np.ndarray,
        batch_exams: int,
        max_batch_images: int,
        seed: int = 0,
        stream: int = 0,
        per_group: int | None = None,
    ) -> None:
        super().__init__(seed, stream)
        rows = np.asarray(rows, dtype=np.int64)
        exam_ids = np.asarray(exam_ids, dtype=object)
        if per_group is not None and per_group < 1:
            raise ValueError("per_group must be >= 1")
        self.per_group = per_group
        if len(rows) != len(exam_ids):
            raise ValueError("rows and exam_ids must have the same length")
        if len(rows) == 0:
            raise ValueError("no rows to sample")
        if batch_exams < 1 or max_batch_images < 1:
            raise ValueError("batch_exams and max_batch_images must be >= 1")
        _, inverse = np.unique(exam_ids, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0, True])
        # rows of each exam, exams in sorted-id order (deterministic whatever the input order)
        self.exams: list[np.ndarray] = [rows[order[a:b]] for a, b in pairwise(bounds)]
        self.batch_exams = batch_exams
        self.max_batch_images = max_batch_images
        self.images = len(rows)

    def make_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        perm = rng.permutation(len(self.exams))
        out = []
        for start in range(0, len(perm), self.batch_exams):
            groups = [self.exams[i] for i in perm[start : start + self.batch_exams]]
            if self.per_group is not None:
                groups = [_k_of(g, self.per_group, rng) for g in groups]
            batch = np.concatenate(groups)
            if len(batch) > self.max_batch_images:
                batch = rng.choice(batch, self.max_batch_images, replace=False)
            out.append(batch)
        return out


def _k_of(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k of `rows`: distinct when there are enough, else all of them and random repeats."""
    if len(rows) >= k:
        return rng.choice(rows, k, replace=False)
    return np.concatenate([rows, rng.choice(rows, k - len(rows), replace=True)])


class RandomBatchSampler(EpochSampler):
    """Plain image-level shuffling in batches of `batch_size` (for methods that do not sample by
    exam, and for tests)."""

    def __init__(
        self,
        rows: Sequence[int] | np.ndarray,
        batch_size: int,
        seed: int = 0,
        stream: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(seed, stream)
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) == 0:
            raise ValueError("no rows to sample")
        self.batch_size = batch_size
        self.drop_last = drop_last and len(self.rows) >= batch_size

    def make_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        perm = self.rows[rng.permutation(len(self.rows))]
        stop = len(perm) - len(perm) % self.batch_size if self.drop_last else len(perm)
        return [perm[s : s + self.batch_size] for s in range(0, stop, self.batch_size)]


class UniformLabelSampler(EpochSampler):
    """Paper 001 §3 (DeepCluster's uniform sampling over pseudo-labels): an epoch is as many
    images as there are rows, drawn in equal numbers from every non-empty pseudo-label (with
    replacement from clusters smaller than their share), shuffled, in batches of `batch_size`, so
    a big cluster cannot swamp the classifier. Before `set_labels` it shuffles the rows."""

    def __init__(
        self, rows: Sequence[int] | np.ndarray, batch_size: int, seed: int = 0, stream: int = 0
    ) -> None:
        super().__init__(seed, stream)
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) == 0:
            raise ValueError("no rows to sample")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.labels: np.ndarray | None = None

    def set_labels(self, labels: np.ndarray | None) -> None:
        """The pseudo-label of every row (aligned with `rows`); batches are drawn anew."""
        if labels is not None and len(labels) != len(self.rows):
            raise ValueError("one pseudo-label per row is needed")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._cached = None

    def make_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(self.rows)
        if self.labels is None:
            order = rng.permutation(n)
        else:
            clusters, inverse, counts = np.unique(
                self.labels, return_inverse=True, return_counts=True
            )
            members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
            share = math.ceil(n / len(clusters))
            picks = [rng.choice(m, share, replace=len(m) < share) for m in members]
            order = rng.permutation(np.concatenate(picks))[:n]
        picked = self.rows[order]
        return [picked[s : s + self.batch_size] for s in range(0, n, self.batch_size)]


LVIS_THRESHOLD = 0.4  # paper 003 §III.A: t, "empirically set to 0.4"


def repeat_factors(image_classes: Sequence[Sequence[str]], threshold: float = LVIS_THRESHOLD):
    """Paper 003 §III.A (LVIS repeat-factor sampling, Gupta et al. 2019): f(c) = the share of
    images that contain class c, r(c) = max(1, √(t / f(c))), and an image's factor r(I) = the max
    of r(c) over its classes (1 for an image without a class). Returns (r(I) float64 [n],
    {c: r(c)})."""
    n = len(image_classes)
    counts: dict[str, int] = {}
    for classes in image_classes:
        for c in set(classes):
            counts[c] = counts.get(c, 0) + 1
    per_class = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in sorted(counts.items())}
    per_image = np.array(
        [max((per_class[c] for c in set(classes)), default=1.0) for classes in image_classes]
    )
    return per_image, per_class


class RepeatFactorSampler(EpochSampler):
    """Paper 003 §III.A: each epoch repeats image i ⌊r_i⌋ times plus once more with probability
    r_i − ⌊r_i⌋ (stochastic rounding, drawn per epoch from the seed), shuffles, and cuts batches
    of `batch_size` (the rare classes' images are seen ≈ r times as often)."""

    def __init__(
        self,
        rows: Sequence[int] | np.ndarray,
        factors: Sequence[float] | np.ndarray,
        batch_size: int,
        seed: int = 0,
        stream: int = 0,
    ) -> None:
        super().__init__(seed, stream)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.factors = np.asarray(factors, dtype=np.float64)
        if len(self.rows) == 0:
            raise ValueError("no rows to sample")
        if len(self.factors) != len(self.rows) or (self.factors < 1).any():
            raise ValueError("one repeat factor >= 1 per row is needed")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size

    def make_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        whole = np.floor(self.factors)
        times = whole.astype(np.int64) + (rng.random(len(self.rows)) < self.factors - whole)
        epoch = rng.permutation(np.repeat(self.rows, times))
        return [epoch[s : s + self.batch_size] for s in range(0, len(epoch), self.batch_size)]
