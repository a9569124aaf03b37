"""Selection time against the number of candidates: each strategy on ``N x 512`` features.

Features are a seeded mixture of 50 Gaussian clusters on the unit sphere (ResNet-18's 512-d
pooled features, L2-normalised, are the real input; only their number matters for the cost).
For each N and strategy: the median wall time of ``--repeats`` runs of
``sonossl.select.strategies.select`` at ``--budget``.

Reference, measured in the same run: the float32 GEMM rate of this machine under its current
load (an ``N x 512`` by ``512 x 2048`` product), from which the time of the all-pairs
``N x N`` distance matrix a naive implementation would build is extrapolated (``N^2 x 512``
multiply-adds at that rate; its memory, ``4 N^2`` bytes, is printed too). Each strategy's time
is also given as a multiple of one pass over the features (``N x 512 x 2048`` GEMM), the
cheapest thing any strategy could do.

    python benchmarks/select_scaling.py [--sizes 1000,10000,100000] [--budget 100] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse

import numpy as np

from common import machine, median, timed, write_json
from sonossl.select.strategies import STRATEGIES, select


def features(n: int, dim: int = 512, clusters: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] * 0.5 + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gemm_rate(x: np.ndarray, repeats: int) -> tuple[float, float]:
    """(seconds of one ``N x 512 @ 512 x 2048`` product, multiply-adds per second)."""
    w = x[:2048].T.copy()
    t = median([timed(lambda: x @ w) for _ in range(repeats)])
    return t, x.shape[0] * x.shape[1] * w.shape[1] / t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="numbers of candidates (default 1000,10000,100000)")
    p.add_argument("--budget", type=int, default=100, help="images chosen (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell, median reported (default 3)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="default all")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    rows = []
    print("| N | strategy | median s | x one feature pass | all-pairs matrix: est. s, GiB |")
    print("|---|---|---|---|---|")
    for n in [int(v) for v in a.sizes.split(",")]:
        x = features(n)
        t_pass, rate = gemm_rate(x, a.repeats)
        naive_s, naive_gib = n * n * x.shape[1] / rate, 4 * n * n / 2**30
        for strategy in a.strategies.split(","):
            t = median([timed(lambda: select(x, a.budget, strategy, seed=r)) for r in range(a.repeats)])
            rows.append({"n": n, "strategy": strategy, "median_s": t, "feature_pass_s": t_pass, "gemm_madd_per_s": rate,
                         "all_pairs_est_s": naive_s, "all_pairs_gib": naive_gib})
            print(f"| {n} | {strategy} | {t:.2f} | {t / t_pass:.0f} | {naive_s:.0f} s, {naive_gib:.1f} GiB |", flush=True)
    info = machine()
    print(info)
    write_json(a.json, {"machine": info, "budget": a.budget, "repeats": a.repeats, "rows": rows})


if __name__ == "__main__":
    main()
