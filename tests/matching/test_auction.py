"""The fast exact solver (`matcher.solver=auction`): same optimal cost as ot.emd, a valid
k-to-1 assignment, a certificate that holds, clear refusals of bad input."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from ot_gen.matching.costs import SqEuclidean
from ot_gen.errors import NonFiniteError
from ot_gen.matching import ExactMatcher, auction
from ot_gen.matching.assignment import integer_marginals
from ot_gen.matching.auction import auction_transport


def emd_cost(C: np.ndarray, cap: np.ndarray) -> float:
    plan = ot.emd(np.ones(len(C)), cap.astype(np.float64), C, numItermax=10**9)
    return float((plan * C).sum())


def random_problem(rng: np.random.Generator, kind: str):
    n = int(rng.integers(1, 40))
    k = int(rng.integers(1, 6))
    d = int(rng.integers(1, 5))
    y = rng.standard_normal((n, d))
    x = rng.standard_normal((k * n, d)) * 1.3 + 0.2
    if kind == "ties":  # integer grid: many equal costs and equal-cost optimal plans
        x, y = np.round(x * 2), np.round(y * 2)
    elif kind == "duplicates":  # repeated points on both sides
        x[::2] = x[0]
        y[::3] = y[0]
    elif kind == "scaled":
        scale = 10.0 ** rng.integers(-3, 4)
        x, y = x * scale, y * scale
    return ot.dist(x, y), np.full(n, k)


def check_solution(C, cap, result):
    """Optimal (= ot.emd's cost), a valid k-to-1 assignment, the primal it reports, and a
    certificate that holds when recomputed here from the returned prices alone."""
    assert result.certified
    assert np.bincount(result.assignment, minlength=len(cap)).tolist() == cap.tolist()
    primal = C[np.arange(len(C)), result.assignment].sum()
    assert primal == pytest.approx(result.primal, rel=1e-12, abs=1e-12)
    dual = (C + result.prices).min(1).sum() - (cap * result.prices).sum()
    assert dual <= primal + 1e-9 * max(1.0, abs(primal))
    assert primal - dual <= 1e-9 * abs(primal) + 1e-9
    reference = emd_cost(C, cap)
    assert abs(primal - reference) <= 1e-7 * max(abs(reference), 1e-12), (primal, reference)


@pytest.mark.parametrize("kind", ["plain", "ties", "duplicates", "scaled"])
def test_cost_equals_emd_and_the_certificate_holds(kind):
    rng = np.random.default_rng(["plain", "ties", "duplicates", "scaled"].index(kind))
    for _ in range(40):
        C, cap = random_problem(rng, kind)
        check_solution(C, cap, auction_transport(C, cap))


def test_uneven_capacities_negative_costs_and_a_single_real():
    rng = np.random.default_rng(7)
    cap = np.array([1, 4, 2, 7, 1])
    C = rng.standard_normal((cap.sum(), 5)) * 50 - 100  # all negative (like -PSNR)
    result = auction_transport(C, cap)
    assert result.certified and result.primal == pytest.approx(emd_cost(C, cap), rel=1e-9)
    one = auction_transport(rng.random((6, 1)), np.array([6]))
    assert one.certified and (one.assignment == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,n,k", [(30, 10, 3), (25, 10, 2), (64, 64, 1), (40, 8, 1)])
def test_matcher_fast_and_pot_give_the_same_optimal_cost(dtype, m, n, k):
    gen = torch.Generator().manual_seed(m + n + k)
    x = torch.randn(m, 3, generator=gen, dtype=dtype)
    y = torch.randn(n, 3, generator=gen, dtype=dtype) + 0.5
    cost = SqEuclidean()
    fast = ExactMatcher(solver="auction")(x, y, cost, each_real=k)
    pot = ExactMatcher(solver="pot")(x, y, cost, each_real=k)
    for match in (fast, pot):  # spare generated points (m > k·n) go unmatched
        assert torch.bincount(match.real_idx, minlength=n).tolist() == [k] * n
        assert len(set(match.gen_idx.tolist())) == k * n
    total = lambda mt: cost.paired(x[mt.gen_idx].double(), y[mt.real_idx].double()).sum().item()  # noqa: E731
    assert total(fast) == pytest.approx(total(pot), rel=1e-7)
    assert fast.stats["certified"] == 1.0 and fast.stats["duality_gap"] <= 1e-9


def test_warm_start_from_any_prices_keeps_the_optimum():
    rng = np.random.default_rng(3)
    C, cap = random_problem(rng, "plain")
    reference = emd_cost(C, cap)
    for prices in (auction_transport(C, cap).prices, rng.standard_normal(len(cap)) * 100, rng.random(len(cap)) * 1e20):
        warm = auction_transport(C, cap, init_prices=prices)
        assert warm.certified and warm.primal == pytest.approx(reference, rel=1e-9)


def test_the_matcher_remembers_prices_per_real_and_keeps_them_in_the_checkpoint():
    """Prices are kept by training-set index: the same reals in another order (another
    pool) start from their own prices, also after a save and load."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(20, 2, generator=gen)
    ids = torch.arange(100, 120)  # their places in a training set of 200
    matcher = ExactMatcher(solver="auction", n_reals=200).train()
    first = matcher(torch.randn(60, 2, generator=gen), y, SqEuclidean(), each_real=3, real_ids=ids)
    assert first.stats["warm_started"] == 0.0
    assert matcher.priced[ids].all() and not matcher.priced[:100].any()
    # The next round: new generated points, the same reals in another order.
    restored = ExactMatcher(solver="auction", n_reals=200).train()
    restored.load_state_dict(matcher.state_dict())
    assert torch.equal(restored.prices, matcher.prices) and torch.equal(restored.priced, matcher.priced)
    perm = torch.randperm(20, generator=gen)
    x = torch.randn(60, 2, generator=gen)
    second = restored(x, y[perm], SqEuclidean(), each_real=3, real_ids=ids[perm])
    assert second.stats["warm_started"] == 1.0 and second.stats["certified"] == 1.0
    cold = ExactMatcher(solver="auction", warm_start=False)(x, y[perm], SqEuclidean(), each_real=3)
    assert second.stats["matched_cost"] == pytest.approx(cold.stats["matched_cost"], rel=1e-9)
    assert cold.stats["warm_started"] == 0.0
    assert not restored.prices[:100].any() and restored.prices[ids].abs().sum() > 0, "stored at ids only"
    unseen = restored(x, y, SqEuclidean(), each_real=3, real_ids=torch.arange(20))
    assert unseen.stats["warm_started"] == 0.0, "reals never solved: a cold start"
    evaluation = ExactMatcher(solver="auction", n_reals=200).eval()
    evaluation(x, y, SqEuclidean(), each_real=3, real_ids=ids)
    assert not evaluation.priced.any(), "only training rounds change the prices"


def test_a_solve_that_cannot_certify_says_so_and_falls_back_to_emd(monkeypatch):
    monkeypatch.setattr(auction, "MAX_PHASES", 1)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(90, 4, generator=gen), torch.randn(30, 4, generator=gen)
    C, cap = ot.dist(x.double().numpy(), y.double().numpy()), np.full(30, 3)
    assert not auction_transport(C, cap).certified
    with pytest.warns(UserWarning, match="could not certify optimality"):
        match = ExactMatcher(solver="auction")(x, y, SqEuclidean(), each_real=3)
    assert match.stats["certified"] == 0.0
    optimal = ExactMatcher(solver="pot")(x, y, SqEuclidean(), each_real=3)
    assert match.stats["matched_cost"] == pytest.approx(optimal.stats["matched_cost"], rel=1e-9)


@pytest.mark.parametrize(
    "C,cap,init,message",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), [1, 1], None, "NaN or Inf"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), [1, 1], None, "NaN or Inf"),
        (np.zeros((3, 2)), [1, 1], None, "2 positive integers summing to 3"),
        (np.zeros((2, 2)), [2, 0], None, "positive integers"),
        (np.zeros((2, 2)), [1, 1, 0], None, "2 positive integers"),
        (np.zeros((2, 2)), [1, 1], [0.0], "init_prices must be 2 finite numbers"),
        (np.zeros((2, 2)), [1, 1], [0.0, np.nan], "init_prices must be 2 finite numbers"),
    ],
)
def test_bad_input_is_refused_clearly(C, cap, init, message):
    with pytest.raises(ValueError, match=message):
        auction_transport(C, np.array(cap), init_prices=init)


