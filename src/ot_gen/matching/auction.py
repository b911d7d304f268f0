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

A bid reads a whole row of C, and for large problems that read from memory is what
costs, so the phases run in two stages:

- **coarse** (ε of at least `COARSE_MIN_EPS` quantisation steps): the costs rounded to
  16 bits, (C - min) / step with step = range / 65535, and integer prices in steps. A
  row is 4× smaller than in float64 and scanned with vectorised integer minima; the row
  of the bidder after next is prefetched meanwhile. Rounding moves a cost by at most
  half a step (a quarter of the smallest coarse ε), and this stage only provides
  starting prices: exactness rests on the fine stage and its certificate.
- **fine** (the rest, on the exact float64 costs): each person keeps a *candidate list*,
  the up to `LIST_SIZE` objects nearest its best value, and a bound below which no
  other object's value lies (values only rise: prices never fall). A bid scans its list;
  only when the list's best rises above the bound is the whole row read again.

Optimality is never assumed: after every fine phase the solver computes the dual value
D = sum_i min_j (C[i, j] + p_j) - sum_j cap_j p_j of the prices p (feasible for any p),
and the primal cost P of the assignment. D <= optimum <= P always, so a gap P - D within
tolerance *certifies* that the assignment's cost is optimal to that tolerance. Each
phase's D uses the lists' bounds (a lower bound on D, so still a valid certificate); the
one that stops the solve is recomputed from the whole matrix. The solve stops at the
first certified phase; one that cannot certify says so (`certified=False`).

The heavy loops are compiled with numba (cached on disk after the first call). They
release the GIL, so solves in several threads run at once (`threads_can_solve`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

EPS_FACTOR = 8.0  # ε shrinks by this much per phase
MAX_PHASES = 60
COARSE_LEVELS = 65535  # the coarse stage's costs are 16-bit integers
COARSE_MIN_EPS = 2  # the coarse stage runs while ε is at least this many steps
LIST_SIZE = 64  # candidates per person in the fine stage


def threads_can_solve() -> bool:
    """Whether solves may run in several Python threads at once: the compiled loops hold
    no GIL, and numba's threading layer (for their parallel parts) must take concurrent
    launches, which OpenMP and TBB do and `workqueue` does not (it aborts the process).
    False until a solve has chosen the layer."""
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel region has run yet
        return False


@dataclass
class AuctionResult:
    assignment: np.ndarray  # (m,) object of every person
    prices: np.ndarray  # (N,) final dual prices (cheapest slot of each object)
    primal: float  # sum_i C[i, assignment[i]]
    dual: float  # a lower bound on the optimum, from the prices
    certified: bool  # primal - dual <= tolerance
    phases: int  # all phases, coarse ones included
    bids: int
    coarse_phases: int = 0  # phases bid on the 16-bit costs
    row_reads: int = 0  # fine-stage bids that read a whole row (their candidate list ran out)

    @property
    def gap(self) -> float:
        return self.primal - self.dual


@intrinsic
def _prefetch(typingctx, row, index):
    """Ask the CPU to start loading the cache line that holds row[index] (a hint: no effect
    on results). numba has no prefetch of its own; this emits LLVM's."""

    def codegen(context, builder, sig, args):
        rowty = sig.args[0]
        array = context.make_array(rowty)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, rowty, array, [args[1]])
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(pointer, byte_ptr), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return types.void(row, index), codegen


# ---- the slots of one object: a min-heap of prices ------------------------------------


@njit(cache=True, nogil=True)
def _before(price, owner, a, b):
    """Heap order of two slots: cheaper first; at equal price a free slot first, so a
    bidder never displaces a holder while a free slot of the same price is left."""
    return price[a] < price[b] or (price[a] == price[b] and owner[a] < 0 <= owner[b])


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _bid(i, j, raise_by, slot_start, cap, slot_price, slot_owner, person_slot, pmin, queue, head, count):
    """Person i takes object j's cheapest slot and raises its price by `raise_by`; the
    displaced holder, if any, joins the back of the ring `queue` (`count` persons waiting
    from `head`). Returns the new count."""
    start = slot_start[j]
    old = slot_owner[start]
    slot_owner[start] = i
    person_slot[i] = start
    slot_price[start] = slot_price[start] + raise_by
    _sift_down(slot_price, slot_owner, person_slot, start, cap[j], 0)
    pmin[j] = slot_price[start]
    if old < 0:
        return count
    person_slot[old] = -1
    tail = head + count
    queue[tail if tail < len(queue) else tail - len(queue)] = old
    return count + 1


