"""A fast exact solver for the k-to-1 transport problem: ε-scaling auction (Bertsekas).

The problem: m persons (generated points), objects j = 0..N-1 (reals, plus the zero-cost
dummy that takes spare generated points) with integer capacities cap_j, sum(cap) = m;
every person gets exactly one object, every object exactly cap_j persons, and the total
cost sum_i C[i, obj(i)] is minimal.

Each object is cap_j *slots* kept as a binary min-heap of slot prices. A person bids for
the object with the lowest C[i, j] + price_j (price_j = its cheapest slot), takes that
slot and raises its price by the margin over the person's second-best choice plus ε,
displacing the slot's previous holder (Gauss-Seidel: one bid at a time). Every phase
ends with a complete assignment in which each person is within ε of its best choice
(ε-complementary slackness), and ε shrinks by `eps_factor` between phases.

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
from numba import njit

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
def _sift_down(price, owner, person_slot, start, size, pos):
    """Restore the min-heap of one object's slots [start, start+size) from `pos` down."""
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        if left + 1 < size and price[start + left + 1] < price[start + left]:
            child = left + 1
        a, b = start + pos, start + child
        if price[a] <= price[b]:
            return
        price[a], price[b] = price[b], price[a]
        owner[a], owner[b] = owner[b], owner[a]
        if owner[a] >= 0:
            person_slot[owner[a]] = a
        if owner[b] >= 0:
            person_slot[owner[b]] = b
        pos = child


@njit(cache=True)
def _heapify(price, owner, person_slot, start, size):
    for pos in range(size // 2 - 1, -1, -1):
        _sift_down(price, owner, person_slot, start, size, pos)


@njit(cache=True)
def _phase(C, slot_start, cap, slot_price, slot_owner, person_slot, pmin, eps, queue):
    """One auction phase from an empty assignment; returns the number of bids."""
    m, N = C.shape
    for j in range(N):  # every slot of an object starts at the object's price
        for s in range(slot_start[j], slot_start[j] + cap[j]):
            slot_owner[s] = -1
            slot_price[s] = pmin[j]
    for i in range(m):
        person_slot[i] = -1
        queue[i] = i
    head, count, bids = 0, m, 0
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
        start, size = slot_start[jbest], cap[jbest]
        raise_by = second - best if second < np.inf else 0.0
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


@njit(cache=True)
def _certificate(C, slot_start, cap, slot_owner, pmin, assignment):
    """(primal cost, dual value) of the current assignment and prices; fills `assignment`."""
    m, N = C.shape
    for j in range(N):
        for s in range(slot_start[j], slot_start[j] + cap[j]):
            assignment[slot_owner[s]] = j
    primal, dual = 0.0, 0.0
    for i in range(m):
        row = C[i]
        primal += row[assignment[i]]
        best = np.inf
        for j in range(N):
            v = row[j] + pmin[j]
            if v < best:
                best = v
        dual += best
    for j in range(N):
        dual -= cap[j] * pmin[j]
    return primal, dual


@njit(cache=True)
def _init_slots(slot_start, cap, slot_price, init_prices):
    for j in range(len(cap)):
        for s in range(slot_start[j], slot_start[j] + cap[j]):
            slot_price[s] = init_prices[j]


def auction_transport(
    C: np.ndarray,
    cap: np.ndarray,
    init_prices: np.ndarray | None = None,
    eps_start: float | None = None,
    rtol: float = 1e-9,
) -> AuctionResult:
    """Solve min sum_i C[i, obj(i)] with object j taken by exactly cap[j] persons.

    C: (m, N) finite costs; cap: (N,) positive integers summing to m. `init_prices` (for
    example the previous round's `prices`) warm-starts the auction; `eps_start` is then
    best set small (the default for a warm start is 1/1000 of the cost range). The result
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
        eps_start = spread / (4.0 if init_prices is None else 1000.0)
    # Rounding allowance: sums of m terms of size ~|C| carry ~m·1e-16·|C| of error.
    rounding = 1e-13 * m * max(abs(lo), abs(hi), 1e-300)
    eps_floor = max(spread, abs(hi), 1e-300) * 1e-15
    slot_price = np.empty(m)
    slot_owner = np.full(m, -1, dtype=np.int64)
    person_slot = np.full(m, -1, dtype=np.int64)
    queue = np.empty(m, dtype=np.int64)
    assignment = np.empty(m, dtype=np.int64)
    _init_slots(slot_start, cap, slot_price, prices)
    pmin = prices.copy()
    eps, phases, bids = max(eps_start, eps_floor), 0, 0
    primal = dual = np.nan
    certified = False
    while phases < MAX_PHASES:
        bids += _phase(C, slot_start, cap, slot_price, slot_owner, person_slot, pmin, eps, queue)
        phases += 1
        primal, dual = _certificate(C, slot_start, cap, slot_owner, pmin, assignment)
        if primal - dual <= rtol * abs(primal) + rounding:
            certified = True
            break
        if eps <= eps_floor:
            break
        eps = max(eps / EPS_FACTOR, eps_floor)
    return AuctionResult(assignment, pmin - pmin.min(), float(primal), float(dual), certified, phases, bids)