def test_matcher_rejects_non_finite_points_and_bad_options():
    x = torch.randn(6, 2)
    x[2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="generated points contain NaN"):
        ExactMatcher(solver="auction")(x, torch.randn(3, 2), SqEuclidean(), each_real=2)
    with pytest.raises(ValueError, match="solver='simplex' is not allowed: one of auto, auction, pot, hungarian"):
        ExactMatcher(solver="simplex")
    with pytest.raises(ValueError, match="rtol=0.01 is not allowed"):
        ExactMatcher(rtol=0.01)


def test_the_dummy_real_takes_the_spare_points():
    C = torch.rand(7, 2, dtype=torch.float64)
    _, b, Cd = integer_marginals(C, 3)
    result = auction_transport(Cd.numpy(), b.long().numpy())
    assert result.certified and np.bincount(result.assignment).tolist() == [3, 3, 1]


def test_auto_uses_the_auction_for_large_problems_scipy_for_small_one_to_one_and_pot_otherwise(monkeypatch):
    from ot_gen.matching import assignment

    scipy_calls = []
    original = assignment.linear_sum_assignment
    monkeypatch.setattr(assignment, "linear_sum_assignment", lambda C: scipy_calls.append(C.shape) or original(C))
    gen = torch.Generator().manual_seed(2)
    # 800 × 200 = 160,000 entries: the auction; 40 × 20 and 60 × 20: scipy when k = 1
    for m, n, k, auction_used, scipy_used in ((40, 20, 2, False, False), (800, 200, 2, True, False),
                                              (40, 20, 1, False, True), (60, 20, 1, False, True),
                                              (800, 200, 1, True, False)):
        scipy_calls.clear()
        x, y = torch.randn(m, 2, generator=gen), torch.randn(n, 2, generator=gen)
        auto = ExactMatcher()(x, y, SqEuclidean(), each_real=k)
        assert ("certified" in auto.stats) == auction_used
        assert bool(scipy_calls) == scipy_used
        pot = ExactMatcher(solver="pot")(x, y, SqEuclidean(), each_real=k)
        assert auto.stats["matched_cost"] == pytest.approx(pot.stats["matched_cost"], rel=1e-9)
        assert torch.equal(auto.real_idx, pot.real_idx) and torch.equal(auto.gen_idx, pot.gen_idx)