@njit(cache=True, nogil=True)
def _held(M, assignment, held):
    """held[i] = M[i, assignment[i]], the cost of every assigned person's object."""
    for i in range(M.shape[0]):
        if assignment[i] >= 0:
            held[i] = M[i, assignment[i]]


@njit(cache=True, nogil=True)
def _restart(held, slot_start, cap, slot_price, slot_owner, person_slot, pmin, best, assignment, eps, queue):
    """Start a phase at the new ε: every slot at its object's price, persons still within
    ε of their best value (best[i], or a lower bound of it) keep their object (of cost
    held[i]), the others (returned in `queue`) bid again. Kept persons take their object's
    LAST slots, so the free ones come first: with all prices equal that order is a valid heap."""
    m, N = len(assignment), len(cap)
    count = 0
    for i in range(m):
        j = assignment[i]
        person_slot[i] = -1
        if j < 0 or held[i] + pmin[j] - best[i] > eps:
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


@njit(cache=True, nogil=True)
def _collect(slot_start, cap, slot_owner, assignment):
    """assignment[i] = the object whose slot person i holds (every slot is held)."""
    for j in range(len(cap)):
        for s in range(slot_start[j], slot_start[j] + cap[j]):
            assignment[slot_owner[s]] = j


@njit(cache=True, parallel=True, nogil=True)
def _range(C):
    """(min, max, number of NaN or infinite entries) of C, in one pass."""
    m, N = C.shape
    lo, hi, bad = np.empty(m), np.empty(m), np.empty(m, dtype=np.int64)
    for i in prange(m):
        a, b, n = np.inf, -np.inf, 0
        for j in range(N):
            v = C[i, j]
            a, b = min(a, v), max(b, v)
            n += not np.isfinite(v)
        lo[i], hi[i], bad[i] = a, b, n
    return lo.min(), hi.max(), bad.sum()


# ---- coarse stage: 16-bit costs, integer prices -------------------------------------


@njit(cache=True, nogil=True)
def _quantize(C, lo, step, Q):
    m, N = C.shape
    for i in range(m):  # one thread: as fast, as it waits on memory (parallel page faults are slower)
        for j in range(N):
            Q[i, j] = np.uint16(np.rint((C[i, j] - lo) / step))


@njit(cache=True, nogil=True)
def _row_min(row, price):
    """min_j row[j] + price[j]: a plain reduction (LLVM vectorises it on integers)."""
    best = row[0] + price[0]
    for j in range(1, row.shape[0]):
        best = min(best, row[j] + price[j])
    return best


@njit(cache=True, parallel=True, nogil=True)
def _best_values(M, price, best):
    """best[i] = min_j M[i, j] + price[j] for every row: C with float prices, or Q with
    integer ones."""
    for i in prange(M.shape[0]):
        best[i] = _row_min(M[i], price)


@njit(cache=True, nogil=True)
def _coarse_scan(row, price):
    """(best value, second value, best object) of one row of Q at integer prices, the
    second value being that of the best OTHER object. Each pass is a plain integer
    reduction, which LLVM vectorises."""
    N = row.shape[0]
    big = np.int64(1) << 62
    best = _row_min(row, price)
    second, ties, jbest = big, 0, N
    for j in range(N):
        v = np.int64(row[j]) + price[j]
        second = min(second, v if v > best else big)
        ties += v == best
        jbest = min(jbest, j if v == best else N)
    if ties > 1:
        second = best
    elif second == big:  # a single object
        second = best
    return best, second, jbest


@njit(cache=True, nogil=True)
def _prefetch_row(Q, i):
    row = Q[i]
    for j in range(0, row.shape[0], 32):  # 32 uint16 = one 64-byte cache line
        _prefetch(row, j)


@njit(cache=True, nogil=True)
def _coarse_bids(Q, slot_start, cap, slot_price, slot_owner, person_slot, pmin, eps, queue, count):
    """Gauss-Seidel bidding on Q by the `count` persons in `queue` (and whoever they
    displace) until every person holds a slot; returns the number of bids."""
    m = Q.shape[0]
    head, bids = 0, 0
    while count > 0:
        i = queue[head]
        head = head + 1 if head + 1 < m else 0
        count -= 1
        if count > 1:  # the bidder after next: its row arrives while two rows are scanned
            _prefetch_row(Q, queue[head + 1 if head + 1 < m else head + 1 - m])
        best, second, jbest = _coarse_scan(Q[i], pmin)
        count = _bid(i, jbest, second - best + eps, slot_start, cap, slot_price, slot_owner, person_slot, pmin,
                     queue, head, count)
        bids += 1
    return bids


