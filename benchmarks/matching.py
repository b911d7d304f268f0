"""Exact matching: the certified auction (`matcher.solver=auction`) against POT's `ot.emd`.

    python benchmarks/matching.py [--data-dir ../shared/data] [--repeats 3] [--quick]

Problems: n reals × k·n generated points, n in {256, 1000, 2000}, k in {1, 10},
d in {2, 784, 3072}, squared Euclidean cost; data `random` (Gaussian reals, generated
points from a shifted, wider Gaussian), `eight_gaussians` (the default 2-D toy against a
second sample of it: what a well-trained generator gives; d = 2 only) and `fashion`
(Fashion-MNIST reals at 28×28 in [-1, 1] against the outputs of a generator trained
briefly here, d = 784 only). `--data` picks some of them.

For each problem: median seconds over `--repeats` solves of ot.emd (numItermax 1e9, so it
converges), scipy's linear_sum_assignment (k = 1 only), the auction cold and warm. "Warm"
starts from the prices of a solve on an INDEPENDENT draw of generated points against the
same reals: what the next training round sees (fresh latents, a generator that moved
little). `rel_diff` is (auction cost − emd cost) / emd cost; `peak_MB` is the largest
numpy allocation during one solve (tracemalloc: POT's C++ work arrays are not counted).

Then the share of an oversampled-mode round spent in matching on Fashion-MNIST (pool
1000, k 10, d 784), from two short training runs, `matcher.solver=pot` and `auction`.
Ratios (emd time / auction time, measured in this same run) are printed last.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ot_gen.matching.auction import auction_transport  # noqa: E402
from ot_gen.run.sample import load_module  # noqa: E402

FASHION_RUN = [  # the OT-GAN setup with the exact matcher (pool 1000, k 10) at Fashion-MNIST's native 28×28 (d = 784)
    "experiment=otgan_fashion_exact", "data.n_train=1000", "data.image_size=null", "network=conv28", "logger=csv",
    "trainer.enable_progress_bar=false", "++trainer.log_every_n_steps=1", "mode.val_every_rounds=1000",
    # no validation inside fit: its pictures and the Fréchet classifier (seconds, once)
    # would count as training time in s_per_round and understate matching's share
    "++trainer.num_sanity_val_steps=0",
]


def timed(fn, repeats: int):
    """(median seconds, peak numpy MB of one call, last result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(times), peak, result


def solve_all(x, x_next, y, k: int, repeats: int) -> dict:
    n = len(y)
    C = ot.dist(x, y)  # squared Euclidean, float64
    C_next = ot.dist(x_next, y)
    cap = np.full(n, k)
    a, b = np.ones(len(x)), cap.astype(np.float64)
    row = {}
    row["emd_s"], row["emd_MB"], plan = timed(lambda: ot.emd(a, b, C, numItermax=10**9), repeats)
    emd_cost = float((plan * C).sum())
    if k == 1:
        row["lsa_s"], row["lsa_MB"], _ = timed(lambda: linear_sum_assignment(C), repeats)
    row["cold_s"], row["cold_MB"], cold = timed(lambda: auction_transport(C, cap), repeats)
    previous = auction_transport(C_next, cap)  # the "last round": other generated points
    row["warm_s"], _, warm = timed(lambda: auction_transport(C, cap, init_prices=previous.prices), repeats)
    for name, result in (("cold", cold), ("warm", warm)):
        assert (np.bincount(result.assignment, minlength=n) == cap).all()
        row[f"{name}_certified"] = result.certified
        row[f"{name}_phases"] = result.phases
    row["rel_diff"] = (cold.primal - emd_cost) / emd_cost
    row["rel_diff_warm"] = (warm.primal - emd_cost) / emd_cost
    row["certified_gap"] = cold.gap / cold.primal
    return row


def random_points(n, k, d, rng):
    y = rng.standard_normal((n, d))
    return (rng.standard_normal((k * n, d)) * 1.2 + 0.3 for _ in range(2)), y


def train_fashion(data_dir: Path, out: Path, solver: str, steps: int) -> dict:
    """A short oversampled run; returns its metrics plus the mean solve seconds per round."""
    cmd = [sys.executable, str(ROOT / "train.py"), *FASHION_RUN, f"matcher.solver={solver}",
           f"trainer.max_steps={steps}", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    with open(next(out.glob("csv/**/metrics.csv"))) as f:
        solve = [float(r["train/solve_s"]) for r in csv.DictReader(f) if r.get("train/solve_s")]
    metrics["mean_solve_s"] = statistics.mean(solve)
    return metrics


def toy_points(n: int, k: int, seed: int):
    from ot_gen.data.toy import sample

    draws = [sample("eight_gaussians", k * n, seed, stream, noise=0.1).astype(np.float64) for stream in (1, 2)]
    return draws, sample("eight_gaussians", n, seed, 0, noise=0.1).astype(np.float64)


def fashion_points(data_dir: Path, ckpt: Path, n: int, k: int, seed: int):
    from ot_gen.data import ImageDataModule

    dm = ImageDataModule("fashion_mnist", root=str(data_dir / "fashion-mnist"), n_train=n, n_val=10, seed=seed)
    dm.setup()
    module, _ = load_module(ckpt)
    torch.manual_seed(seed)
    draws = [module.sample(k * n).flatten(1).double().numpy() for _ in range(2)]
    return draws, dm.train_set.flatten(1).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="n=1000, d=784 only")
    parser.add_argument("--train-steps", type=int, default=100, help="optimizer steps of each Fashion run (20 per round)")
    parser.add_argument("--data", nargs="+", default=["random", "eight_gaussians", "fashion"],
                        choices=["random", "eight_gaussians", "fashion"])
    args = parser.parse_args()
    ns, ds = ((1000,), (784,)) if args.quick else ((256, 1000, 2000), (2, 784, 3072))
    auction_transport(np.random.rand(40, 4), np.full(4, 10))  # numba compiles (or loads its cache) here

    rows = []
    rng = np.random.default_rng(0)
    for n in ns if "random" in args.data else ():
        for k in (1, 10):
            for d in ds:
                (x, x_next), y = random_points(n, k, d, rng)
                rows.append({"data": "random", "n": n, "k": k, "d": d, **solve_all(x, x_next, y, k, args.repeats)})
                print(_line(rows[-1]), flush=True)
    for n in ns if "eight_gaussians" in args.data else ():
        for k in (1, 10):
            (x, x_next), y = toy_points(n, k, seed=n + k)
            rows.append({"data": "8gauss", "n": n, "k": k, "d": 2, **solve_all(x, x_next, y, k, args.repeats)})
            print(_line(rows[-1]), flush=True)

    rounds = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "fashion" not in args.data:
            _report(rows, rounds)
            return
        for solver in ("pot", "auction"):
            rounds[solver] = train_fashion(args.data_dir, Path(tmp) / solver, solver, args.train_steps)
        ckpt = Path(tmp) / "pot" / "checkpoints" / "last.ckpt"
        for n in ns:
            for k in (1, 10):
                (x, x_next), y = fashion_points(args.data_dir, ckpt, n, k, seed=n + k)
                rows.append({"data": "fashion", "n": n, "k": k, "d": 784, **solve_all(x, x_next, y, k, args.repeats)})
                print(_line(rows[-1]), flush=True)

    _report(rows, rounds)


def _report(rows: list[dict], rounds: dict) -> None:
    print("\nShare of an oversampled round spent matching (Fashion-MNIST 28×28, pool 1000, k 10):")
    for solver, m in rounds.items():
        print(f"  solver={solver}: {m['mean_solve_s']:.3f} s of {m['s_per_round']:.3f} s per round "
              f"= {m['mean_solve_s'] / m['s_per_round']:.1%}")
    print("\nRatios (emd seconds / auction seconds; lsa seconds / auction seconds for k=1):")
    for r in rows:
        lsa = f"  lsa/cold {r['lsa_s'] / r['cold_s']:6.1f}×" if "lsa_s" in r else ""
        print(f"  {r['data']:7s} n={r['n']:4d} k={r['k']:2d} d={r['d']:4d}:  emd/cold {r['emd_s'] / r['cold_s']:6.1f}×"
              f"  emd/warm {r['emd_s'] / r['warm_s']:6.1f}×{lsa}")
    target = [r for r in rows if (r["n"], r["k"], r["d"]) == (1000, 10, 784)]
    for r in target:
        print(f"TARGET {r['data']} 1000×10000 d=784: emd {r['emd_s']:.3f} s, auction cold {r['cold_s']:.3f} s "
              f"-> {r['emd_s'] / r['cold_s']:.1f}× (target >= 10×)")


def _line(r: dict) -> str:
    lsa = f" lsa {r['lsa_s']:7.3f}s" if "lsa_s" in r else " " * 13
    return (f"{r['data']:7s} n={r['n']:4d} k={r['k']:2d} d={r['d']:4d} | emd {r['emd_s']:7.3f}s{lsa} | "
            f"cold {r['cold_s']:7.3f}s ({r['cold_phases']} ph) warm {r['warm_s']:7.3f}s ({r['warm_phases']} ph) | "
            f"rel_diff {r['rel_diff']:+.1e}/{r['rel_diff_warm']:+.1e} certified {r['cold_certified']}/{r['warm_certified']} "
            f"| peak MB emd {r['emd_MB']:.0f} auction {r['cold_MB']:.0f}")


if __name__ == "__main__":
    main()
