"""The certified k-to-1 solve of `ot_gen.matching.auction` without the cost matrix.

At 60,000 reals and 120,000 generated points the dense matrix holds 7.2e9 entries (58 GB
in float64): it cannot exist on a CPU or one GPU. This solve never stores it. Its rows
are computed from the points when they are needed, a block of rows at a time
(`RowCosts`: `cost.pairwise` on a block, a GEMM for the squared Euclidean cost, on the
points' device), and what the auction keeps of each row is the auction's fine-stage
candidate list: the `list_size` objects of lowest value C[i, j] + p_j and a bound, the
lowest value left out. Prices only rise during a solve, so an object off a list never
falls below that bound: while a person's best listed value is at most its bound, its list
holds its best object, exactly as in the dense solve.

What differs from the dense fine stage is when rows are read. A person whose list ran out
(its best listed value rose above its bound) does not stop the auction: it is set aside,
the others bid on, and when only set-aside persons are left, their rows are computed
together in one block (one GEMM, not one pass over the reals per person) and they bid
again. The first phase's lists come from one pass over every row; later reads are the
set-aside persons only (`rows_computed` counts them all: 1.0 per person is one pass).

The certificate is the dense solve's: the dual value D = Σ_i min_j (C_ij + p_j) − Σ_j
cap_j p_j of the final prices is a lower bound on the optimum, the assignment's cost P an
upper one, and P − D ≤ rtol·|P| certifies. Each person's term uses min(its best listed
value, its bound), a lower bound of the true minimum, so D is valid without another pass
over the matrix. When that D does not certify only because some persons' bounds lie below
their listed best (their true best may be off their lists), exactly those rows are
computed again, at the current prices: a person whose best object was off its list is
found there, its list is rebuilt, and the phase repeats if it now violates ε-optimality.
A solve that cannot certify within `MAX_PHASES` returns `certified=False` with its gap
(the matcher warns and uses its assignment: no dense fallback exists at this size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from ot_gen.errors import NonFiniteError
from ot_gen.matching.auction import (
    EPS_FACTOR,
    MAX_PHASES,
    AuctionResult,
    _collect,
    _list_best,
    _list_bid,
    _list_scan,
    _primal_dual,
    _restart,
)
from ot_gen.matching.costs import Cost

COLUMN_SIZE = 8  # the first pass also lists, for every object, its nearest persons
COLUMN_ROOM = 16  # places each person's list keeps for the objects that listed it
LIST_SIZE = 256  # objects each person lists from a row
RESTRICTED_STOP = 2.0**-12  # the restricted stage stops at ε of this share of the cost range
RESTRICTED_ROUNDS = 4  # restricted solves after the first, each after a block of stale rows
STALE_SHARE = 0.01  # ... while more than this share of the lists went stale
MAX_SNAPSHOTS = 64  # price vectors kept between rebases (reads of set-aside persons within a phase)
BLOCK_BYTES = 2**28  # one block of computed rows (float64), 256 MiB: a few of them live at a time


@dataclass
class BlockedResult(AuctionResult):
    rows_computed: int = 0  # rows of the cost matrix computed, the first pass's m included
    read_batches: int = 0  # blocks of set-aside persons' rows computed after the first pass


class RowCosts:
    """Rows of the (m, N) cost matrix between generated points `x` and reals `y` (plus, when
    `dummy`, a last zero-cost column that takes spare generated points), computed in blocks
    of rows on the points' device and reduced to candidate lists; never all at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cost: Cost, dummy: bool = False,
                 block_bytes: int | None = None):
        self.x, self.y, self.cost, self.dummy = x.double(), y.double(), cost, dummy
        self.shape = (len(x), len(y) + int(dummy))
        block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        self.rows_per_block = max(1, int(block_bytes) // (8 * self.shape[1]))

    def block(self, persons: torch.Tensor) -> torch.Tensor:
        """The whole rows of `persons` (indices on the points' device), float64."""
        C = self.cost.pairwise(self.x[persons], self.y)
        if not torch.isfinite(C).all():
            raise NonFiniteError("matcher exact: the cost matrix contains NaN or Inf")
        return torch.cat([C, C.new_zeros(len(C), 1)], 1) if self.dummy else C

    def paired(self, persons: np.ndarray, objects: np.ndarray) -> np.ndarray:
        """C[persons[t], objects[t]] for every t (the dummy's entries are 0)."""
        device = self.x.device
        out = np.zeros(len(persons))
        real = objects < len(self.y)
        for start in range(0, len(persons), self.rows_per_block * 64):
            stop = min(start + self.rows_per_block * 64, len(persons))
            sel = np.flatnonzero(real[start:stop]) + start
            if len(sel):
                i = torch.as_tensor(persons[sel], dtype=torch.long, device=device)
                j = torch.as_tensor(objects[sel], dtype=torch.long, device=device)
                out[sel] = self.cost.paired(self.x[i], self.y[j]).cpu().numpy()
        return out

    def lists(self, persons: np.ndarray, prices: np.ndarray, size: int, column_size: int = 0) -> dict:
        """For every person in `persons`, the `size` objects of lowest value C[i, j] +
        prices[j]: `objects` (P, size), their `costs` (P, size) and `bound` (P,), a
        value no object left out is below (+inf when none is left out); `lo` and `hi`, the least
        and greatest cost computed; with `column_size`, for every object the
        `column_size` persons of `persons` nearest it (`column_persons`, `column_costs`:
        (column_size, N) each). The bound is the dearest listed value: no object off the
        list is worth less, and the list need not be sorted."""
        device = self.x.device
        price = torch.as_tensor(prices, dtype=torch.float64, device=device)
        P, N = len(persons), self.shape[1]
        size = min(size, N)
        out = {"objects": np.empty((P, size), np.int32), "costs": np.empty((P, size)), "bound": np.full(P, np.inf),
               "lo": np.inf, "hi": -np.inf}
        column = (torch.empty(0, N, dtype=torch.float64, device=device), torch.empty(0, N, dtype=torch.long, device=device))
        for start in range(0, P, self.rows_per_block):
            stop = min(start + self.rows_per_block, P)
            rows = torch.as_tensor(persons[start:stop], dtype=torch.long, device=device)
            C = self.block(rows)
            out["lo"], out["hi"] = min(out["lo"], C.min().item()), max(out["hi"], C.max().item())
            # Unsorted: no object off a list is worth less than the dearest on it (the bound).
            values, listed = torch.topk(C + price, size, dim=1, largest=False, sorted=False)
            out["objects"][start:stop] = listed.cpu().numpy()
            out["costs"][start:stop] = C.gather(1, listed).cpu().numpy()
            if size < N:
                out["bound"][start:stop] = values.amax(1).cpu().numpy()
            if column_size:
                both = torch.cat([column[0], C]), torch.cat([column[1], rows[:, None].expand_as(C)])
                near, at = torch.topk(both[0], min(column_size, len(both[0])), dim=0, largest=False)
                column = near, both[1].gather(0, at)
            del C, values, listed
        if column_size:
            out["column_costs"], out["column_persons"] = (t.cpu().numpy() for t in column)
        return out


def blocked_bytes(m: int, N: int, point_size: int, list_size: int = LIST_SIZE) -> float:
    """What a blocked solve allocates: the points in float64, every person's candidate list
    (object and cost), the auction's per-person and per-object arrays, and about three
    blocks of rows (costs, values, the top-k's work) at a time."""
    width = min(list_size + 1 + COLUMN_ROOM, N)
    block = min(BLOCK_BYTES, 8.0 * m * N)
    return 8.0 * (m + N) * point_size + 12.0 * m * width + 80.0 * m + 24.0 * N + 3.0 * block


# ---- the auction on lists whose rows are read in batches ------------------------------


@njit(cache=True, nogil=True)
def _list_bids(slot_start, cap, slot_price, slot_owner, person_slot, pmin, eps, queue, count,
               cidx, ccost, ccount, bound, deferred):
    """Gauss-Seidel bidding on the candidate lists by the `count` persons in `queue` (and
    whoever they displace). A person whose list may no longer hold its best object (its
    best listed value above its bound) is set aside in `deferred` instead of bidding.
    Returns (bids, persons set aside)."""
    m = len(queue)
    head, bids, waiting = 0, 0, 0
    while count > 0:
        i = queue[head]
        head = head + 1 if head + 1 < m else 0
        count -= 1
        best, second, jbest = _list_scan(i, pmin, cidx, ccost, ccount)
        if best > bound[i]:
            deferred[waiting] = i
            waiting += 1
            continue
        count = _list_bid(i, best, second, jbest, bound[i], eps, slot_start, cap, slot_price, slot_owner,
                          person_slot, pmin, queue, head, count)
        bids += 1
    return bids, waiting


@njit(cache=True, nogil=True)
def _held_costs(assignment, cidx, ccost, ccount, held):
    """held[i] = the cost of person i's object, read from its list (a person only ever
    holds an object of its list)."""
    for i in range(len(assignment)):
        j = assignment[i]
        if j < 0:
            continue
        for t in range(ccount[i]):
            if cidx[i, t] == j:
                held[i] = ccost[i, t]
                break


@njit(cache=True, nogil=True)
def _keep_held(persons, assignment, held, pmin, cidx, ccost, ccount, bound):
    """After the lists of `persons` were rebuilt: an assigned person whose object fell off
    its new list gets it back in the last place, and the object that place held leaves the
    list, so the bound becomes at most that object's value."""
    for i in persons:
        j = assignment[i]
        if j < 0:
            continue
        last = ccount[i] - 1
        found = False
        for t in range(ccount[i]):
            found = found or cidx[i, t] == j
        if not found:
            bound[i] = min(bound[i], ccost[i, last] + pmin[cidx[i, last]])
            cidx[i, last] = j
            ccost[i, last] = held[i]


class _Lists:
    """Every person's candidate list (up to `width` objects; ccount[i] of them), and the
    reads that fill it."""

    def __init__(self, costs: RowCosts, width: int):
        m, N = costs.shape
        self.costs, self.width = costs, min(width, N)
        self.cidx = np.zeros((m, self.width), dtype=np.int32)
        self.ccost = np.zeros((m, self.width))
        self.ccount = np.full(m, self.width, dtype=np.int64)
        self.bound = np.full(m, np.inf)
        self.rows, self.batches = 0, 0
        # Each bound holds at the prices of its read (a snapshot); rebase() moves it on.
        self.snapshots: list[np.ndarray] = []
        self.snapshot_of = np.full(m, -1, dtype=np.int64)

    def read(self, persons: np.ndarray, prices: np.ndarray, size: int | None = None, column_size: int = 0) -> dict:
        """Rebuild the lists of `persons` from their rows at `prices` (their first `size`
        places; all by default); returns what `RowCosts.lists` found."""
        size = self.width if size is None else min(size, self.width)
        found = self.costs.lists(persons, prices, size, column_size)
        self.cidx[persons, :size], self.ccost[persons, :size] = found["objects"], found["costs"]
        self.bound[persons], self.ccount[persons] = found["bound"], size
        self.rows += len(persons)
        if len(self.snapshots) < MAX_SNAPSHOTS:
            self.snapshot_of[persons] = len(self.snapshots)
            self.snapshots.append(prices.copy())
        else:  # their bounds stay as read: valid, if looser than they could be
            self.snapshot_of[persons] = -1
        return found

    def rebase(self, prices: np.ndarray) -> None:
        """Raise every bound by the least rise of any object's price since its read: an
        object off a list is worth at least its bound then plus that rise now. Every bid
        raises some price, and a phase's first bids raise every object's by at least its
        ε, so without this the bounds of the first pass would soon say that every list is
        stale when most are not."""
        for s, snapshot in enumerate(self.snapshots):
            rise = (prices - snapshot).min()
            if rise > 0:
                self.bound[self.snapshot_of == s] += rise
        self.snapshots = [prices.copy()]
        self.snapshot_of[:] = 0

    def append(self, persons: np.ndarray, objects: np.ndarray, costs: np.ndarray) -> None:
        """Add object objects[t] of cost costs[t] to the list of persons[t], for every t,
        while a list has room (the cheapest first)."""
        order = np.lexsort((costs, persons))
        persons, objects, costs = persons[order], objects[order], costs[order]
        first = np.searchsorted(persons, persons)  # where each person's run starts
        place = self.ccount[persons] + np.arange(len(persons)) - first
        fits = place < self.width
        persons, place = persons[fits], place[fits]
        self.cidx[persons, place], self.ccost[persons, place] = objects[fits], costs[fits]
        np.maximum.at(self.ccount, persons, place + 1)


def blocked_transport(costs: RowCosts, cap: np.ndarray, init_prices: np.ndarray | None = None,
                      eps_start: float | None = None, rtol: float = 1e-9,
                      list_size: int = LIST_SIZE) -> BlockedResult:
    """`auction_transport` on the rows of `costs`, computed in blocks, never all at once:
    min Σ_i C[i, obj(i)] with object j taken by exactly cap[j] persons. Same arguments and
    result (plus `rows_computed` and `read_batches`); the starting prices are shifted to a
    least price of 0 (not clipped to the cost range, which is known only after a pass)."""
    m, N = costs.shape
    cap = np.ascontiguousarray(cap, dtype=np.int64)
    if cap.shape != (N,) or (cap < 1).any() or cap.sum() != m:
        raise ValueError(f"capacities must be {N} positive integers summing to {m}")
    prices = np.zeros(N) if init_prices is None else np.array(init_prices, dtype=np.float64)
    if prices.shape != (N,) or not np.isfinite(prices).all():
        raise ValueError(f"init_prices must be {N} finite numbers")
    pmin = prices - prices.min()
    auction = _Auction(costs, cap, pmin, list_size, rtol)
    spread = auction.hi - auction.lo
    if eps_start is None:
        eps_start = spread / (4.0 if init_prices is None else 64.0)
    eps = max(eps_start, auction.eps_floor)
    auction.widen()
    stop = spread * RESTRICTED_STOP
    eps = auction.restricted(eps, stop)
    # Rows of the persons whose lists went stale, read in one block, then the restricted
    # solve again on the lists they give, from an ε that the gap they show calls for (a
    # tenth of the persons more than 8ε from their best), until few lists go stale.
    for _ in range(RESTRICTED_ROUNDS):
        if auction.refresh_stale() <= m * STALE_SHARE:
            break
        eps = auction.restricted(max(eps, auction.violation(0.1) / EPS_FACTOR), stop)
    # The exact stage continues the ε-scaling, from an ε the remaining gap calls for:
    # bidding at a tiny ε over a large gap is a price war of tiny raises, endless on tied costs.
    auction.exact(max(eps, auction.violation(0.1) / EPS_FACTOR))
    return BlockedResult(auction.assignment, pmin - pmin.min(), float(auction.primal), float(auction.dual),
                         auction.certified, auction.phases, auction.bids, rows_computed=auction.lists.rows,
                         read_batches=auction.lists.batches)


class _Auction:
    """The state of one blocked solve and its two stages."""

    def __init__(self, costs: RowCosts, cap: np.ndarray, pmin: np.ndarray, list_size: int, rtol: float):
        m, N = costs.shape
        self.cap, self.pmin, self.rtol = cap, pmin, rtol
        self.lists = _Lists(costs, list_size + 1 + COLUMN_ROOM)
        # The first pass, every row once: each person's list_size objects of lowest value,
        # and each object's COLUMN_SIZE nearest persons.
        first = self.lists.read(np.arange(m), pmin, list_size, COLUMN_SIZE)
        self.first, self.lo, self.hi = first, first["lo"], first["hi"]
        self.rounding = 1e-13 * m * max(abs(self.lo), abs(self.hi), 1e-300)
        self.eps_floor = max(self.hi - self.lo, abs(self.hi), 1e-300) * 1e-15
        self.arrays = (self.lists.cidx, self.lists.ccost, self.lists.ccount, self.lists.bound)
        self.slot_start = np.concatenate([[0], np.cumsum(cap)[:-1]]).astype(np.int64)
        self.slot_owner = np.full(m, -1, dtype=np.int64)
        self.person_slot = np.full(m, -1, dtype=np.int64)
        self.slot_price = np.empty(m)
        self.queue = np.empty(m, dtype=np.int64)
        self.unbounded = np.full(m, np.inf)  # in place of the bounds: the lists alone
        self.deferred = np.empty(m, dtype=np.int64)
        self.assignment = np.full(m, -1, dtype=np.int64)
        self.best, self.held = np.empty(m), np.zeros(m)
        self.phases = self.bids = 0
        self.primal = self.dual = np.nan
        self.certified = False

    def _bid(self, eps: float, bounded: bool) -> None:
        """Bidding at ε by the persons not within ε of their best value: on the lists
        alone, or (`bounded`) with their bounds, a person whose list may be stale set aside
        and, when only such persons are left, their rows read together in one block."""
        lists = self.lists
        bound = lists.bound if bounded else self.unbounded
        lists.rebase(self.pmin)
        _list_best(self.pmin, lists.cidx, lists.ccost, lists.ccount, bound, self.best)
        _held_costs(self.assignment, lists.cidx, lists.ccost, lists.ccount, self.held)
        count = _restart(self.held, self.slot_start, self.cap, self.slot_price, self.slot_owner, self.person_slot,
                         self.pmin, self.best, self.assignment, eps, self.queue)
        while True:
            bids, waiting = _list_bids(self.slot_start, self.cap, self.slot_price, self.slot_owner, self.person_slot,
                                       self.pmin, eps, self.queue, count, lists.cidx, lists.ccost, lists.ccount,
                                       bound, self.deferred)
            self.bids += bids
            if not waiting:
                break
            lists.read(self.deferred[:waiting].copy(), self.pmin)  # set-aside persons, one block of rows
            lists.batches += 1
            self.queue[:waiting] = self.deferred[:waiting]
            count = waiting
        _collect(self.slot_start, self.cap, self.slot_owner, self.assignment)

    def widen(self) -> None:
        """Give each first-pass list two kinds of extra objects: that of a fixed feasible
        assignment (so that the problem restricted to the lists has a solution) and those
        that listed the person among their nearest (objects nobody lists first, as happens
        to many reals in high dimension, stay reachable)."""
        lists, m = self.lists, len(self.assignment)
        feasible = np.repeat(np.arange(len(self.cap)), self.cap)
        lists.append(np.arange(m), feasible, lists.costs.paired(np.arange(m), feasible))
        near, persons = self.first.pop("column_costs"), self.first.pop("column_persons")
        objects = np.broadcast_to(np.arange(near.shape[1]), near.shape)
        lists.append(persons.ravel(), objects.ravel(), near.ravel())

    def restricted(self, eps: float, stop_eps: float) -> float:
        """The problem restricted to the lists (bounds ignored: no row is read), by
        ε-scaling from `eps` until its own certificate or a phase at `stop_eps`; returns
        the next phase's ε. It provides prices: the exact stage continues the ε-scaling
        from there (going on to a tiny ε here would leave the exact stage to close the
        restricted optimum's gap to the whole problem's at that tiny ε: a price war of
        tiny raises, endless on tied costs). Prices only rise, so the bounds stay valid."""
        unbounded = (self.lists.cidx, self.lists.ccost, self.lists.ccount, self.unbounded)
        while self.phases < MAX_PHASES // 2:
            self._bid(eps, bounded=False)
            self.phases += 1
            _list_best(self.pmin, *unbounded, self.best)
            _held_costs(self.assignment, *unbounded[:3], self.held)
            primal, dual = _primal_dual(self.held, self.cap, self.pmin, self.best)
            if primal - dual <= self.rtol * abs(primal) + self.rounding or eps <= max(stop_eps, self.eps_floor):
                break
            eps = max(eps / EPS_FACTOR, self.eps_floor)
        return max(eps / EPS_FACTOR, self.eps_floor)

    def refresh_stale(self) -> int:
        """Read, in one block, the rows of the persons whose lists may no longer hold their
        best object (its best listed value above its bound): one block of many rows costs
        less than many of few. Returns how many were read."""
        self.lists.rebase(self.pmin)
        listed = np.empty_like(self.best)
        _list_best(self.pmin, self.lists.cidx, self.lists.ccost, self.lists.ccount,
                   np.full_like(self.lists.bound, np.inf), listed)
        stale = np.flatnonzero(self.lists.bound < listed)
        if len(stale):
            _held_costs(self.assignment, self.lists.cidx, self.lists.ccost, self.lists.ccount, self.held)
            self.lists.read(stale, self.pmin)
            self.lists.batches += 1
            _keep_held(stale, self.assignment, self.held, self.pmin, *self.arrays)
        return len(stale)

    def exact(self, eps: float) -> None:
        """Stage two: the whole problem, on lists with bounds (rows read when a list runs
        out), from the restricted solve's assignment and prices, to the certificate."""
        while self.phases < MAX_PHASES:
            self._bid(eps, bounded=True)
            self.phases += 1
            self.primal, self.dual, self.certified = _certify(self.lists, self.assignment, self.held, self.best,
                                                              self.cap, self.pmin, self.rtol, self.rounding)
            if self.certified or eps <= self.eps_floor and not self._violated(eps):
                break
            eps = max(eps / EPS_FACTOR, self.eps_floor)

    def _violated(self, eps: float) -> bool:
        """Whether some person is more than ε above its best value (or the bound of it):
        the phase has more work. Leaves `held` and `best` current."""
        _list_best(self.pmin, *self.arrays, self.best)
        _held_costs(self.assignment, *self.arrays[:3], self.held)
        return bool((self.held + self.pmin[self.assignment] - self.best > eps).any())

    def violation(self, share: float) -> float:
        """How far above its best value (or the bound of it) a person is, at the (1 −
        share) quantile of all persons."""
        self.lists.rebase(self.pmin)
        _list_best(self.pmin, *self.arrays, self.best)
        _held_costs(self.assignment, *self.arrays[:3], self.held)
        return float(np.quantile(self.held + self.pmin[self.assignment] - self.best, 1.0 - share))


def _certify(lists: _Lists, assignment, held, best, cap, pmin, rtol, rounding) -> tuple[float, float, bool]:
    """(primal, dual, certified) of the assignment at the prices `pmin`, `best` left as the
    next phase's restart needs it. The dual takes each person's min(best listed value,
    bound); when it would certify if the persons whose bound lies below their listed best
    were tight, their rows are computed again (a person whose best object was off its list
    is found so) and the gap is taken again."""
    arrays = (lists.cidx, lists.ccost, lists.ccount, lists.bound)
    lists.rebase(pmin)
    _held_costs(assignment, lists.cidx, lists.ccost, lists.ccount, held)
    _list_best(pmin, *arrays, best)
    primal, dual = _primal_dual(held, cap, pmin, best)
    tolerance = rtol * abs(primal) + rounding
    if primal - dual <= tolerance:
        return primal, dual, True
    listed = best.copy()
    _list_best(pmin, lists.cidx, lists.ccost, lists.ccount, np.full_like(lists.bound, np.inf), listed)
    stale = np.flatnonzero(lists.bound < listed)
    if not len(stale) or primal - (dual + (listed - best)[stale].sum()) > tolerance:
        return primal, dual, False
    lists.read(stale, pmin)
    lists.batches += 1
    _keep_held(stale, assignment, held, pmin, *arrays)
    _list_best(pmin, *arrays, best)
    primal, dual = _primal_dual(held, cap, pmin, best)
    return primal, dual, primal - dual <= tolerance
