"""Assignment matchers: each real receives exactly `each_real` distinct generated points.

`exact` (POT's network simplex) and `hungarian` (scipy) solve the problem exactly and
differ only in speed; `random` draws a uniformly random assignment of the same shape, the
control that shows what matching buys.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

from ot_gen.errors import SolverError, check_positive_int
from ot_gen.matching.base import Matcher


def integer_marginals(C: torch.Tensor, each_real: int):
    """Marginals (a, b) of the k-to-1 problem and the matrix they go with: mass 1 per
    generated point, `each_real` per real. When there are more generated points than
    needed, a zero-cost dummy real (an extra column) takes the spare ones."""
    m, n = C.shape
    a, b = C.new_ones(m), C.new_full((n,), float(each_real))
    spare = m - each_real * n
    if spare:
        C = torch.cat([C, C.new_zeros(m, 1)], 1)
        b = torch.cat([b, b.new_full((1,), float(spare))])
    return a, b, C


def _to_index(rows: np.ndarray, cols: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(rows, dtype=torch.long, device=device),
        torch.as_tensor(cols, dtype=torch.long, device=device),
    )


class ExactMatcher(Matcher):
    """Exact OT with POT's `ot.emd` on integer marginals.

    Generated points carry mass 1 and each real carries `each_real`; when there are more
    generated points than needed, a zero-cost dummy real absorbs the rest. Integer
    marginals make the optimal plan a clean 0/1 matrix, so each row's argmax is its
    partner. POT only warns when it stops early (`numItermax`); here that is an error,
    never a silently wrong plan.
    """

    name = "exact"

    def __init__(self, num_itermax: int = 100_000_000):
        super().__init__()
        self.num_itermax = check_positive_int("num_itermax", num_itermax)

    def _pair(self, x, y, cost, each_real):
        n = len(y)
        a, b, C = (t.cpu().numpy() for t in integer_marginals(self.cost_matrix(x.double(), y.double(), cost), each_real))
        # POT's network simplex reports negative costs (e.g. -PSNR) as infeasible; a constant
        # shift of every entry leaves the optimal plan unchanged (the total mass is fixed).
        C = C - min(C.min(), 0.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # POT reports non-optimality only as a warning
            plan, log = ot.emd(a, b, C, numItermax=self.num_itermax, log=True)
        caught = [w for w in caught if issubclass(w.category, UserWarning)]
        if log["result_code"] != 1 or caught:
            reason = log["warning"] or "; ".join(str(w.message) for w in caught)
            raise SolverError(
                f"matcher exact: ot.emd did not reach an optimal plan ({reason}); "
                f"raise matcher.num_itermax (now {self.num_itermax})"
            )
        partner = plan.argmax(1)
        rows = np.flatnonzero(partner < n)
        counts = np.bincount(partner[rows], minlength=n)
        if len(rows) != each_real * n or (counts != each_real).any():
            raise SolverError("matcher exact: ot.emd returned a plan that is not a k-to-1 assignment")
        return _to_index(rows, partner[rows], x.device)


class HungarianMatcher(Matcher):
    """scipy's `linear_sum_assignment`; each real is repeated `each_real` times as columns."""

    name = "hungarian"

    def _pair(self, x, y, cost, each_real):
        C = self.cost_matrix(x.double(), y.double(), cost).cpu().numpy()
        if each_real > 1:
            C = np.repeat(C, each_real, axis=1)
        rows, cols = linear_sum_assignment(C)
        return _to_index(rows, cols // each_real, x.device)


class RandomMatcher(Matcher):
    """A control without OT: a uniformly random assignment of the same shape (each real
    receives `each_real` distinct generated points), drawn from the global torch RNG so a
    seeded run is reproducible."""

    name = "random"

    def _pair(self, x, y, cost, each_real):
        n = len(y)
        gen = torch.randperm(len(x), device=x.device)[: each_real * n]
        return gen, torch.arange(each_real * n, device=x.device) % n
