"""A fast exact solver for the k-to-1 transport problem: ε-scaling auction (Bertsekas).

The problem: m persons (generated points), objects j = 0..N-1 (reals, plus the zero-cost
dummy that takes spare generated points) with integer capacities cap_j, sum(cap) = m;
every person gets exactly one object, every object exactly cap_j persons, and the total
cost sum_i C[i, obj(i)] is minimal.

Each object is cap_j *slots* kept as a binary min-heap of slot prices. A person bids for
the object with the lowest C[i, j] + price_j (price_j = its cheapest slot), takes that
slot and raises its price by the margin over the person's best OTHER object plus ε,
displacing the slot's previous holder (Gauss-Seidel: one bid at a time). Every phase
ends with a complete assignment in which each person is within ε of its best choice
(ε-complementary slackness). ε shrinks by `EPS_FACTOR` between phases; a new phase resets
every slot to its object's price and re-bids only the persons no longer within ε.

Optimality is never assumed: after every phase the solver computes the dual value
D = sum_i min_j (C[i, j] + p_j) - sum_j cap_j p_j of the prices p (feasible for any p),
and the primal cost P of the assignment. D <= optimum <= P always, so a gap P - D within
tolerance *certifies* that the assignment's cost is optimal to that tolerance. The solve
stops at the first certified phase; one that cannot certify says so (`certified=False`).

The heavy loops are compiled with numba (cached on disk after the first call).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

EPS_FACTOR = 8.0  # ε shrinks by this much per phase
MAX_PHASES = 60


@dataclass
class AuctionResult:
    assignment: np.ndarray  # (m,) object of every person
    prices: np.ndarray  # (N,) final dual prices (cheapest slot of each object)
    primal: float  # sum_i C[i, assignment[i]]
    dual: float  # a lower bound on the optimum, from the prices
    certified: bool  # primal - dual <= tolerance
    phases: int
    bids: int

    @property
    def gap(self) -> float:
        return self.primal - self.dual


@njit(cache=True)
def _before(price, owner, a, b):
    """Heap order of two slots: cheaper first; at equal price a free slot first, so a
    bidder never displaces a holder while a free slot of the same price is left."""
    return price[a] < price[b] or (price[a] == price[b] and owner[a] < 0 <= owner[b])


@njit(cache=True)
def _sift_down(price, owner, person_slot, start, size, pos):
    """Restore the min-heap of one object's slots [start, start+size) from `pos` down."""
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        if left + 1 < size and _before(price, owner, start + left + 1, start + left):
            child = left + 1
        a, b = start + pos, start + child
        if not _before(price, owner, b, a):
            return
        price[a], price[b] = price[b], price[a]
        owner[a], owner[b] = owner[b], owner[a]
        if owner[a] >= 0:
            person_slot[owner[a]] = a
        if owner[b] >= 0:
            person_slot[owner[b]] = b
        pos = child


@njit(cache=True)
def _bid_until_assigned(C, slot_start, cap, slot_price, slot_owner, person_slot, pmin, eps, queue, count):
    """Gauss-Seidel bidding by the `count` unassigned persons in `queue` (and whoever they
    displace) until every person holds a slot; returns the number of bids."""
    m, N = C.shape
    head, bids = 0, 0
    while count > 0:
        i = queue[head]
        head = head + 1 if head + 1 < m else 0
        count -= 1
        row = C[i]
        best, second, jbest = np.inf, np.inf, -1
        for j in range(N):
            v = row[j] + pmin[j]
            if v < second:
                if v < best:
                    second, best, jbest = best, v, j
                else:
                    second = v
        # The margin over the best OTHER object: a bid raises the price past every slot of
        # its own object, so slots of one object never fight in ε steps.
        raise_by = second - best if second < np.inf else 0.0
        start, size = slot_start[jbest], cap[jbest]
        old = slot_owner[start]
        if old >= 0:
            person_slot[old] = -1
            tail = head + count
            queue[tail if tail < m else tail - m] = old
            count += 1
        slot_owner[start] = i
        person_slot[i] = start
        slot_price[start] = slot_price[start] + raise_by + eps
        _sift_down(slot_price, slot_owner, person_slot, start, size, 0)
        pmin[jbest] = slot_price[start]
        bids += 1
    return bids


@njit(cache=True, parallel=True)
def _best_values(C, pmin, best):
    """best[i] = min_j C[i, j] + pmin[j]: each person's best value at the current prices."""
    m, N = C.shape
    for i in prange(m):
        row = C[i]
        b = np.inf
        for j in range(N):
            v = row[j] + pmin[j]
            if v < b:
                b = v
        best[i] = b


