"""k-means that scales (paper 001 §3: DeepCluster re-clusters every image's features each epoch).

Two backends with the same contract — the same k-means++ initial centroids (drawn from a seeded
sample of at most 100·K points), every point used by the iterations (no subsampling), empty
clusters re-seeded by splitting the largest one, and the same seed on the same device gives the
same assignments:

    faiss   faiss-cpu's `Kmeans` (the CPU default; `max_points_per_centroid` raised so that faiss
            keeps every point instead of its default 256-per-centroid sample)
    torch   Lloyd iterations on the tensor's device (the GPU default: the features never leave the
            training device); distances by matmul, centroid sums by one-hot matmul (deterministic,
            unlike atomic index_add on CUDA), both in chunks
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "faiss", "torch"]
CHUNK = 32_768  # rows per distance/one-hot block (bounded memory for any N)
INIT_SAMPLE = 100  # k-means++ picks the initial centroids among 100·K random points


@dataclass
class KMeansResult:
    labels: np.ndarray  # int64 [N], the nearest final centroid of every point
    centroids: np.ndarray  # float32 [K, D]
    objective: float  # mean squared distance to the assigned centroid
    reseeded: int  # empty clusters re-seeded over the iterations
    backend: str
    seconds: float

    @property
    def empty(self) -> int:
        """Clusters without a point in the final assignment."""
        return int((np.bincount(self.labels, minlength=len(self.centroids)) == 0).sum())


def kmeans(
    x: np.ndarray | torch.Tensor,
    k: int,
    *,
    iterations: int = 20,
    seed: int = 0,
    backend: Backend = "auto",
) -> KMeansResult:
    """Cluster the rows of `x` [N, D] into `k` clusters with `iterations` Lloyd iterations.
    `auto`: torch when `x` is a CUDA tensor, else faiss."""
    n = int(x.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points (k={k}, points={n})")
    if backend == "auto":
        backend = "torch" if isinstance(x, torch.Tensor) and x.is_cuda else "faiss"
    start = time.perf_counter()
    if backend not in ("faiss", "torch"):
        raise ValueError(f"unknown k-means backend {backend!r} (known: auto, faiss, torch)")
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.detach().float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    init = kmeans_plus_plus(t, k, gen)
    if backend == "faiss":
        labels, centroids, objective, reseeded = _faiss(t.cpu().numpy(), init, iterations, seed)
    else:
        labels, centroids, objective, reseeded = _torch(t, init, iterations, gen)
    return KMeansResult(
        labels=labels,
        centroids=centroids,
        objective=objective,
        reseeded=reseeded,
        backend=backend,
        seconds=time.perf_counter() - start,
    )


def assign(x: np.ndarray | torch.Tensor, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid (squared Euclidean) of every row of `x`."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    c = torch.from_numpy(np.asarray(centroids, dtype=np.float32)).to(t.device)
    return _assign(t.detach().float(), c)[0].cpu().numpy()


def kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant: 2 + log k
    candidates per step, the one that lowers the potential most is kept) among a random sample of
    at most INIT_SAMPLE·k rows: [k, D] on x's device."""
    n = x.shape[0]
    sample = x[torch.randperm(n, generator=gen)[: INIT_SAMPLE * k].to(x.device)]
    trials = 2 + int(math.log(k))
    sq = (sample * sample).sum(dim=1)
    picked = [int(torch.randint(len(sample), (1,), generator=gen))]
    nearest = (sq - 2 * sample @ sample[picked[0]] + sq[picked[0]]).clamp_min(0)
    for _ in range(1, k):
        weights = nearest.double().cpu()
        if float(weights.sum()) <= 0:  # fewer distinct points than k: any point
            weights = torch.ones_like(weights)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=gen)
        cand = candidates.to(x.device)
        dist = sq[cand, None] - 2 * (sample @ sample[cand].T.contiguous()).T + sq  # [trials, n]
        potential = torch.minimum(nearest, dist.clamp_min(0))
        best = int(potential.sum(dim=1).argmin())
        picked.append(int(candidates[best]))
        nearest = potential[best]
    return sample[picked].clone()


def _faiss(x: np.ndarray, init: torch.Tensor, iterations: int, seed: int) -> tuple:
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = init.shape[0]
    km = faiss.Kmeans(
        d,
        k,
        niter=iterations,
        seed=seed,
        max_points_per_centroid=n,  # keep every point (faiss samples 256 per centroid)
        min_points_per_centroid=1,  # no warning for small clusters
        verbose=False,
    )
    km.train(x, init_centroids=np.ascontiguousarray(init.cpu().numpy(), dtype=np.float32))
    stats = km.iteration_stats
    reseeded = int(sum(s["nsplit"] for s in stats)) if stats else 0
    dist, idx = km.index.search(x, 1)
    return idx[:, 0].astype(np.int64), km.centroids.copy(), float(dist.mean()), reseeded


def _assign(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest centroid [N], its squared distance [N]) in row chunks."""
    c_sq = (c * c).sum(dim=1)
    labels, dists = [], []
    for start in range(0, x.shape[0], CHUNK):
        xs = x[start : start + CHUNK]
        d = (xs * xs).sum(dim=1, keepdim=True) - 2 * xs @ c.T + c_sq
        best, arg = d.min(dim=1)
        labels.append(arg)
        dists.append(best.clamp_min(0))
    return torch.cat(labels), torch.cat(dists)


def _torch(x: torch.Tensor, init: torch.Tensor, iterations: int, gen: torch.Generator) -> tuple:
    n, d = x.shape
    k = init.shape[0]
    c = init.to(x.device)
    reseeded = 0
    for _ in range(iterations):
        labels, _ = _assign(x, c)
        sums = torch.zeros(k, d, device=x.device, dtype=x.dtype)
        counts = torch.zeros(k, device=x.device, dtype=x.dtype)
        for start in range(0, n, CHUNK):
            onehot = torch.nn.functional.one_hot(labels[start : start + CHUNK], k).to(x.dtype)
            sums += onehot.T @ x[start : start + CHUNK]
            counts += onehot.sum(dim=0)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            c, counts = _split_largest(c, counts, empty, gen)
            reseeded += len(empty)
    labels, dist = _assign(x, c)
    return labels.cpu().numpy().astype(np.int64), c.cpu().numpy(), float(dist.mean()), reseeded


def _split_largest(
    c: torch.Tensor, counts: torch.Tensor, empty: list[int], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-seed each empty cluster by splitting the currently largest one into two centroids
    nudged apart (faiss's rule: c(1 ± ε) with a random sign per coordinate)."""
    c, counts = c.clone(), counts.clone()
    eps = 1.0 / 1024
    for j in empty:
        big = int(torch.argmax(counts))
        sign = (torch.randint(0, 2, (c.shape[1],), generator=gen) * 2 - 1).to(c)
        c[j] = c[big] * (1 + eps * sign)
        c[big] = c[big] * (1 - eps * sign)
        counts[j] = counts[big] / 2
        counts[big] = counts[big] / 2
    return c, counts
