"""The exact plan sampler against the minibatch OT plan that torchcfm's OTPlanSampler uses.

    python benchmarks/plan_sampler.py [--sizes 256 1024 4096] [--dims 2 784] [--repeats 3]

torchcfm's `OTPlanSampler(method="exact").sample_plan(x0, x1)` computes the squared
Euclidean cost matrix, solves the plan with POT's `ot.emd` (uniform weights) and draws
`len(x0)` pairs from the plan (with replacement). The baseline here does exactly those
steps with POT (torchcfm itself is not a dependency); `ot_gen.flow.plan.ExactPlanSampler`
returns the optimal assignment itself (`matcher.solver=auto`: scipy below 100,000
entries, the certified auction above). Printed per size and dimension: median seconds per
batch of each, their ratio, and the mean squared distance of the pairs each returns (the
sampled plan's pairs repeat some points and drop others, so its mean differs a little
from the optimum; ours is the optimum). Time it with nothing else running.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ot_gen.flow.plan import ExactPlanSampler  # noqa: E402


def pot_plan_pairs(x0: torch.Tensor, x1: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """torchcfm's exact OTPlanSampler, step by step: cost, ot.emd, pairs drawn from the plan."""
    M = torch.cdist(x0, x1) ** 2
    a, b = ot.unif(len(x0)), ot.unif(len(x1))
    plan = ot.emd(a, b, M.double().numpy(), numItermax=10**7)
    p = plan.flatten() / plan.sum()
    choices = rng.choice(plan.size, p=p, size=len(x0), replace=True)
    i, j = np.divmod(choices, plan.shape[1])
    return x0[i], x1[j]


def timed(fn, repeats: int) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 784])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours = ExactPlanSampler()
    rng = np.random.default_rng(0)
    print("| n | d | torchcfm's path (ot.emd + draw) s | ExactPlanSampler s | ratio | pair cost: plan draw | optimum (ours) |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for d in args.dims:
        for n in args.sizes:
            g = torch.Generator().manual_seed(n + d)
            x0, x1 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 0.5 + 1.0
            ours.sample_plan(x0, x1)  # the auction's first call compiles or loads its numba code
            t_pot, (a0, a1) = timed(lambda: pot_plan_pairs(x0, x1, rng), args.repeats)
            t_ours, (b0, b1) = timed(lambda: ours.sample_plan(x0, x1), args.repeats)
            cost = lambda u, v: float(((u - v) ** 2).sum(1).mean())  # noqa: E731
            print(f"| {n} | {d} | {t_pot:.4f} | {t_ours:.4f} | {t_pot / t_ours:.1f}× | {cost(a0, a1):.4f} | "
                  f"{cost(b0, b1):.4f} |", flush=True)


if __name__ == "__main__":
    main()
