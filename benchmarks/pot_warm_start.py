"""Does POT's own warm start (`ot.emd(..., potentials_init=...)`) speed up the exact
matcher's `pot` path? It was asked for; this measures it before it is used.

    python benchmarks/pot_warm_start.py [--rounds 60]

Training-like sequences of k-to-1 problems: each round takes n reals of a fixed training
set (a random subset: what the data module serves) and k·n generated points near the
data. "cold" solves each round from scratch; "warm" passes the previous duals of the same
reals, kept by training-set index as the matcher keeps its auction prices: the reals'
duals as `beta`, each generated point's smallest cost minus dual as `alpha` (a feasible
pair). Both solve the same problems in the same process, one after the other; the mean
seconds per solve over the rounds after the first third (when most reals have a price)
and the ratio warm / cold are printed. A ratio above 1 means the warm start costs time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ot


def problems(d: int, n: int, k: int, rounds: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if d == 2:  # eight Gaussians of std 0.1 on a circle of radius 2: the default data
        angle = rng.integers(8, size=10_000) * np.pi / 4
        data = 2 * np.c_[np.cos(angle), np.sin(angle)] + 0.1 * rng.standard_normal((10_000, 2))
    else:
        data = rng.random((5000, d))
    for _ in range(rounds):
        ids = rng.permutation(len(data))[:n]
        x = data[rng.integers(len(data), size=k * n)] + 0.05 * rng.standard_normal((k * n, d))
        yield ids, ot.dist(x, data[ids]), len(data)


def solve_all(d: int, n: int, k: int, rounds: int, warm: bool) -> list[float]:
    times, duals, known = [], None, None
    for ids, C, n_data in problems(d, n, k, rounds):
        if duals is None:
            duals, known = np.zeros(n_data), np.zeros(n_data, dtype=bool)
        a, b = np.ones(len(C)), np.full(n, float(k))
        init = None
        if warm and known[ids].mean() >= 0.5:
            beta = np.where(known[ids], duals[ids], duals[ids][known[ids]].mean())
            init = ((C - beta).min(1), beta)
        start = time.perf_counter()
        _, log = ot.emd(a, b, C, numItermax=100_000_000, log=True, potentials_init=init)
        times.append(time.perf_counter() - start)
        assert log["result_code"] == 1, log["warning"]
        duals[ids], known[ids] = log["v"] - log["v"].mean(), True
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    print("| d | n | k | cold s | warm s | warm / cold |\n| --- | --- | --- | --- | --- | --- |")
    for d, n, k in ((2, 256, 1), (2, 1000, 10), (784, 256, 1), (784, 500, 10)):
        rounds = args.rounds if k == 1 else max(args.rounds // 3, 6)
        skip = rounds // 3
        cold = np.mean(solve_all(d, n, k, rounds, warm=False)[skip:])
        warm = np.mean(solve_all(d, n, k, rounds, warm=True)[skip:])
        print(f"| {d} | {n} | {k} | {cold:.4f} | {warm:.4f} | {warm / cold:.2f} |", flush=True)


if __name__ == "__main__":
    main()
