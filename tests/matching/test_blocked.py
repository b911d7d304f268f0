"""The exact solve without the cost matrix (`matcher.storage=blocks`): the same optimum as
ot.emd and the dense auction, lists that miss a person's best object repaired, the memory
check that chooses it, warm prices kept by training-set index across a checkpoint."""

from __future__ import annotations

import json
import warnings

import numpy as np
import ot
import pytest
import torch

import ot_gen.matching.blocked as blocked
from ot_gen.errors import ConfigError, NonFiniteError
from ot_gen.matching import ExactMatcher
from ot_gen.matching.auction import auction_transport
from ot_gen.matching.blocked import RowCosts, blocked_transport
from ot_gen.matching.costs import L1, SqEuclidean
from ot_gen.memory import Limit

COST = SqEuclidean()


def problem(m, n, d, seed, spread=1.2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g) * spread + 0.3, torch.randn(n, d, generator=g)


def dense_costs(x, y, cost=COST, dummy=False):
    C = cost.pairwise(x.double(), y.double())
    return torch.cat([C, C.new_zeros(len(C), 1)], 1).numpy() if dummy else C.numpy()


def emd_cost(C, cap):
    plan = ot.emd(np.ones(len(C)), cap.astype(np.float64), C - min(C.min(), 0.0), numItermax=10**8)
    return float((plan * C).sum())


def check_assignment(result, cap):
    assert result.certified
    assert (np.bincount(result.assignment, minlength=len(cap)) == cap).all()


@pytest.mark.parametrize("m,n,k,d,seed", [(300, 150, 2, 5, 0), (400, 400, 1, 2, 1), (1200, 300, 3, 40, 2),
                                          (900, 300, 3, 784, 3), (1000, 200, 2, 8, 4)])
@pytest.mark.parametrize("list_size", [4, 256])
def test_blocked_solve_has_the_optimal_cost_of_ot_emd(m, n, k, d, seed, list_size):
    """Random problems, square and k-to-1, a dummy for spare generated points (m > k·n),
    short lists (most rows read again) and long ones (lists hold whole rows)."""
    x, y = problem(m, n, d, seed)
    spare = m - k * n
    cap = np.append(np.full(n, k), [spare] if spare else []).astype(np.int64)
    costs = RowCosts(x, y, COST, dummy=spare > 0, block_bytes=8 * 64 * (n + 1))  # many blocks
    result = blocked_transport(costs, cap, list_size=list_size)
    check_assignment(result, cap)
    C = dense_costs(x, y, dummy=spare > 0)
    assert C[np.arange(m), result.assignment].sum() == pytest.approx(result.primal, rel=1e-12)
    assert result.primal == pytest.approx(emd_cost(C, cap), rel=1e-9)
    assert result.primal == pytest.approx(auction_transport(C, cap).primal, rel=1e-9)


@pytest.mark.parametrize("cost", [SqEuclidean(), L1()], ids=lambda c: c.name)
def test_tie_heavy_problems_on_an_integer_grid(cost):
    """Points on a small integer grid, many of them equal: costs tie everywhere."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 4, (600, 3), generator=g).float()
    y = torch.randint(0, 4, (200, 3), generator=g).float()
    cap = np.full(200, 3)
    result = blocked_transport(RowCosts(x, y, cost), cap, list_size=8)
    check_assignment(result, cap)
    assert result.primal == pytest.approx(emd_cost(dense_costs(x, y, cost), cap), rel=1e-9, abs=1e-9)


def test_a_best_object_missing_from_the_first_lists_is_found_and_used():
    """Every generated point sits next to the same two reals, so its first list (its two
    nearest objects at price 0) holds them; the optimum sends most points elsewhere. The
    solve reads those rows again and reaches ot.emd's cost."""
    g = torch.Generator().manual_seed(3)
    y = torch.randn(100, 6, generator=g)
    x = y[:2].repeat(100, 1) + 0.05 * torch.randn(200, 6, generator=g)
    cap = np.full(100, 2)
    C = dense_costs(x, y)
    first_lists = np.argsort(C, axis=1)[:, :2]
    result = blocked_transport(RowCosts(x, y, COST), cap, list_size=2)
    check_assignment(result, cap)
    outside = (first_lists != result.assignment[:, None]).all(1)
    assert outside.sum() >= 150, "most points' optimal partners lie outside their first lists"
    assert result.rows_computed > len(x), "their rows were computed again"
    assert result.primal == pytest.approx(emd_cost(C, cap), rel=1e-9)


def _rank_of_optimal(C, prices, assignment):
    """For every person, how many objects are worth less than its optimal one at `prices`."""
    values = C + prices
    return (values < values[np.arange(len(C)), assignment][:, None]).sum(1)