@pytest.mark.parametrize("contested", [False, True])
def test_both_stages_and_the_candidate_lists_on_problems_wider_than_a_list(contested):
    """More reals than a candidate list holds, so lists run out and rows are read again;
    `contested`: generated points crowd around a few reals (what a young generator
    gives), the case where prices move most."""
    rng = np.random.default_rng(11 + contested)
    n, k, d = 3 * auction.LIST_SIZE, 4, 6
    y = rng.standard_normal((n, d))
    x = rng.standard_normal((k * n, d))
    if contested:
        x = y[rng.integers(0, 5, k * n)] + 0.3 * x
    C, cap = ot.dist(x, y), np.full(n, k)
    result = auction_transport(C, cap)
    check_solution(C, cap, result)
    assert result.coarse_phases >= 3 and result.phases > result.coarse_phases
    assert result.row_reads > 0


def test_more_exact_ties_than_a_candidate_list_holds():
    rng = np.random.default_rng(5)
    n, k = 2 * auction.LIST_SIZE, 2
    C = rng.integers(0, 3, (k * n, n)).astype(np.float64)  # each row: ~n/3 objects tie at its best
    C[:, : auction.LIST_SIZE + 10] = 0.0  # and every row ties at 0 on more than a list's worth
    cap = np.full(n, k)
    check_solution(C, cap, auction_transport(C, cap))


def test_the_fine_stage_alone():
    rng = np.random.default_rng(8)
    C, cap = ot.dist(rng.standard_normal((300, 3)), rng.standard_normal((100, 3))), np.full(100, 3)
    fine_only = auction_transport(C, cap, eps_start=(C.max() - C.min()) * 1e-6)  # below the coarse stage's ε
    assert fine_only.coarse_phases == 0
    check_solution(C, cap, fine_only)
    constant = auction_transport(np.full((6, 3), 2.5), np.full(3, 2))  # zero range: no quantisation step
    assert constant.certified and constant.coarse_phases == 0 and constant.primal == 15.0
