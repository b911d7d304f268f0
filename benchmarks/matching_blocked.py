"""Exact matching without the cost matrix (`matcher.storage=blocks`) against the dense solve and
against the floor of any certified solve on a CPU: one full blocked evaluation of the costs.

    python benchmarks/matching_blocked.py [--data-dir ../shared/data] [--sizes 9000 30000 60000] [--dims 784 32]

Problems: n reals × 2n generated points (k = 2), squared Euclidean cost. Reals: the first n
Fashion-MNIST training images in [-1, 1] (d = 784), or their first 32 principal components
(d = 32: a stand-in for an autoencoder's codes). Generated points: a stand-in for a
generator's output, each a training image blended with another (weight up to 0.5) plus
Gaussian noise of std 0.2, clipped to [-1, 1] (projected the same way for d = 32).

For each problem, each in a fresh process (its peak resident set is the problem's own):
- `floor`: seconds of one full evaluation of the cost matrix in blocks of rows, each block
  reduced to its row minima (nothing kept): what every certified solve must at least compute;
- `blocked`: seconds of the blocked solve (cold: no starting prices, so the solve finds its
  own on a sixteenth of the problem), its passes over the matrix (`rows_per_point`, the
  starting prices' share included), whether it certified, and its peak resident set;
- `warm` (with `--warm`): a second round as training runs it, new generated points (another
  seed) against the same reals, started from the first round's prices;
- `dense` (only where the matrix fits, n = 9000): the matcher's dense path, matrix then auction;
  the relative difference of the two optimal costs and the time ratio blocked / dense.
Ratios printed last: blocked / floor and blocked / dense.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ot_gen.matching.auction import auction_transport  # noqa: E402
from ot_gen.matching.blocked import RowCosts, blocked_transport  # noqa: E402
from ot_gen.matching.costs import SqEuclidean  # noqa: E402


def fashion(data_dir: Path) -> torch.Tensor:
    with gzip.open(data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    return torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)


def problem(data_dir: Path, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(generated, reals); the reals do not depend on the seed."""
    images = fashion(data_dir)
    g = torch.Generator().manual_seed(seed)
    a, b = (images[torch.randint(len(images), (2 * n,), generator=g)] for _ in range(2))
    w = torch.rand(2 * n, 1, generator=g) * 0.5
    x = ((1 - w) * a + w * b + 0.2 * torch.randn(2 * n, 784, generator=g)).clamp(-1, 1)
    y = images[:n]
    if d != 784:
        mean = images.mean(0)
        _, _, v = torch.pca_lowrank(images - mean, q=d, center=False, niter=4, )
        x, y = (x - mean) @ v, (y - mean) @ v
    return x, y


def floor_seconds(x: torch.Tensor, y: torch.Tensor) -> float:
    costs = RowCosts(x, y, SqEuclidean())
    start = time.perf_counter()
    for i in range(0, len(x), costs.rows_per_block):
        costs.block(torch.arange(i, min(i + costs.rows_per_block, len(x)))).amin(1)
    return time.perf_counter() - start


def run_one(args: tuple) -> dict:
    data_dir, n, d, with_dense, warm = args
    torch.manual_seed(0)
    x, y = problem(Path(data_dir), n, d)
    cap = np.full(n, 2)
    row = {"n": n, "m": 2 * n, "d": d, "floor_s": floor_seconds(x, y)}
    start = time.perf_counter()
    result = blocked_transport(RowCosts(x, y, SqEuclidean()), cap)
    row.update(blocked_s=time.perf_counter() - start, certified=result.certified, phases=result.phases,
               rows_per_point=result.rows_computed / len(x), read_batches=result.read_batches,
               cost=result.primal, gap=result.gap / abs(result.primal),
               blocked_peak_GB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    if warm:
        x2, _ = problem(Path(data_dir), n, d, seed=1)
        start = time.perf_counter()
        again = blocked_transport(RowCosts(x2, y, SqEuclidean()), cap, init_prices=result.prices)
        row.update(warm_s=time.perf_counter() - start, warm_certified=again.certified,
                   warm_rows_per_point=again.rows_computed / len(x2))
        del x2, again
    if with_dense:
        start = time.perf_counter()
        C = SqEuclidean().pairwise(x.double(), y.double()).numpy()
        dense = auction_transport(C, cap)
        row.update(dense_s=time.perf_counter() - start, dense_certified=dense.certified,
                   rel_diff=(result.primal - dense.primal) / abs(dense.primal))
    return row


def measure(data_dir: Path, n: int, d: int, with_dense: bool, warm: bool) -> dict:
    # A fresh process per problem: its peak resident set is this problem's alone.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_one, ((str(data_dir), n, d, with_dense, warm),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[9000, 30000, 60000])
    parser.add_argument("--dims", type=int, nargs="+", default=[784, 32])
    parser.add_argument("--warm", action="store_true", help="also a second round from the first's prices")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    auction_transport(np.random.rand(40, 4), np.full(4, 10))  # numba compiles (or loads its cache) here
    rows = []
    for d in args.dims:
        for n in args.sizes:
            rows.append(measure(args.data_dir, n, d, with_dense=n <= 9000, warm=args.warm))
            print(_line(rows[-1]), flush=True)
    print("\nRatios:")
    for r in rows:
        dense = f"  blocked/dense {r['blocked_s'] / r['dense_s']:.2f}× (costs differ by {r['rel_diff']:+.1e})" \
            if "dense_s" in r else ""
        warm = f"  warm/floor {r['warm_s'] / r['floor_s']:.2f}×" if "warm_s" in r else ""
        print(f"  {r['n']:6d} × {r['m']:6d} × {r['d']:3d}: blocked/floor {r['blocked_s'] / r['floor_s']:.2f}×{warm}{dense}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _line(r: dict) -> str:
    dense = f" | dense {r['dense_s']:7.1f}s certified {r['dense_certified']}" if "dense_s" in r else ""
    if "warm_s" in r:
        dense += (f" | warm {r['warm_s']:7.1f}s certified {r['warm_certified']} "
                  f"passes {r['warm_rows_per_point']:.2f}")
    return (f"{r['n']:6d} × {r['m']:6d} × {r['d']:3d} | floor {r['floor_s']:7.1f}s | blocked {r['blocked_s']:7.1f}s "
            f"certified {r['certified']} gap {r['gap']:.1e} passes {r['rows_per_point']:.2f} "
            f"({r['read_batches']} read batches) peak {r['blocked_peak_GB']:.2f} GB{dense}")


if __name__ == "__main__":
    main()
