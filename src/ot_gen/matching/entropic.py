"""Entropic OT (Sinkhorn, log domain, by POT) rounded to a proper assignment."""

from __future__ import annotations

import logging
import warnings

import ot
import torch

from ot_gen.errors import SolverError, all_finite, check_choice, check_positive, check_positive_int
from ot_gen.matching.assignment import integer_marginals
from ot_gen.matching.base import Matcher

log = logging.getLogger(__name__)


def round_to_assignment(score: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Turn a plan into an assignment without replacement: the partner (column) of every
    row, such that column j receives exactly capacity[j] rows (capacity sums to the rows).

    Rounds of proposals: every unassigned row proposes to its best-scoring column that has
    room; each column keeps its best proposals up to its room. A column either takes all
    its proposers or fills up, so this ends after at most n rounds (a handful in
    practice). `score` is the log-plan, so rows whose plan underflows still rank columns.
    """
    m, n = score.shape
    if int(capacity.sum()) != m:
        raise ValueError(f"capacities sum to {int(capacity.sum())}, not to the {m} rows")
    partner = torch.full((m,), -1, dtype=torch.long, device=score.device)
    room = capacity.clone()
    free = torch.arange(m, device=score.device)
    while len(free):
        best = score[free].masked_fill(room == 0, float("-inf")).max(1)
        # Group the proposals by column, best first, and keep each column's first `room`.
        order = torch.argsort(best.values, descending=True, stable=True)
        order = order[torch.argsort(best.indices[order], stable=True)]
        col = best.indices[order]
        counts = torch.bincount(col, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(col), device=score.device) - starts[col]
        keep = rank < room[col]
        partner[free[order[keep]]] = col[keep]
        room -= torch.bincount(col[keep], minlength=n)
        free = free[partner[free] < 0]
    return partner


class IterativeSolve:
    """What an iterative matcher (`sinkhorn`, `unbalanced`) does when its solve stops at
    `num_itermax` first: an error (`on_not_converged=error`), or one warning per run and
    the plan as it stands (`warn`), its figure `<name>_converged` then 0."""

    name: str
    reg: float
    num_itermax: int
    on_not_converged: str
    _warned: bool

    def _not_converged(self, used: str) -> None:
        message = (f"matcher {self.name}: no convergence in matcher.num_itermax={self.num_itermax} "
                   f"iterations at matcher.reg={self.reg}")
        if self.on_not_converged == "error":
            raise SolverError(message + "; raise either")
        if not self._warned:
            log.warning("%s; using %s (logged as train/%s_converged=0)", message, used, self.name)
            self._warned = True


class SinkhornMatcher(IterativeSolve, Matcher):
    """Entropic OT between the generated points (mass 1 each) and the reals (mass
    `each_real` each, plus a zero-cost dummy real for spare generated points), solved by
    POT's log-domain Sinkhorn on the tensors' own device (GPU when the data is there).

    `reg` is in cost units (it divides the cost matrix): small reg approaches the exact
    assignment and needs more iterations. The plan is rounded to an assignment without
    replacement (`round_to_assignment`), so every real receives exactly `each_real`
    distinct partners. `stop_thr` bounds the violation of the reals' marginal (masses
    normalised to 1). A solve that stops at `num_itermax` first is logged
    (`sinkhorn_converged` = 0) and its rounded plan used (`on_not_converged=warn`), or is
    an error (`error`).
    """

    name = "sinkhorn"

    def __init__(self, reg: float = 0.1, num_itermax: int = 1000, stop_thr: float = 1e-4,
                 on_not_converged: str = "warn"):
        super().__init__()
        self.reg = check_positive("reg", reg)
        self.num_itermax = check_positive_int("num_itermax", num_itermax)
        self.stop_thr = check_positive("stop_thr", stop_thr)
        self.on_not_converged = check_choice("on_not_converged", on_not_converged, ["warn", "error"])
        self._warned = False

    def _pair(self, x, y, cost, each_real, real_ids):
        n = len(y)
        a, b, C = integer_marginals(self.cost_matrix(x.double(), y.double(), cost), each_real)
        capacity = b.round().long()
        total = a.sum()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, info = ot.sinkhorn(a / total, b / total, C, self.reg, method="sinkhorn_log",
                                  numItermax=self.num_itermax, stopThr=self.stop_thr, log=True)
        converged = not any("converge" in str(w.message) for w in caught)
        if not all_finite(info["log_u"]) or not all_finite(info["log_v"]):
            raise SolverError(f"matcher sinkhorn: the potentials overflowed; raise matcher.reg (now {self.reg})")
        if not converged:
            self._not_converged("the rounded plan")
        log_plan = info["log_u"][:, None] - C / self.reg + info["log_v"][None, :]
        partner = round_to_assignment(log_plan, capacity)
        rows = torch.nonzero(partner < n).squeeze(1)
        # The entropic plan's own cost per matched pair, next to the rounded assignment's.
        plan_cost = (log_plan[:, :n].exp() * C[:, :n]).sum() * total / (each_real * n)
        extra = {"sinkhorn_converged": float(converged), "sinkhorn_iters": float(info["niter"] + 1),
                 "sinkhorn_plan_cost": plan_cost.item()}
        return rows, partner[rows], extra

    def extra_repr(self) -> str:
        return f"{self.name}, reg={self.reg}"
