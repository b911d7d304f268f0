"""Assignment matchers: each real receives exactly `each_real` distinct generated points.

`exact` (a certified auction, or POT's network simplex) and `hungarian` (scipy) solve the
problem exactly and differ only in speed; `random` draws a uniformly random assignment of the same shape, the
control that shows what matching buys.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

from ot_gen.errors import SolverError, check, check_choice, check_positive, check_positive_int
from ot_gen.matching.auction import auction_transport
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
    """Exact OT on integer marginals, by one of two solvers with the same optimal cost:

    - `fast`: the ε-scaling auction of `ot_gen.matching.auction`, compiled with
      numba. Every solve is certified optimal by its own duality gap (relative gap at most
      `rtol`); one that cannot certify warns and is solved again by POT, so a round never
      uses an uncertified assignment. With `warm_start`, the dual prices of every real
      seen in earlier rounds (recognised by a fingerprint of its values) start the next
      solve; they travel in the checkpoint.
    - `pot`: POT's network simplex `ot.emd`, the reference. POT only warns when it stops
      early (`num_itermax`); here that is an error, never a silently wrong plan.
    - `auto` (default): `fast` when the cost matrix has at least `AUTO_MIN_ENTRIES`
      entries, `pot` below. On 1000 × 10,000 the auction solved 8-43× faster than
      `ot.emd` (d = 2 to 3072, benchmarks/matching.py, README); at 256 × 256 both take
      milliseconds, and the default 2-D run (256 × 256 per step) was no faster with it.

    Generated points carry mass 1 and each real carries `each_real`; when there are more
    generated points than needed, a zero-cost dummy real absorbs the rest.
    """

    name = "exact"
    SOLVERS = ("auto", "fast", "pot")
    AUTO_MIN_ENTRIES = 100_000

    def __init__(self, solver: str = "auto", num_itermax: int = 100_000_000, rtol: float = 1e-9,
                 warm_start: bool = True):
        super().__init__()
        self.solver = check_choice("solver", solver, self.SOLVERS)
        self.num_itermax = check_positive_int("num_itermax", num_itermax)
        self.rtol = check_positive("rtol", rtol)
        check(self.rtol <= 1e-6, "rtol", rtol, "a relative duality gap <= 1e-6 (this solver is exact)")
        check(isinstance(warm_start, bool), "warm_start", warm_start, "true or false")
        self.warm_start = warm_start
        self.prices = RealPrices()

    def _pair(self, x, y, cost, each_real):
        n = len(y)
        C = self.cost_matrix(x.double(), y.double(), cost)
        solver = self.solver
        if solver == "auto":
            solver = "fast" if C.numel() >= self.AUTO_MIN_ENTRIES else "pot"
        if solver == "pot":
            return self._to_pairs(self._emd(C, each_real), n, each_real, x.device)
        _, b, Cd = integer_marginals(C, each_real)
        cap = b.long().cpu().numpy()
        init = self.prices.lookup(y, len(cap)) if self.warm_start else None
        result = auction_transport(Cd.cpu().numpy(), cap, init_prices=init, rtol=self.rtol)
        stats = {
            "certified": float(result.certified),
            "duality_gap": result.gap / max(abs(result.primal), 1e-300),
            "auction_phases": float(result.phases),
            "auction_bids_per_point": result.bids / len(x),
            "warm_started": float(init is not None),
        }
        partner = result.assignment
        if not result.certified:
            warnings.warn(
                f"matcher exact: the auction could not certify optimality (relative gap "
                f"{stats['duality_gap']:.2e} > rtol {self.rtol:g}); solving this round with ot.emd"
            )
            partner = self._emd(C, each_real)
        elif self.training and self.warm_start:
            self.prices.remember(y, result.prices)
        return (*self._to_pairs(partner, n, each_real, x.device), stats)

    def _emd(self, C: torch.Tensor, each_real: int) -> np.ndarray:
        """POT's network simplex; returns the partner (column) of every generated point."""
        a, b, C = (t.cpu().numpy() for t in integer_marginals(C, each_real))
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
        return plan.argmax(1)

    @staticmethod
    def _to_pairs(partner: np.ndarray, n: int, each_real: int, device):
        """(gen_idx, real_idx) from every generated point's column; column n is the dummy."""
        rows = np.flatnonzero(partner < n)
        counts = np.bincount(partner[rows], minlength=n)
        if len(rows) != each_real * n or (counts != each_real).any():
            raise SolverError("matcher exact: the solver returned a plan that is not a k-to-1 assignment")
        return _to_index(rows, partner[rows], device)

    def get_extra_state(self):
        return self.prices.state()

    def set_extra_state(self, state) -> None:
        self.prices.load(state)


class RealPrices:
    """The auction's dual price of every real seen so far, for warm starts.

    A real is recognised by a fingerprint of its values (their dot product with a fixed
    random vector, in float64), so it does not matter which pool or position it comes
    in. Prices are stored relative to their round's mean (prices are defined up to a
    constant); reals never seen start at that mean, the dummy real at its last offset.
    """

    def __init__(self):
        self.fingerprints = torch.empty(0, dtype=torch.float64)
        self.values = torch.empty(0, dtype=torch.float64)
        self.dummy = 0.0

    @staticmethod
    def _fingerprint(y: torch.Tensor) -> torch.Tensor:
        flat = y.detach().flatten(1).double().cpu()
        direction = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return flat @ direction

    def lookup(self, y: torch.Tensor, columns: int) -> np.ndarray | None:
        """Starting prices for the reals y (plus the dummy column when columns > len(y)),
        or None when fewer than half of them were seen before."""
        if len(self.fingerprints) == 0:
            return None
        fp = self._fingerprint(y)
        pos = torch.searchsorted(self.fingerprints, fp).clamp(max=len(self.fingerprints) - 1)
        seen = self.fingerprints[pos] == fp
        if seen.double().mean() < 0.5:
            return None
        prices = torch.where(seen, self.values[pos], torch.zeros_like(fp)).numpy()
        return np.append(prices, [self.dummy] * (columns - len(y)))

    def remember(self, y: torch.Tensor, prices: np.ndarray) -> None:
        n = len(y)
        real = torch.as_tensor(prices[:n], dtype=torch.float64)
        mean = real.mean()
        if len(prices) > n:
            self.dummy = float(prices[n] - mean)
        fp = self._fingerprint(y)
        keep = ~torch.isin(self.fingerprints, fp)
        fingerprints = torch.cat([self.fingerprints[keep], fp])
        values = torch.cat([self.values[keep], real - mean])
        order = fingerprints.argsort()
        self.fingerprints, self.values = fingerprints[order], values[order]

    def state(self) -> dict:
        return {"fingerprints": self.fingerprints, "values": self.values, "dummy": self.dummy}

    def load(self, state: dict) -> None:
        self.fingerprints, self.values, self.dummy = state["fingerprints"], state["values"], state["dummy"]


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
