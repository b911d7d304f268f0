"""Exact assignment matchers: POT's network simplex and scipy's Hungarian method.

Both solve the same problem exactly: minimise the summed cost over assignments where
each real receives `each_real` distinct generated points. They differ only in speed.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

from ot_gen.costs import Cost
from ot_gen.errors import SolverError, check_positive_int
from ot_gen.matching.base import Matcher


def _cost_matrix(x, y, cost: Cost) -> np.ndarray:
    return cost.pairwise(x.double(), y.double()).cpu().numpy()


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
        m, n = len(x), len(y)
        C = _cost_matrix(x, y, cost)
        a = np.ones(m)
        b = np.full(n, float(each_real))
        spare = m - each_real * n
        if spare:
            C = np.hstack([C, np.zeros((m, 1))])
            b = np.append(b, float(spare))
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
        C = _cost_matrix(x, y, cost)
        if each_real > 1:
            C = np.repeat(C, each_real, axis=1)
        rows, cols = linear_sum_assignment(C)
        return _to_index(rows, cols // each_real, x.device)
