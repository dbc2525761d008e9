"""Benchmark: DeepCluster's per-epoch k-means (paper 001 §3-4) — medssl.kmeans against
scikit-learn's KMeans on the same features, the same K and iterations.

Features: N × D ℓ2-normalised float32 vectors (a mixture of K directions with noise, so the
clustering has one answer for both implementations to agree on); default N = 85,000 (paper 000's
unlabeled archive), D = 512 (the VGG16-BN/ResNet-18 feature width), K = 104 (8 × 13 classes), 20
iterations.
Both sides use every point and one initialisation. Agreement is the NMI between the two
assignments (≥ 0.95 expected: same objective, different initial centroids). Prints JSON:

    python benchmarks/kmeans.py [--n 85000] [--dim 512] [--k 104] [--iterations 20]
                                [--backend faiss|torch] [--device cpu|cuda] [--threads 2]

Targets: ≤ 10 s on 2 CPU cores (faiss), ≤ 1 s on a GPU (--backend torch --device cuda);
"ratio" = scikit-learn seconds / medssl seconds (> 1: medssl is faster).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from medssl.kmeans import kmeans
from medssl.metrics.clustering import nmi


def features(n: int, dim: int, true_k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ℓ2-normalised mixture features [n, dim] and their true component."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(true_k, dim)).astype(np.float32)
    truth = rng.integers(0, true_k, n)
    x = centres[truth] + 0.8 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=85_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=104)
    parser.add_argument("--true-k", type=int, default=0, help="mixture components; 0: k")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--backend", choices=["faiss", "torch"], default="faiss")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sklearn", action="store_true", help="skip the reference")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        import faiss

        faiss.omp_set_num_threads(args.threads)
    x, truth = features(args.n, args.dim, args.true_k or args.k, args.seed)
    data: np.ndarray | torch.Tensor = x
    if args.backend == "torch":
        data = torch.from_numpy(x).to(args.device)
        kmeans(data[: args.k * 10], args.k, iterations=1, backend="torch")  # warm-up (CUDA init)
    result = kmeans(data, args.k, iterations=args.iterations, seed=args.seed, backend=args.backend)
    out = {
        "benchmark": "kmeans",
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "iterations": args.iterations,
        "backend": args.backend,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "medssl_seconds": round(result.seconds, 3),
        "medssl_objective": round(result.objective, 6),
        "medssl_empty_clusters": result.empty,
        "medssl_nmi_vs_components": round(nmi(truth, result.labels), 4),
        "target_seconds": 1.0 if args.device.startswith("cuda") else 10.0,
    }
    if not args.no_sklearn:
        from sklearn.cluster import KMeans

        start = time.perf_counter()
        ref = KMeans(
            args.k,
            init="k-means++",
            n_init=1,
            max_iter=args.iterations,
            tol=0.0,
            algorithm="lloyd",
            random_state=args.seed,
        ).fit(x)
        seconds = time.perf_counter() - start
        out.update(
            sklearn_seconds=round(seconds, 3),
            sklearn_objective=round(float(ref.inertia_) / args.n, 6),
            ratio=round(seconds / result.seconds, 2),
            nmi_agreement=round(nmi(ref.labels_, result.labels), 4),
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