# ---- fine stage: exact costs, candidate lists ---------------------------------------


@njit(cache=True, nogil=True)
def _rebuild(C, i, pmin, cidx, ccost, ccount, bound, width):
    """Read row i whole and list the objects within width[i] of its best value (at most
    LIST_SIZE: the width shrinks until they fit); bound[i] = the smallest value left out.
    Values only rise, so no object outside the list ever falls below bound[i]."""
    K = cidx.shape[1]
    row = C[i]
    N = row.shape[0]
    values = np.empty(N)
    best = np.inf
    for j in range(N):
        values[j] = row[j] + pmin[j]
        best = min(best, values[j])
    w, fits = width[i], False
    for _ in range(16):
        n = 0
        for j in range(N):
            n += values[j] <= best + w
        fits = n <= K
        if fits:
            break
        w *= 0.25
    if not fits:  # more than K objects tie at the best value: list K of them
        w = 0.0
    n, rest = 0, np.inf
    for j in range(N):
        if values[j] <= best + w and n < K:  # with many exact ties the first K are listed
            cidx[i, n] = j
            ccost[i, n] = row[j]
            n += 1
        else:
            rest = min(rest, values[j])
    ccount[i] = n
    bound[i] = rest
    if fits:
        width[i] = w * 2.0 if n < K // 4 else w  # grow lists that came out short


@njit(cache=True, nogil=True)
def _list_scan(i, pmin, cidx, ccost, ccount):
    """(best value, second value, best object) over person i's candidate list."""
    best, second, jbest = np.inf, np.inf, -1
    for t in range(ccount[i]):
        j = cidx[i, t]
        v = ccost[i, t] + pmin[j]
        if v < second:
            if v < best:
                second, best, jbest = best, v, j
            else:
                second = v
    return best, second, jbest


@njit(cache=True, parallel=True, nogil=True)
def _rebuild_all(C, pmin, cidx, ccost, ccount, bound, width):
    for i in prange(C.shape[0]):
        _rebuild(C, i, pmin, cidx, ccost, ccount, bound, width)


@njit(cache=True, parallel=True, nogil=True)
def _list_best(pmin, cidx, ccost, ccount, bound, best):
    """best[i] = person i's best value, or the lower bound bound[i] when its list no longer
    holds it."""
    for i in prange(len(best)):
        b = _list_scan(i, pmin, cidx, ccost, ccount)[0]
        best[i] = min(b, bound[i])


@njit(cache=True, nogil=True)
def _fine_bids(C, slot_start, cap, slot_price, slot_owner, person_slot, pmin, eps, queue, count,
               cidx, ccost, ccount, bound, width):
    """Gauss-Seidel bidding on C with candidate lists; returns (bids, whole-row reads)."""
    m = C.shape[0]
    head, bids, reads = 0, 0, 0
    while count > 0:
        i = queue[head]
        head = head + 1 if head + 1 < m else 0
        count -= 1
        best, second, jbest = _list_scan(i, pmin, cidx, ccost, ccount)
        if best > bound[i]:  # an object off the list may now be best: read the row
            _rebuild(C, i, pmin, cidx, ccost, ccount, bound, width)
            reads += 1
            best, second, jbest = _list_scan(i, pmin, cidx, ccost, ccount)
        count = _list_bid(i, best, second, jbest, bound[i], eps, slot_start, cap, slot_price, slot_owner,
                          person_slot, pmin, queue, head, count)
        bids += 1
    return bids, reads


@njit(cache=True, nogil=True)
def _list_bid(i, best, second, jbest, bound, eps, slot_start, cap, slot_price, slot_owner, person_slot, pmin,
              queue, head, count):
    """Person i's bid for jbest, the best object of its candidate list (`best` <= `bound`).
    Objects off the list are worth at least `bound`: a lower bound on the second value
    still gives a valid bid (it raises less). Returns the new count of waiting persons."""
    second = min(second, bound)
    margin = second - best if second < np.inf else 0.0
    return _bid(i, jbest, margin + eps, slot_start, cap, slot_price, slot_owner, person_slot, pmin,
                queue, head, count)