@njit(cache=True)
def _certificate(C, slot_start, cap, slot_owner, pmin, best, assignment):
    """(primal cost, dual value) of the complete assignment held in the slots; fills
    `assignment`. The dual uses the prices pmin and best[i] = min_j C[i, j] + pmin[j]."""
    m, N = C.shape
    for j in range(N):
        for s in range(slot_start[j], slot_start[j] + cap[j]):
            assignment[slot_owner[s]] = j
    primal, dual = 0.0, 0.0
    for i in range(m):
        primal += C[i, assignment[i]]
        dual += best[i]
    for j in range(N):
        dual -= cap[j] * pmin[j]
    return primal, dual


@njit(cache=True)
def _restart(C, slot_start, cap, slot_price, slot_owner, person_slot, pmin, best, assignment, eps, queue):
    """Start a phase at the new ε: every slot at its object's price, persons still within
    ε of their best value keep their object, the others (returned in `queue`) bid again.
    Kept persons take their object's LAST slots, so the free ones come first: with all
    prices equal that order is a valid heap."""
    m, N = C.shape
    count = 0
    for i in range(m):
        j = assignment[i]
        person_slot[i] = -1
        if j < 0 or C[i, j] + pmin[j] - best[i] > eps:
            assignment[i] = -1
            queue[count] = i
            count += 1
    back = np.empty(N, dtype=np.int64)
    for j in range(N):
        back[j] = slot_start[j] + cap[j] - 1
        for s in range(slot_start[j], slot_start[j] + cap[j]):
            slot_owner[s] = -1
            slot_price[s] = pmin[j]
    for i in range(m):
        j = assignment[i]
        if j >= 0:
            slot_owner[back[j]] = i
            person_slot[i] = back[j]
            back[j] -= 1
    return count


def auction_transport(
    C: np.ndarray,
    cap: np.ndarray,
    init_prices: np.ndarray | None = None,
    eps_start: float | None = None,
    rtol: float = 1e-9,
) -> AuctionResult:
    """Solve min sum_i C[i, obj(i)] with object j taken by exactly cap[j] persons.

    C: (m, N) finite costs; cap: (N,) positive integers summing to m. `init_prices` (for
    example the previous round's `prices`) warm-starts the auction, from ε = 1/64 of the
    cost range by default (cold: 1/4); smaller helps when the prices are close to the
    new problem's and costs much when they are not. The result
    is certified when the duality gap is at most rtol·|primal| (plus a rounding allowance).
    """
    C = np.ascontiguousarray(C, dtype=np.float64)
    cap = np.ascontiguousarray(cap, dtype=np.int64)
    m, N = C.shape
    if cap.shape != (N,) or (cap < 1).any() or cap.sum() != m:
        raise ValueError(f"capacities must be {N} positive integers summing to {m}")
    if not np.isfinite(C).all():
        raise ValueError("the cost matrix contains NaN or Inf")
    lo, hi = float(C.min()), float(C.max())
    spread = hi - lo
    slot_start = np.concatenate([[0], np.cumsum(cap)[:-1]]).astype(np.int64)
    prices = np.zeros(N) if init_prices is None else np.array(init_prices, dtype=np.float64)
    if prices.shape != (N,) or not np.isfinite(prices).all():
        raise ValueError(f"init_prices must be {N} finite numbers")
    prices -= prices.min()
    if eps_start is None:
        eps_start = spread / (4.0 if init_prices is None else 64.0)
    # Rounding allowance: sums of m terms of size ~|C| carry ~m·1e-16·|C| of error.
    rounding = 1e-13 * m * max(abs(lo), abs(hi), 1e-300)
    eps_floor = max(spread, abs(hi), 1e-300) * 1e-15
    slot_price = np.empty(m)
    slot_owner = np.full(m, -1, dtype=np.int64)
    person_slot = np.full(m, -1, dtype=np.int64)
    queue = np.empty(m, dtype=np.int64)
    assignment = np.full(m, -1, dtype=np.int64)
    best = np.full(m, np.inf)
    pmin = prices.copy()
    eps, phases, bids = max(eps_start, eps_floor), 0, 0
    primal = dual = np.nan
    certified = False
    while phases < MAX_PHASES:
        count = _restart(C, slot_start, cap, slot_price, slot_owner, person_slot, pmin, best, assignment, eps, queue)
        bids += _bid_until_assigned(C, slot_start, cap, slot_price, slot_owner, person_slot, pmin, eps, queue, count)
        phases += 1
        _best_values(C, pmin, best)
        primal, dual = _certificate(C, slot_start, cap, slot_owner, pmin, best, assignment)
        if primal - dual <= rtol * abs(primal) + rounding:
            certified = True
            break
        if eps <= eps_floor:
            break
        eps = max(eps / EPS_FACTOR, eps_floor)
    return AuctionResult(assignment, pmin - pmin.min(), float(primal), float(dual), certified, phases, bids)