@pytest.mark.parametrize("spare", [0, 100])
def test_coarse_prices_put_optimal_objects_among_the_first_listed(spare):
    """The prices of a quarter of the problem, extended by the c-transform: more persons'
    optimal objects rank among their first few at them than at zero prices (what makes the
    first pass's lists right); a dummy for spare persons gets a price too."""
    n, k = 1200, 2
    x, y = problem(k * n + spare, n, 40, 11)
    cap = np.append(np.full(n, k), [spare] if spare else []).astype(np.int64)
    costs = RowCosts(x, y, COST, dummy=spare > 0)
    prices, rows = blocked.coarse_prices(costs, cap, share=0.25)
    assert prices.shape == (len(cap),) and np.isfinite(prices).all() and prices.min() == 0
    assert rows == k * n // 4 + spare // 4, "the rows of the quarter's persons"
    C = dense_costs(x, y, dummy=spare > 0)
    optimum = auction_transport(C, cap)
    missed_coarse = (_rank_of_optimal(C, prices, optimum.assignment) >= 16).mean()
    missed_zero = (_rank_of_optimal(C, np.zeros(len(cap)), optimum.assignment) >= 16).mean()
    assert missed_coarse < 0.7 * missed_zero, (missed_coarse, missed_zero)
    assert blocked.coarse_prices(costs, cap, share=0.1) is None, "120 objects say too little: no coarse prices"


@pytest.mark.parametrize("spare", [0, 100])
def test_a_cold_solve_from_coarse_prices_is_optimal(monkeypatch, spare):
    n, k = 1200, 2
    x, y = problem(k * n + spare, n, 20, 12)
    cap = np.append(np.full(n, k), [spare] if spare else []).astype(np.int64)
    calls = []
    coarse = blocked.coarse_prices

    def quarter(costs, cap):
        calls.append(len(cap))
        return coarse(costs, cap, share=0.25)

    monkeypatch.setattr(blocked, "coarse_prices", quarter)
    result = blocked_transport(RowCosts(x, y, COST, dummy=spare > 0), cap, list_size=16)
    assert calls == [len(cap)], "a cold solve asks for starting prices"
    check_assignment(result, cap)
    assert result.primal == pytest.approx(auction_transport(dense_costs(x, y, dummy=spare > 0), cap).primal, rel=1e-9)
    blocked_transport(RowCosts(x, y, COST, dummy=spare > 0), cap, init_prices=result.prices)
    assert len(calls) == 1, "a warm one does not"


def test_a_refresh_keeps_every_bound_valid_and_reads_few_whole_rows():
    """Lists read at some prices, then the prices of most objects raised far and of a few
    barely: nearly every list is stale by the least rise. The refresh settles most of them
    from the columns of the objects that rose least, reads the rest, and afterwards no object
    off any list is worth less than that list's bound."""
    x, y = problem(1600, 800, 12, 13)
    costs = RowCosts(x, y, COST)
    lists = blocked._Lists(costs, 40)
    rng = np.random.default_rng(0)
    before = rng.uniform(0, 1, 800)
    lists.read(np.arange(1600), before, size=32)
    after = before + np.where(rng.uniform(size=800) < 0.005, rng.uniform(0, 1, 800), rng.uniform(60, 90, 800))
    stale = lists.stale(after)
    assert len(stale) > 1000, "the least rise says most lists may be stale"
    read = lists.refresh(stale, after, np.full(1600, -1))
    assert len(read) < len(stale) // 2, "most settled from a zone's columns"
    assert lists.rows < 1600 + len(read) + len(stale) * 0.5, "a zone costs a share of a row"
    lists.rebase(after)
    values = dense_costs(x, y) + after
    off = values.copy()
    for i in range(1600):
        off[i, lists.cidx[i, :lists.ccount[i]]] = np.inf
    assert (off.min(1) >= lists.bound - 1e-9).all(), "no object off a list is below its bound"
    listed = np.take_along_axis(values, lists.cidx.astype(np.int64), 1)
    listed[np.arange(40) >= lists.ccount[:, None]] = np.inf
    holds = listed.min(1) <= lists.bound
    assert holds[stale].all(), "every refreshed list holds its best object"
    assert (listed.min(1)[holds] == values.min(1)[holds]).all()


def test_warm_prices_give_the_same_optimum():
    x, y = problem(800, 400, 10, 5)
    x_next, _ = problem(800, 400, 10, 6)
    cap = np.full(400, 2)
    previous = blocked_transport(RowCosts(x_next, y, COST), cap)
    warm = blocked_transport(RowCosts(x, y, COST), cap, init_prices=previous.prices)
    check_assignment(warm, cap)
    assert warm.primal == pytest.approx(emd_cost(dense_costs(x, y), cap), rel=1e-9)


def test_a_solve_that_cannot_certify_says_so_and_the_matcher_warns_with_the_gap(monkeypatch):
    monkeypatch.setattr(blocked, "MAX_PHASES", 2)
    x, y = problem(400, 200, 5, 8)
    result = blocked_transport(RowCosts(x, y, COST), np.full(200, 2), eps_start=1e3)
    assert not result.certified and result.gap > 0
    with pytest.warns(UserWarning, match=r"blocked auction could not certify optimality .*relative gap .* > rtol"):
        match = ExactMatcher(storage="blocks")(x, y, COST, each_real=2)
    assert torch.bincount(match.real_idx, minlength=200).tolist() == [2] * 200, "still a 2-to-1 assignment"


