"""Assignment matchers: each real receives exactly `each_real` distinct generated points.

`exact` solves the problem exactly, by one of three solvers that differ only in speed (a
certified auction, POT's network simplex, scipy's Hungarian method); `random` draws a
uniformly random assignment of the same shape, the control that shows what matching buys.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

from ot_gen.errors import SolverError, check, check_choice, check_positive, check_positive_int
from ot_gen.matching.auction import AuctionResult, auction_transport
from ot_gen.matching.base import Matcher
from ot_gen.matching.blocked import RowCosts, blocked_bytes, blocked_transport
from ot_gen.memory import available_bytes, check_fits, gib


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
    """Exact OT on integer marginals: generated points carry mass 1 and each real carries
    `each_real`; when there are more generated points than needed, a zero-cost dummy real
    absorbs the rest. Three solvers, one optimal cost:

    - `auction`: the ε-scaling auction of `ot_gen.matching.auction`, compiled with numba.
      Every solve is certified optimal by its own duality gap (relative gap at most
      `rtol`); one that cannot certify warns and is solved again by POT, so a round never
      uses an uncertified assignment.
    - `pot`: POT's network simplex `ot.emd`, the reference. POT only warns when it stops
      early (`num_itermax`); here that is an error, never a silently wrong plan.
    - `hungarian`: scipy's `linear_sum_assignment`, each real repeated `each_real` times
      as columns (slow for k > 1 on large problems; kept as an independent check).
    - `auto` (default): `auction` when the cost matrix has at least `AUTO_MIN_ENTRIES`
      entries; below that `hungarian` when each real takes one partner, `pot` otherwise.
      On 1000 × 10,000 the auction solved 8-43× faster than `ot.emd` (d = 2 to 3072,
      benchmarks/matching.py, README); at 256 × 256 all take milliseconds, and there
      scipy's solver, which returns the pairs without a dense plan, took 4.1 ms per
      round of the default run against 5.9 ms for `ot.emd` (benchmarks/overhead.py).

    Storage (`storage`): `dense` builds the (m, n) cost matrix and solves on it; `blocks`
    never builds it (`ot_gen.matching.blocked`: rows computed in blocks and kept as
    candidate lists, the same certified optimum; about two passes of the matrix's
    computation, for problems whose matrix does not fit: 60,000 × 120,000 is 58 GB in
    float64); `auto` (default) takes `dense` while the matrix fits in the memory this
    process may still take, `blocks` beyond. Only the auction solves without the matrix.

    Warm start (`warm_start`, auction): the dual price of every real solved in earlier
    rounds, kept by its training-set index (`n_reals` of them, bound from the data; the
    prices travel in the checkpoint), starts the next solve. Prices are kept relative to
    their round's mean (they are defined up to a constant); reals never solved start at
    that mean, the dummy real at its last offset. A round warm-starts when at least half of
    its reals have a price. The `pot` path stays cold: `ot.emd`'s own `potentials_init`
    fed with these prices made the default 2-D solves about 1.5× slower
    (benchmarks/pot_warm_start.py).
    """

    name = "exact"
    SOLVERS = ("auto", "auction", "pot", "hungarian")
    STORAGES = ("auto", "dense", "blocks")
    AUTO_MIN_ENTRIES = 100_000
    DENSE_BYTES = 18.0  # per cost-matrix entry of a dense auction solve: the matrix twice in float64, 16-bit costs

    def __init__(self, solver: str = "auto", num_itermax: int = 100_000_000, rtol: float = 1e-9,
                 warm_start: bool = True, n_reals: int | None = None, storage: str = "auto"):
        super().__init__()
        self.solver = check_choice("solver", solver, self.SOLVERS)
        self.storage = check_choice("storage", storage, self.STORAGES)
        check(storage != "blocks" or solver in ("auto", "auction"), "storage", storage,
              f"dense or auto with solver={solver} (only the auction solves without the cost matrix: "
              "solver=auction or auto)")
        self.num_itermax = check_positive_int("num_itermax", num_itermax)
        self.rtol = check_positive("rtol", rtol)
        check(self.rtol <= 1e-6, "rtol", rtol, "a relative duality gap <= 1e-6 (this solver is exact)")
        check(isinstance(warm_start, bool), "warm_start", warm_start, "true or false")
        self.warm_start = warm_start
        n = 0 if n_reals is None else check_positive_int("n_reals", n_reals)
        # Per-real warm-start state, indexed by training-set index.
        self.register_buffer("prices", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("priced", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("dummy_price", torch.zeros((), dtype=torch.float64))

    def round_bytes(self, m: int, n: int, point_size: int) -> float:
        dense = self.DENSE_BYTES * m * (n + 1)
        if self.storage == "dense" or self.solver not in ("auto", "auction"):
            return dense
        blocked = blocked_bytes(m, n + 1, point_size)
        return blocked if self.storage == "blocks" else min(dense, blocked)

    def _blocked(self, m: int, columns: int) -> bool:
        """Whether this solve goes without the cost matrix: asked for, or (`auto`) the
        matrix would not fit in what the process may still take."""
        if self.storage != "auto" or self.solver not in ("auto", "auction"):
            return self.storage == "blocks"
        return self.DENSE_BYTES * m * columns > available_bytes()

    def _pair(self, x, y, cost, each_real, real_ids):
        n = len(y)
        if self._blocked(len(x), n + (len(x) > each_real * n)):
            return self._pair_blocked(x, y, cost, each_real, real_ids)
        C = self.cost_matrix(x.double(), y.double(), cost)
        solver = self.solver
        if solver == "auto":
            small = C.numel() < self.AUTO_MIN_ENTRIES
            solver = "auction" if not small else "hungarian" if each_real == 1 else "pot"
        if solver == "hungarian":
            return self._to_pairs(self._hungarian(C, each_real), n, each_real, x.device)
        if solver == "pot":
            return self._to_pairs(self._emd(C, each_real), n, each_real, x.device)
        init = self._lookup(real_ids, n + (len(x) > each_real * n)) if self.warm_start else None
        _, b, Cd = integer_marginals(C, each_real)
        result = auction_transport(Cd.cpu().numpy(), b.long().cpu().numpy(), init_prices=init, rtol=self.rtol)
        stats = self._auction_stats(result, len(x), init)
        partner = result.assignment
        if not result.certified:
            warnings.warn(
                f"matcher exact: the auction could not certify optimality (relative gap "
                f"{stats['duality_gap']:.2e} > rtol {self.rtol:g}); solving this round with ot.emd"
            )
            partner = self._emd(C, each_real)
        else:
            self._remember(real_ids, result.prices)
        return (*self._to_pairs(partner, n, each_real, x.device), stats)

    def _pair_blocked(self, x, y, cost, each_real, real_ids):
        """The certified auction without the cost matrix (`ot_gen.matching.blocked`)."""
        m, n = len(x), len(y)
        spare = m - each_real * n
        cap = np.append(np.full(n, each_real), [spare] if spare else [])
        check_fits("matcher.storage", self.storage, blocked_bytes(m, len(cap), x[0].numel()),
                   f"a blocked exact solve of {m:,} generated points against {n:,} reals",
                   "lower mode.ratio or the round's reals")
        # Every round starts from its own coarse prices (`blocked.coarse_prices`), not from the
        # last round's: those, optimal for other generated points, sent most lists stale
        # (9000 × 18,000 × 32 on Fashion-MNIST: 2.4 passes against 1.2; 20,000 × 40,000 × 32:
        # over 100 s against 30 s). The prices are still kept by index, for dense rounds.
        result = blocked_transport(RowCosts(x, y, cost, dummy=spare > 0), cap, rtol=self.rtol)
        stats = self._auction_stats(result, m, None)
        stats.update(blocked=1.0, rows_per_point=result.rows_computed / m, read_batches=float(result.read_batches))
        if not result.certified:
            warnings.warn(
                f"matcher exact: the blocked auction could not certify optimality within its phases (relative gap "
                f"{stats['duality_gap']:.2e} > rtol {self.rtol:g}); this round uses its assignment, which is optimal "
                f"to that gap (ot.emd, the dense fallback, needs the {gib(8.0 * m * len(cap))} cost matrix)"
            )
        else:
            self._remember(real_ids, result.prices)
        return (*self._to_pairs(result.assignment, n, each_real, x.device), stats)

    @staticmethod
    def _auction_stats(result: AuctionResult, m: int, init) -> dict[str, float]:
        return {
            "certified": float(result.certified),
            "duality_gap": result.gap / max(abs(result.primal), 1e-300),
            "auction_phases": float(result.phases),
            "auction_bids_per_point": result.bids / m,
            "warm_started": float(init is not None),
        }

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
    def _hungarian(C: torch.Tensor, each_real: int) -> np.ndarray:
        """scipy's Hungarian method on the reals repeated `each_real` times; generated
        points left without a column go to the dummy (column n)."""
        n = C.shape[1]
        C = C.cpu().numpy()
        rows, cols = linear_sum_assignment(np.repeat(C, each_real, axis=1) if each_real > 1 else C)
        partner = np.full(len(C), n)
        partner[rows] = cols // each_real
        return partner

    @staticmethod
    def _to_pairs(partner: np.ndarray, n: int, each_real: int, device):
        """(gen_idx, real_idx) from every generated point's column; column n is the dummy."""
        rows = np.flatnonzero(partner < n)
        counts = np.bincount(partner[rows], minlength=n)
        if len(rows) != each_real * n or (counts != each_real).any():
            raise SolverError("matcher exact: the solver returned a plan that is not a k-to-1 assignment")
        return _to_index(rows, partner[rows], device)

    # -- warm-start prices, by training-set index ------------------------------------------
    def _lookup(self, ids: torch.Tensor | None, columns: int) -> np.ndarray | None:
        """Starting prices for the reals `ids` (plus the dummy column when columns >
        len(ids)), or None when fewer than half of them have a price."""
        if ids is None or len(self.prices) == 0:
            return None
        ids = ids.to(self.prices.device)
        priced = self.priced[ids]
        if priced.double().mean() < 0.5:
            return None
        prices = self.prices[ids].cpu().numpy()  # 0, the round's mean, for reals never priced
        return np.append(prices, [float(self.dummy_price)] * (columns - len(ids)))

    def _remember(self, ids: torch.Tensor | None, prices: np.ndarray) -> None:
        if not (self.training and self.warm_start) or ids is None or len(self.prices) == 0:
            return
        n = len(ids)
        real = torch.as_tensor(prices[:n], dtype=torch.float64, device=self.prices.device)
        mean = real.mean()
        if len(prices) > n:
            self.dummy_price.fill_(float(prices[n]) - mean.item())
        ids = ids.to(self.prices.device)
        self.prices[ids] = real - mean
        self.priced[ids] = True

    def extra_repr(self) -> str:
        return f"{self.name}, solver={self.solver}, storage={self.storage}"


class RandomMatcher(Matcher):
    """A control without OT: a uniformly random assignment of the same shape (each real
    receives `each_real` distinct generated points), drawn from the global torch RNG so a
    seeded run is reproducible."""

    name = "random"

    def _pair(self, x, y, cost, each_real, real_ids):
        n = len(y)
        gen = torch.randperm(len(x), device=x.device)[: each_real * n]
        return gen, torch.arange(each_real * n, device=x.device) % n
