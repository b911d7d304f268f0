"""The certified k-to-1 solve of `ot_gen.matching.auction` without the cost matrix.

At 60,000 reals and 120,000 generated points the dense matrix holds 7.2e9 entries (58 GB
in float64): it cannot exist on a CPU or one GPU. This solve never stores it. Its rows
are computed from the points when they are needed, a block of rows at a time
(`RowCosts`: `cost.pairwise` on a block, a GEMM for the squared Euclidean cost, on the
points' device), and what the auction keeps of each row is a candidate list: the
`list_size` objects of lowest value C[i, j] + p_j and a bound, the dearest listed value,
below which no object off the list lay at the read. Prices only rise during a solve, so an
object off a list is worth at least that bound plus the least rise of any price since the
read: while a person's best listed value is at most that, its list holds its best object,
exactly as in the dense solve's fine stage.

The stages (`blocked_transport`):

1. starting prices, when none are given, from the problem on a sixteenth of the objects
   and persons, solved densely and extended to every object by the c-transform
   (`coarse_prices`): with them the first pass's lists hold most persons' optimal objects;
2. the first pass, every row once: each person's list, each object's nearest persons, and
   one object of a fixed feasible assignment per person (`_Auction.widen`);
3. ε-scaling on the lists alone (`restricted`), then the lists that went stale refreshed
   and the restricted solve again, while many go stale;
4. the exact stage: the dense fine stage on lists with bounds; a person whose list may
   be stale is set aside and, when only such persons are left, they are refreshed
   together;
5. the certificate: the dense dual D = Σ_i min_j (C_ij + p_j) − Σ_j cap_j p_j with each
   term min(best listed value, bound), a lower bound on the optimum without another
   pass; the assignment's cost P an upper one, and P − D ≤ rtol·|P| certifies. When it
   fails only because some bounds lie below their listed best, those lists are refreshed.

A refresh (`_Lists.refresh`) rarely reads a whole row: the least rise of any price is that
of a few objects, most rose far more, so the columns of the objects that rose least (a
zone) are computed first; the zone's best objects join the list, and the others' values
and the zone's edge make a new bound. Only the persons this does not settle have their
rows read, in one block. `rows_computed` counts every row computed (a zone's columns as the
share of a row they are): 1.0 per person is one pass. A solve that cannot certify within
`MAX_PHASES` returns `certified=False` with its gap (the matcher warns and uses its
assignment: no dense fallback exists at this size).
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
    auction_transport,
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
COARSE_SHARE = 1 / 16  # a cold solve starts from the prices of this share of the problem ...
COARSE_MIN_OBJECTS = 256  # ... when that share holds at least this many objects
ZONE_TAKE = 4  # objects of the zone that join a stale list
ZONE_SHARES = (1 / 16, 1 / 4)  # a stale list is checked against these shares of the objects first (`_Lists.refresh`)
BLOCK_BYTES = 2**28  # one block of computed rows (float64), 256 MiB: a few of them live at a time


@dataclass
class BlockedResult(AuctionResult):
    rows_computed: float = 0.0  # rows of the cost matrix computed (parts as shares), the first pass's m included
    read_batches: int = 0  # blocks of set-aside persons' rows computed after the first pass


class RowCosts:
    """Rows of the (m, N) cost matrix between generated points `x` and reals `y` (plus, when
    `dummy`, a last zero-cost column that takes spare generated points), computed in blocks
    of rows on the points' device and reduced to candidate lists; never all at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cost: Cost, dummy: bool = False,
                 block_bytes: int | None = None):
        # The generated points stay as given (a block of them goes to float64 when computed):
        # a float64 copy of 120,000 images would be 0.75 GB more.
        self.x, self.y, self.cost, self.dummy = x, y.double(), cost, dummy
        self.shape = (len(x), len(y) + int(dummy))
        block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        self.rows_per_block = max(1, int(block_bytes) // (8 * self.shape[1]))

    def block(self, persons: torch.Tensor, objects: torch.Tensor | None = None, dummy: bool | None = None) -> torch.Tensor:
        """The rows of `persons` (indices on the points' device), float64: whole, or their
        entries in the columns of the real `objects`; the dummy's zero column last when
        `dummy` (by default: whole rows of a problem with a dummy)."""
        C = self.cost.pairwise(self.x[persons].double(), self.y if objects is None else self.y[objects])
        dummy = self.dummy and objects is None if dummy is None else dummy
        return torch.cat([C, C.new_zeros(len(C), 1)], 1) if dummy else C

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
                out[sel] = self.cost.paired(self.x[i].double(), self.y[j]).cpu().numpy()
        return out

    def off_list(self, persons: np.ndarray, objects: np.ndarray, prices: np.ndarray, listed: np.ndarray,
                 count: np.ndarray, take: int) -> tuple[np.ndarray, np.ndarray]:
        """For every person in `persons`, the `take` least values C[i, j] + prices[j] over
        the `objects` j not among the first count[i] of its `listed` ones, in rising order,
        and those objects: (P, take) each, +inf and -1 where fewer are left. Only those
        columns of its row are computed."""
        device, real = self.x.device, len(self.y)
        values, found = np.full((len(persons), take), np.inf), np.full((len(persons), take), -1, dtype=np.int64)
        if not len(objects):
            return values, found
        column = np.full(self.shape[1], -1, dtype=np.int64)
        column[objects] = np.arange(len(objects))
        price = torch.as_tensor(prices[objects], dtype=torch.float64, device=device)
        reals = torch.as_tensor(objects[objects < real], dtype=torch.long, device=device)
        per_block = max(1, self.rows_per_block * self.shape[1] // len(objects))
        for start in range(0, len(persons), per_block):
            stop = min(start + per_block, len(persons))
            rows = torch.as_tensor(persons[start:stop], dtype=torch.long, device=device)
            V = self.block(rows, reals, dummy=len(reals) < len(objects))  # the dummy: the last object
            V += price
            at = column[listed[start:stop]]
            at[np.arange(listed.shape[1]) >= count[start:stop, None]] = -1
            r, c = np.nonzero(at >= 0)
            V[torch.as_tensor(r, device=device), torch.as_tensor(at[r, c], device=device)] = torch.inf
            least, where = torch.topk(V, min(take, V.shape[1]), dim=1, largest=False)
            values[start:stop, :least.shape[1]] = least.cpu().numpy()
            found[start:stop, :least.shape[1]] = objects[where.cpu().numpy()]
        found[~np.isfinite(values)] = -1
        return values, found

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
            lo, hi = C.min().item(), C.max().item()  # NaN when C holds one
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise NonFiniteError("matcher exact: the cost matrix contains NaN or Inf")
            out["lo"], out["hi"] = min(out["lo"], lo), max(out["hi"], hi)
            # Unsorted: no object off a list is worth less than the dearest on it (the bound).
            values, listed = torch.topk(C + price, size, dim=1, largest=False, sorted=False)
            out["objects"][start:stop] = listed.cpu().numpy()
            out["costs"][start:stop] = C.gather(1, listed).cpu().numpy()
            if size < N:
                out["bound"][start:stop] = values.amax(1).cpu().numpy()
            if column_size:  # this block's nearest persons of every object, merged with the earlier ones'
                near, at = torch.topk(C, min(column_size, len(C)), dim=0, largest=False)
                both = torch.cat([column[0], near]), torch.cat([column[1], rows[at]])
                near, at = torch.topk(both[0], min(column_size, len(both[0])), dim=0, largest=False)
                column = near, both[1].gather(0, at)
            del C, values, listed
        if column_size:
            out["column_costs"], out["column_persons"] = (t.cpu().numpy() for t in column)
        return out


def coarse_prices(costs: RowCosts, cap: np.ndarray, share: float = COARSE_SHARE,
                  seed: int = 0) -> tuple[np.ndarray, int] | None:
    """Starting prices for a cold solve, and the rows computed for them: the problem on a
    random `share` of the objects (capacities kept) and as many random persons as they
    take, solved densely, its prices extended to every object by the c-transform of its
    persons' values u_i = min_j (C_ij + p_j): p_j = max_i (u_i − C_ij), the least price at
    which none of them prefers j to its own object. Prices only need to be good guesses
    (the solve's certificate does not rest on them); these put most persons' optimal object
    among the first pass's listed ones (at 20,000 × 40,000 × 784: 0.8% of the persons
    outside their 256 listed objects, against 5.8% at zero prices), so few lists go stale.
    None when the share is too small to say anything (under `COARSE_MIN_OBJECTS`)."""
    m, N = costs.shape
    real = N - int(costs.dummy)
    if real * share < COARSE_MIN_OBJECTS:
        return None
    rng = np.random.default_rng(seed)
    objects = np.sort(rng.choice(real, int(real * share), replace=False))
    sub_cap = cap[objects]
    spare = int(round(cap[-1] * share)) if costs.dummy else 0
    if spare:
        sub_cap = np.append(sub_cap, spare)
    if sub_cap.sum() > m:
        return None
    persons = torch.as_tensor(np.sort(rng.choice(m, int(sub_cap.sum()), replace=False)), device=costs.x.device)
    C = costs.block(persons, torch.as_tensor(objects, device=costs.x.device), dummy=spare > 0)
    if not torch.isfinite(C).all():
        raise NonFiniteError("matcher exact: the cost matrix contains NaN or Inf")
    sub = auction_transport(C.cpu().numpy(), sub_cap)
    value = (C + torch.as_tensor(sub.prices, device=C.device)).amin(1)
    prices = torch.full((N,), -torch.inf, dtype=torch.float64, device=C.device)
    del C
    for start in range(0, len(persons), costs.rows_per_block):
        rows = slice(start, start + costs.rows_per_block)
        prices = torch.maximum(prices, (value[rows, None] - costs.block(persons[rows])).amax(0))
    prices = prices.cpu().numpy()
    return prices - prices.min(), len(persons)


def blocked_bytes(m: int, N: int, point_size: int, list_size: int = LIST_SIZE) -> float:
    """What a blocked solve allocates: the reals in float64, every person's candidate list
    (object and cost), the auction's per-person and per-object arrays, and about three
    blocks of rows (costs, values, the top-k's work) at a time."""
    width = min(list_size + 1 + COLUMN_ROOM, N)
    block = min(BLOCK_BYTES, 8.0 * m * N)
    return 8.0 * N * point_size + 12.0 * m * width + 80.0 * m + 24.0 * N + 3.0 * block


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


@njit(cache=True, nogil=True)
def _take(persons, objects, values, prices, assignment, cidx, ccost, ccount, lowered):
    """Put object objects[t, q] of value values[t, q] (at `prices`) on the list of
    persons[t], for every q with one (-1: none): in a free place, or in that of the list's
    dearest object when it is dearer and not the one the person holds. The least value of
    an object left off so (the dearest taken off, or the new one when it is no better)
    goes to lowered[t]."""
    width = cidx.shape[1]
    for t in range(len(persons)):
        i = persons[t]
        for q in range(objects.shape[1]):
            j = objects[t, q]
            if j < 0:
                continue
            place = ccount[i]
            if place < width:
                ccount[i] += 1
            else:
                worst, place = -np.inf, -1
                for s in range(width):
                    v = ccost[i, s] + prices[cidx[i, s]]
                    if v > worst and cidx[i, s] != assignment[i]:
                        worst, place = v, s
                if place < 0 or worst <= values[t, q]:
                    lowered[t] = min(lowered[t], values[t, q])
                    continue
                lowered[t] = min(lowered[t], worst)
            cidx[i, place] = j
            ccost[i, place] = values[t, q] - prices[j]


class _Lists:
    """Every person's candidate list (up to `width` objects; ccount[i] of them), the reads
    that fill it, and its bound: `read_bound` at the prices of the read (a snapshot of
    them), `bound` that moved on to the current prices (`rebase`)."""

    def __init__(self, costs: RowCosts, width: int):
        m, N = costs.shape
        self.costs, self.width = costs, min(width, N)
        self.cidx = np.zeros((m, self.width), dtype=np.int32)
        self.ccost = np.zeros((m, self.width))
        self.ccount = np.full(m, self.width, dtype=np.int64)
        self.bound = np.full(m, np.inf)
        self.read_bound = np.full(m, np.inf)
        self.rows, self.batches = 0.0, 0
        self.snapshots: list[np.ndarray] = []
        self.snapshot_of = np.full(m, -1, dtype=np.int64)

    def read(self, persons: np.ndarray, prices: np.ndarray, size: int | None = None, column_size: int = 0) -> dict:
        """Rebuild the lists of `persons` from their rows at `prices` (their first `size`
        places; all by default); returns what `RowCosts.lists` found."""
        size = self.width if size is None else min(size, self.width)
        found = self.costs.lists(persons, prices, size, column_size)
        self.cidx[persons, :size], self.ccost[persons, :size] = found["objects"], found["costs"]
        self.ccount[persons] = size
        self.rows += len(persons)
        self._set_bounds(persons, found["bound"], prices)
        return found

    def _set_bounds(self, persons: np.ndarray, bounds: np.ndarray, prices: np.ndarray) -> None:
        """The bounds of `persons`, holding at `prices`."""
        if not self.snapshots or not np.array_equal(self.snapshots[-1], prices):
            if len(self.snapshots) < MAX_SNAPSHOTS:
                self.snapshots.append(prices.copy())
            else:
                self._collapse(prices)
        self.snapshot_of[persons] = len(self.snapshots) - 1
        self.read_bound[persons] = self.bound[persons] = bounds

    def _collapse(self, prices: np.ndarray) -> None:
        """Every bound moves on to `prices`, the one snapshot left (when `MAX_SNAPSHOTS` are
        kept)."""
        self.rebase(prices)
        self.read_bound[:] = self.bound
        self.snapshots, self.snapshot_of[:] = [prices.copy()], 0

    def rebase(self, prices: np.ndarray) -> None:
        """Each bound is its read bound plus the least rise of any object's price since its
        read: an object off a list is worth at least the bound then plus that rise now.
        Every bid raises some price, and a phase's first bids raise every object's by at
        least its ε, so without this the bounds of the first pass would soon say that every
        list is stale when most are not."""
        for s, snapshot in enumerate(self.snapshots):
            of = self.snapshot_of == s
            self.bound[of] = self.read_bound[of] + max((prices - snapshot).min(), 0.0)

    def listed_best(self, prices: np.ndarray) -> np.ndarray:
        """Every person's best listed value at `prices` (bounds left aside)."""
        listed = np.empty(len(self.bound))
        _list_best(prices, self.cidx, self.ccost, self.ccount, np.full_like(self.bound, np.inf), listed)
        return listed

    def stale(self, prices: np.ndarray) -> np.ndarray:
        """The persons whose best listed value lies above their bound: their best object
        may be off their list."""
        self.rebase(prices)
        return np.flatnonzero(self.bound < self.listed_best(prices))

    def refresh(self, persons: np.ndarray, prices: np.ndarray, assignment: np.ndarray) -> np.ndarray:
        """Make the lists of the stale `persons` hold their best object again, for a small
        part of a row each where that is enough; returns those whose rows were read.

        The least rise since a read is usually that of a few objects: most objects' prices
        rose far more. So before a row is read, only its columns of the share of objects
        whose prices rose least (the zone: `ZONE_SHARES`, a larger one for the persons the
        first does not settle) are computed: an object off the list outside the zone rose
        by at least the zone's edge τ, so is worth at least read bound + τ now, and those
        in the zone are known: the `ZONE_TAKE` best of them join the list (in place of its
        dearest objects, never the one the person holds, whose values then bound the list
        too). When the best listed value is not above the least of what is left off, the
        list holds the best object and that least is its new bound; the rows of the
        persons no zone settles are read whole, in one block."""
        if len(self.snapshots) >= MAX_SNAPSHOTS:  # room for the snapshot of now, so no group's index moves
            self._collapse(prices)
        must = []  # every person has a snapshot: the first pass read them all
        for s in np.unique(self.snapshot_of[persons]):
            group = persons[self.snapshot_of[persons] == s]
            rise = prices - self.snapshots[s]
            lowered = np.full(len(group), np.inf)  # the least value of an object taken off a list here
            for share in ZONE_SHARES:
                if not len(group):
                    break
                edge = int(len(rise) * share)
                tau = np.partition(rise, edge)[edge]
                zone = np.flatnonzero(rise <= tau)
                if len(zone) > 2 * edge:  # ties at the edge: the zone stops below it
                    zone = np.flatnonzero(rise < tau)
                values, objects = self.costs.off_list(group, zone, prices, self.cidx[group], self.ccount[group],
                                                      ZONE_TAKE + 1)
                self.rows += len(group) * len(zone) / len(rise)
                _take(group, objects[:, :ZONE_TAKE], values[:, :ZONE_TAKE], prices, assignment, self.cidx,
                      self.ccost, self.ccount, lowered)
                bound = np.minimum(np.minimum(self.read_bound[group] + max(tau, 0.0), values[:, ZONE_TAKE]), lowered)
                holds = self.listed_best(prices)[group] <= bound
                self._set_bounds(group[holds], bound[holds], prices)
                group, lowered = group[~holds], lowered[~holds]
            must.append(group)
        must = np.concatenate(must)
        if len(must):
            self.read(must, prices)
            self.batches += 1
        return must

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
    coarse = coarse_prices(costs, cap) if init_prices is None else None
    if coarse is not None:
        init_prices, coarse_rows = coarse
    prices = np.zeros(N) if init_prices is None else np.array(init_prices, dtype=np.float64)
    if prices.shape != (N,) or not np.isfinite(prices).all():
        raise ValueError(f"init_prices must be {N} finite numbers")
    pmin = prices - prices.min()
    auction = _Auction(costs, cap, pmin, list_size, rtol)
    if coarse is not None:
        auction.lists.rows += coarse_rows
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
            lists.refresh(self.deferred[:waiting].copy(), self.pmin, self.assignment)  # set-aside persons, together
            lists.rebase(self.pmin)
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
        """Refresh, together, the lists that may no longer hold their person's best object
        (its best listed value above its bound): one block of many rows costs less than
        many of few. Returns how many were stale."""
        stale = self.lists.stale(self.pmin)
        if len(stale):
            _held_costs(self.assignment, *self.arrays[:3], self.held)
            self._refresh(stale)
        return len(stale)

    def _refresh(self, persons: np.ndarray) -> None:
        """`_Lists.refresh` of `persons`, each keeping the object it holds (`held` current)."""
        read = self.lists.refresh(persons, self.pmin, self.assignment)
        _keep_held(read, self.assignment, self.held, self.pmin, *self.arrays[:3], self.lists.read_bound)
        self.lists.rebase(self.pmin)

    def exact(self, eps: float) -> None:
        """Stage two: the whole problem, on lists with bounds (rows read when a list runs
        out), from the restricted solve's assignment and prices, to the certificate."""
        while self.phases < MAX_PHASES:
            self._bid(eps, bounded=True)
            self.phases += 1
            self.certify()
            if self.certified or eps <= self.eps_floor and not (self._slack() > eps).any():
                break
            eps = max(eps / EPS_FACTOR, self.eps_floor)

    def certify(self) -> None:
        """`primal`, `dual` and `certified` of the assignment at the current prices, `best`
        left as the next phase's restart needs it. The dual takes each person's min(best
        listed value, bound); when it would certify if the persons whose bound lies below
        their listed best were tight, their lists are refreshed (a person whose best object
        was off its list is found so) and the gap is taken again."""
        self.lists.rebase(self.pmin)
        _held_costs(self.assignment, *self.arrays[:3], self.held)
        _list_best(self.pmin, *self.arrays, self.best)
        primal, dual = _primal_dual(self.held, self.cap, self.pmin, self.best)
        tolerance = self.rtol * abs(primal) + self.rounding
        listed = self.lists.listed_best(self.pmin)
        stale = np.flatnonzero(self.lists.bound < listed)
        if primal - dual > tolerance and len(stale) and primal - (dual + (listed - self.best)[stale].sum()) <= tolerance:
            self._refresh(stale)
            _list_best(self.pmin, *self.arrays, self.best)
            primal, dual = _primal_dual(self.held, self.cap, self.pmin, self.best)
        self.primal, self.dual, self.certified = primal, dual, primal - dual <= tolerance

    def _slack(self) -> np.ndarray:
        """How far above its best value (or the bound of it) each person's object is.
        Leaves `held` and `best` current."""
        self.lists.rebase(self.pmin)
        _list_best(self.pmin, *self.arrays, self.best)
        _held_costs(self.assignment, *self.arrays[:3], self.held)
        return self.held + self.pmin[self.assignment] - self.best

    def violation(self, share: float) -> float:
        """How far above its best value (or the bound of it) a person is, at the (1 −
        share) quantile of all persons."""
        return float(np.quantile(self._slack(), 1.0 - share))
