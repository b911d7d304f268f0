"""Matchers that may leave mass untransported: partial OT (exact, a fixed fraction of the
mass; solved by POT) and unbalanced OT (entropic, KL-relaxed marginals; POT's problem,
solved here in the log domain, see `unbalanced_sinkhorn_log`).

The exact matchers make every real take exactly k partners, so an outlier, or a mode the
generator has not reached yet, pulls generated points across the space. These two let the
solve leave the dearest mass out: generated points without a partner get no gradient this
round, and reals without one pull nobody. Both report how much mass each side left
untransported (`untransported_generated`, `untransported_real`, fractions of each side's
mass), next to the partner counts every matcher reports (`dropped`, `generated_used`).
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch

from ot_gen.errors import SolverError, all_finite, check, check_choice, check_positive, check_positive_int
from ot_gen.matching.base import Matcher
from ot_gen.matching.entropic import IterativeSolve


def untransported(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """The share of each side's mass the plan leaves out (mass sent beyond a point's own,
    which a KL relaxation allows, does not count as transported twice)."""
    sent = torch.minimum(plan.sum(1), a).sum() / a.sum()
    received = torch.minimum(plan.sum(0), b).sum() / b.sum()
    return {"untransported_generated": 1.0 - sent.item(), "untransported_real": 1.0 - received.item()}


class PartialMatcher(Matcher):
    """Exact partial OT (`ot.partial.partial_wasserstein`): generated points carry mass 1,
    reals `each_real` each, and only the fraction `mass` of the smaller side's total is
    transported, the cheapest such plan. The plan of integer masses is integral, so it is
    a set of pairs: each real receives at most `each_real` distinct partners, each
    generated point at most one. `mass=1` with as many generated points as partners
    needed is the exact matcher's problem (same optimal cost). Dense solve on the CPU:
    meant for rounds up to a few thousand points a side.
    """

    name = "partial"
    bijective = False  # reals may keep fewer than each_real partners

    def __init__(self, mass: float = 0.9, num_itermax: int = 10_000_000):
        super().__init__()
        self.mass = check_positive("mass", mass)
        check(self.mass <= 1, "mass", mass, "a fraction in (0, 1]: the share of the mass transported")
        self.num_itermax = check_positive_int("num_itermax", num_itermax)

    def _pair(self, x, y, cost, each_real, real_ids):
        m, n = len(x), len(y)
        C = self.cost_matrix(x.double(), y.double(), cost).cpu()
        a, b = torch.ones(m, dtype=torch.float64), torch.full((n,), float(each_real), dtype=torch.float64)
        units = max(1, int(round(self.mass * min(m, each_real * n))))  # integer: an integral plan
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = ot.partial.partial_wasserstein(a.numpy(), b.numpy(), C.numpy(), m=float(units),
                                                  numItermax=self.num_itermax)
        if any("numItermax" in str(w.message) or "max_iter" in str(w.message) for w in caught):
            raise SolverError(f"matcher partial: POT stopped at matcher.num_itermax={self.num_itermax} before "
                              "the optimum; raise it")
        plan = torch.from_numpy(np.asarray(plan))
        gen, real = torch.nonzero(plan > 0.5, as_tuple=True)
        if not torch.allclose(plan[gen, real], torch.ones(len(gen), dtype=plan.dtype), atol=1e-6) \
                or len(gen) != units:
            raise SolverError(f"matcher partial: POT returned a fractional plan ({len(gen)} pairs for {units} "
                              "units of mass)")
        return gen.to(x.device), real.to(x.device), untransported(plan, a, b)

    def extra_repr(self) -> str:
        return f"{self.name}, mass={self.mass}"


def unbalanced_sinkhorn_log(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reg: float, reg_m: float,
                            num_itermax: int, stop_thr: float) -> tuple[torch.Tensor, int, bool]:
    """The KL-unbalanced entropic plan that `ot.unbalanced.sinkhorn_unbalanced` defines
    (entropy relative to a⊗b, both marginals relaxed by reg_m·KL), by Sinkhorn's updates
    in the log domain (Chizat, Peyré, Schmitzer & Vialard 2018):

        f = −λ·ε·logsumexp_j(log b_j + (g_j − C_ij)/ε),  λ = reg_m / (reg_m + ε)

    and the same for g, each pair of updates followed by the translation of (f, g) that
    maximises the dual (translation-invariant Sinkhorn: without it, the total mass
    converges at the rate λ, 10^5 iterations at reg_m/reg = 10^4), with ε decreasing from
    the largest cost to `reg` by halves (ε-scaling). POT 0.9.7's solvers all
    work with exp(−C/reg) and stop with "Numerical errors at iteration 0" as soon as one
    real's costs all exceed about 700·reg, which an outlier, the very case this matcher is
    for, does. Returns (plan, iterations, converged): converged when, at `reg`, neither
    potential moves by more than `stop_thr`·reg in an iteration (so no entry of the plan
    changes by more than a factor e^stop_thr)."""
    log_a, log_b = a.log(), b.log()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    eps = max(reg, float(C.max()))
    iters, moved = 0, float("inf")
    while iters < num_itermax:
        lam = reg_m / (reg_m + eps)
        f_new = -lam * eps * torch.logsumexp(log_b[None, :] + (g[None, :] - C) / eps, dim=1)
        g_new = -lam * eps * torch.logsumexp(log_a[:, None] + (f_new[:, None] - C) / eps, dim=0)
        # The translation (f + t, g − t) that maximises the dual: the slow mode of
        # unbalanced Sinkhorn, removed in closed form (Séjourné, Vialard & Peyré 2022).
        t = reg_m / 2 * (torch.logsumexp(log_a - f_new / reg_m, 0) - torch.logsumexp(log_b - g_new / reg_m, 0))
        f_new, g_new = f_new + t, g_new - t
        moved = max((f_new - f).abs().max().item(), (g_new - g).abs().max().item())
        f, g, iters = f_new, g_new, iters + 1
        if eps > reg and (moved <= stop_thr * eps or iters % 50 == 0):
            eps, moved = max(reg, eps / 2), float("inf")  # next scale, from these potentials
        elif eps == reg and moved <= stop_thr * reg:
            break
    # The plan of the potentials' own scale (eps > reg only when it stopped early).
    plan = (log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - C) / eps).exp()
    return plan, iters, eps == reg and moved <= stop_thr * reg


class UnbalancedMatcher(IterativeSolve, Matcher):
    """Unbalanced entropic OT, the problem of `ot.unbalanced.sinkhorn_unbalanced`:
    generated points of mass 1/m, reals of `each_real`/m, the marginals relaxed by KL
    divergences of weight `reg_m`, the plan smoothed by entropy of weight `reg`; both in
    cost units (a real whose cheapest partners cost well above `reg_m` keeps little
    mass). No dummy point is needed for spare generated points: unbalanced OT takes
    unequal totals as they are. Solved in the log domain on the tensors' own device
    (`unbalanced_sinkhorn_log`: POT's solvers fail on outliers).

    Pairs: each generated point whose row of the plan carries at least `keep` times the
    mass of the best-served generated point goes to its likeliest real (the row's largest
    entry); the others get no partner this round. Relative to the best-served point, so
    that a round whose points are all far from the data (a fresh generator, where
    reg_m is small against every cost) still trains on its best; `untransported_*` then
    say how much of the mass the plan left. As reg → 0 and reg_m → ∞ this is the exact
    assignment.
    """

    name = "unbalanced"
    bijective = False

    def __init__(self, reg: float = 0.05, reg_m: float = 1.0, keep: float = 0.5, num_itermax: int = 2000,
                 stop_thr: float = 1e-3, on_not_converged: str = "warn"):
        super().__init__()
        self.reg = check_positive("reg", reg)
        self.reg_m = check_positive("reg_m", reg_m)
        self.keep = check_positive("keep", keep)
        check(self.keep <= 1, "keep", keep, "a fraction in (0, 1]: of the best-served point's mass")
        self.num_itermax = check_positive_int("num_itermax", num_itermax)
        self.stop_thr = check_positive("stop_thr", stop_thr)
        self.on_not_converged = check_choice("on_not_converged", on_not_converged, ["warn", "error"])
        self._warned = False

    def _pair(self, x, y, cost, each_real, real_ids):
        m, n = len(x), len(y)
        C = self.cost_matrix(x.double(), y.double(), cost)
        a, b = C.new_full((m,), 1.0 / m), C.new_full((n,), each_real / m)
        plan, iters, converged = unbalanced_sinkhorn_log(C, a, b, self.reg, self.reg_m, self.num_itermax,
                                                          self.stop_thr)
        if not all_finite(plan):
            raise SolverError(f"matcher unbalanced: the plan overflowed; raise matcher.reg (now {self.reg})")
        if not converged:
            self._not_converged("the plan as it stands")
        sent = plan.sum(1)
        gen = torch.nonzero(sent >= self.keep * sent.max()).squeeze(1)
        real = plan[gen].argmax(1)
        return gen, real, {**untransported(plan, a, b), "unbalanced_converged": float(converged),
                           "unbalanced_iters": float(iters)}

    def extra_repr(self) -> str:
        return f"{self.name}, reg={self.reg}, reg_m={self.reg_m}, keep={self.keep}"