@njit(cache=True, nogil=True)
def _primal_dual(held, cap, pmin, best):
    """(primal cost of the assignment whose persons hold objects of cost `held`, dual value
    of the prices pmin with per-person best values `best`)."""
    primal, dual = 0.0, 0.0
    for i in range(len(held)):
        primal += held[i]
        dual += best[i]
    for j in range(len(cap)):
        dual -= cap[j] * pmin[j]
    return primal, dual


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
    lo, hi, bad = _range(C)
    if bad:
        raise ValueError("the cost matrix contains NaN or Inf")
    spread = hi - lo
    prices = np.zeros(N) if init_prices is None else np.array(init_prices, dtype=np.float64)
    if prices.shape != (N,) or not np.isfinite(prices).all():
        raise ValueError(f"init_prices must be {N} finite numbers")
    # Optimal prices differ by at most the cost range (a person's object beats every
    # other), so clipping the starting prices to it loses nothing, and keeps ε-sized
    # price steps above the rounding of prices ≫ costs.
    prices = np.minimum(prices - prices.min(), spread)
    if eps_start is None:
        eps_start = spread / (4.0 if init_prices is None else 64.0)
    # Rounding allowance: sums of m terms of size ~|C| carry ~m·1e-16·|C| of error.
    rounding = 1e-13 * m * max(abs(lo), abs(hi), 1e-300)
    eps_floor = max(spread, abs(hi), 1e-300) * 1e-15
    eps = max(eps_start, eps_floor)

    slot_start = np.concatenate([[0], np.cumsum(cap)[:-1]]).astype(np.int64)
    slot_owner = np.full(m, -1, dtype=np.int64)
    person_slot = np.full(m, -1, dtype=np.int64)
    queue = np.empty(m, dtype=np.int64)
    assignment = np.full(m, -1, dtype=np.int64)
    phases = bids = row_reads = 0

    step = spread / COARSE_LEVELS
    if step > 0 and eps >= COARSE_MIN_EPS * step:
        Q = np.empty((m, N), dtype=np.uint16)
        _quantize(C, lo, step, Q)
        price = np.rint(prices / step).astype(np.int64)
        slot_price = np.empty(m, dtype=np.int64)
        best = np.empty(m, dtype=np.int64)
        held_q = np.zeros(m, dtype=np.int64)
        eps_q = int(eps / step)  # in steps
        while eps_q >= COARSE_MIN_EPS and phases < MAX_PHASES - 1:  # leave the fine stage a phase
            _best_values(Q, price, best)
            _held(Q, assignment, held_q)
            count = _restart(held_q, slot_start, cap, slot_price, slot_owner, person_slot, price, best, assignment, eps_q, queue)
            bids += _coarse_bids(Q, slot_start, cap, slot_price, slot_owner, person_slot, price, eps_q, queue, count)
            _collect(slot_start, cap, slot_owner, assignment)
            phases += 1
            eps = max(eps_q * step / EPS_FACTOR, eps_floor)
            eps_q = int(eps_q / EPS_FACTOR)
        del Q
        prices = price * step  # back to cost units: the fine stage starts from these
    coarse_phases = phases

    pmin = prices
    slot_price = np.empty(m)
    best = np.empty(m)
    held = np.zeros(m)
    cidx = np.zeros((m, min(LIST_SIZE, N)), dtype=np.int32)
    ccost = np.zeros((m, min(LIST_SIZE, N)))
    ccount = np.zeros(m, dtype=np.int64)
    bound = np.empty(m)
    width = np.full(m, max(eps, step))
    _rebuild_all(C, pmin, cidx, ccost, ccount, bound, width)
    _list_best(pmin, cidx, ccost, ccount, bound, best)
    primal = dual = np.nan
    certified = False
    while phases < MAX_PHASES:
        _held(C, assignment, held)
        count = _restart(held, slot_start, cap, slot_price, slot_owner, person_slot, pmin, best, assignment, eps, queue)
        phase_bids, reads = _fine_bids(C, slot_start, cap, slot_price, slot_owner, person_slot, pmin, eps, queue,
                                       count, cidx, ccost, ccount, bound, width)
        bids += phase_bids
        row_reads += reads
        phases += 1
        _collect(slot_start, cap, slot_owner, assignment)
        _list_best(pmin, cidx, ccost, ccount, bound, best)  # also what the next phase's restart uses
        _held(C, assignment, held)
        primal, dual = _primal_dual(held, cap, pmin, best)
        if primal - dual <= rtol * abs(primal) + rounding:
            _best_values(C, pmin, best)  # the certificate, from the whole matrix
            primal, dual = _primal_dual(held, cap, pmin, best)
            certified = primal - dual <= rtol * abs(primal) + rounding
            break
        if eps <= eps_floor:
            break
        eps = max(eps / EPS_FACTOR, eps_floor)
    return AuctionResult(assignment, pmin - pmin.min(), float(primal), float(dual), certified, phases, bids,
                         coarse_phases, row_reads)