def test_costs_that_overflow_are_refused():
    x, y = problem(100, 50, 3, 0)
    with pytest.raises(NonFiniteError, match="cost matrix contains NaN or Inf"):
        ExactMatcher(storage="blocks")(x.double() * 1e200, y.double(), COST, each_real=2)


def test_blocks_with_a_solver_that_needs_the_matrix_is_a_config_error():
    with pytest.raises(ConfigError, match=r"storage='blocks' is not allowed: dense or auto with solver=pot"):
        ExactMatcher(solver="pot", storage="blocks")


def room(monkeypatch, nbytes):
    """Pretend the process may take only `nbytes` more."""
    limit = Limit(int(nbytes), "test limit")
    monkeypatch.setattr("ot_gen.memory.tightest", lambda proc=None: limit)
    monkeypatch.setattr("ot_gen.matching.assignment.available_bytes", lambda: limit.room)


def test_auto_storage_goes_blocked_when_the_matrix_would_not_fit(monkeypatch):
    x, y = problem(1200, 600, 20, 9)
    dense = ExactMatcher()(x, y, COST, each_real=2)
    assert "blocked" not in dense.stats
    monkeypatch.setattr(blocked, "BLOCK_BYTES", 2**16)  # blocks of a few rows: the blocked solve fits
    assert blocked.blocked_bytes(1200, 601, 20) < 8e6 < ExactMatcher.DENSE_BYTES * 1200 * 601
    room(monkeypatch, 8e6)
    match = ExactMatcher()(x, y, COST, each_real=2)
    assert match.stats["blocked"] == 1.0 and match.stats["certified"] == 1.0
    assert match.stats["matched_cost"] == pytest.approx(dense.stats["matched_cost"], rel=1e-9)
    with pytest.raises(ConfigError, match=r"matcher.storage='auto' is not allowed: a blocked exact solve of 1,200 "
                                          r"generated points against 600 reals needs about"):
        room(monkeypatch, 1e6)
        ExactMatcher()(x, y, COST, each_real=2)


def test_the_rounds_memory_check_counts_what_the_matcher_allocates(monkeypatch):
    """A whole-set round of 30,000 reals and 60,000 generated points: its dense matrix
    (about 30 GB) does not fit in 8 GB, the blocked solve does; with storage=dense the
    check names the key to lower."""
    from ot_gen.model.modes import Oversampled

    mode = Oversampled(pool_size=30_000, k=2)
    room(monkeypatch, 8 * 2**30)
    mode.check_data(60_000, "fashion_mnist", 32, ExactMatcher())
    mode.check_data(60_000, "fashion_mnist", 32, ExactMatcher(storage="blocks"))
    with pytest.raises(ConfigError, match=r"mode.k=2 is not allowed: a round of 60,000 generated points matched "
                                          r"to 30,000 reals needs about 30.2 GiB"):
        mode.check_data(60_000, "fashion_mnist", 32, ExactMatcher(storage="dense"))


def test_prices_travel_by_training_set_index_through_a_checkpoint():
    """The blocked path keeps the dense path's warm-start state (prices by training-set
    index, in the matcher's buffers) but starts each round from its own coarse prices: the
    last round's, optimal for other generated points, send most lists stale. A resumed
    run's round is the same optimum, the reals in any order."""
    x, y = problem(800, 400, 10, 11)
    ids = torch.randperm(1000)[:400]
    first = ExactMatcher(storage="blocks", n_reals=1000)
    first(x, y, COST, each_real=2, real_ids=ids)
    assert first.priced[ids].all() and not first.priced[np.setdiff1d(np.arange(1000), ids)].any()
    resumed = ExactMatcher(storage="blocks", n_reals=1000)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.prices, first.prices)
    x_next, _ = problem(800, 400, 10, 12)
    again = resumed(x_next, y, COST, each_real=2, real_ids=ids)
    cold = ExactMatcher(storage="blocks", warm_start=False)(x_next, y, COST, each_real=2)
    assert again.stats["warm_started"] == 0.0 and cold.stats["warm_started"] == 0.0
    assert again.stats["matched_cost"] == pytest.approx(cold.stats["matched_cost"], rel=1e-9)
    shuffled = torch.randperm(400)  # the same reals in another order
    reordered = resumed(x_next, y[shuffled], COST, each_real=2, real_ids=ids[shuffled])
    assert reordered.stats["matched_cost"] == pytest.approx(cold.stats["matched_cost"], rel=1e-9)


def test_a_training_run_matches_whole_rounds_without_the_matrix(config, tmp_path):
    from ot_gen.run.train import run

    cfg = config("matcher=exact", "matcher.storage=blocks", "mode=oversampled", "mode.pool_size=300", "mode.k=3",
                 "trainer.max_steps=30", "mode.val_every_rounds=5", "eval.n_generated=1000")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(cfg)
    assert not [w for w in caught if "could not certify" in str(w.message)], "every round certified"
    metrics = json.loads((tmp_path / "run0" / "metrics.json").read_text())
    assert metrics["train/blocked"] == 1.0 and metrics["train/certified"] == 1.0
    assert metrics["train/rows_per_point"] >= 1.0
    assert metrics["train/matched_cost"] <= metrics["train/identity_cost"]
