"""The project's exact pairing for code outside the framework: a plan sampler with the
signature of `torchcfm`'s `OTPlanSampler.sample_plan(x0, x1)`.

    from ot_gen.flow.plan import ExactPlanSampler
    x0, x1 = ExactPlanSampler().sample_plan(x0, x1)   # then torchcfm's flow matcher as usual

torchcfm solves each minibatch's plan with POT's `ot.emd` and draws pairs from it; this one
takes the optimal assignment itself (certified by the auction's duality gap, or POT's
network simplex on small batches: `ot_gen.matching.ExactMatcher`), with `k` source
points for each target point when `len(x0) = k·len(x1)`.
"""

from __future__ import annotations

import torch

from ot_gen.errors import check
from ot_gen.matching import ExactMatcher
from ot_gen.matching.costs import SqEuclidean


class ExactPlanSampler:
    def __init__(self, solver: str = "auto", rtol: float = 1e-9):
        self.matcher = ExactMatcher(solver=solver, rtol=rtol, warm_start=False)
        self.cost = SqEuclidean()

    @torch.no_grad()
    def sample_plan(self, x0: torch.Tensor, x1: torch.Tensor, replace: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, x1) reordered into the pairs of the optimal assignment under the squared
        Euclidean cost: x0[i] is paired with x1[i]. `replace` is accepted for torchcfm's
        signature; an assignment draws no pairs, so it changes nothing."""
        check(len(x0) % len(x1) == 0, "x0", tuple(x0.shape),
              f"k·{len(x1)} source points (each target point receives k of them)")
        match = self.matcher(x0, x1, self.cost, each_real=len(x0) // len(x1), diagnostics=False)
        return x0[match.gen_idx], x1[match.real_idx]
