"""The exact and Hungarian matchers on small real problems."""

from __future__ import annotations

import itertools

import pytest
import torch

from ot_gen.matching.costs import Euclidean, SqEuclidean
from ot_gen.errors import NonFiniteError, SolverError
from ot_gen.matching import ExactMatcher, identity_pairs

MATCHERS = [ExactMatcher(solver="auction"), ExactMatcher(solver="pot"), ExactMatcher(solver="hungarian")]
COST = SqEuclidean()


def total_cost(x, y, match, cost=COST):
    return cost.paired(x[match.gen_idx], y[match.real_idx]).sum().item()


def points(m, n, d=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("matcher", MATCHERS, ids=lambda m: m.name)
def test_square_problem_gives_a_permutation(matcher):
    x, y = points(64, 64)
    match = matcher(x, y, COST)
    assert sorted(match.gen_idx.tolist()) == list(range(64))
    assert sorted(match.real_idx.tolist()) == list(range(64))
    assert match.stats["dropped"] == 0 and match.stats["partner_spread"] == 0


@pytest.mark.parametrize("matcher", MATCHERS, ids=lambda m: m.name)
@pytest.mark.parametrize("k", [2, 5])
def test_every_real_receives_exactly_k(matcher, k):
    x, y = points(k * 30, 30, seed=k)
    match = matcher(x, y, COST, each_real=k)
    assert sorted(match.gen_idx.tolist()) == list(range(k * 30)), "every generated point used once"
    assert torch.bincount(match.real_idx, minlength=30).tolist() == [k] * 30


@pytest.mark.parametrize("matcher", MATCHERS, ids=lambda m: m.name)
def test_more_generated_than_needed_gives_distinct_best_partners(matcher):
    """Minibatch mode with ratio > 1: each real its own generated point, the rest unused."""
    x, y = points(120, 40, seed=3)
    match = matcher(x, y, COST, each_real=1)
    assert len(match) == 40
    assert len(set(match.gen_idx.tolist())) == 40
    assert sorted(match.real_idx.tolist()) == list(range(40))
    assert match.stats["generated_used"] == pytest.approx(40 / 120)
    # Optimal: no unused generated point would be a cheaper partner for a real after swapping
    # everything; checked against the Hungarian solution of the same rectangular problem.
    assert total_cost(x, y, match) == pytest.approx(total_cost(x, y, ExactMatcher(solver="hungarian")(x, y, COST)), rel=1e-6)


@pytest.mark.parametrize("m,n,k", [(50, 50, 1), (90, 30, 3), (70, 30, 2), (33, 11, 1)])
@pytest.mark.parametrize("seed", range(4))
def test_exact_and_hungarian_find_the_same_optimal_cost(m, n, k, seed):
    x, y = points(m, n, d=3, seed=seed, dtype=torch.float64)
    exact = ExactMatcher(solver="auction")(x, y, COST, each_real=k)
    hung = ExactMatcher(solver="hungarian")(x, y, COST, each_real=k)
    assert total_cost(x, y, exact) == pytest.approx(total_cost(x, y, hung), rel=1e-9)


@pytest.mark.parametrize("matcher", MATCHERS, ids=lambda m: m.name)
def test_optimal_against_brute_force(matcher):
    x, y = points(6, 6, seed=7)
    best = min(COST.paired(x[list(p)], y).sum().item() for p in itertools.permutations(range(6)))
    assert total_cost(x, y, matcher(x, y, COST)) == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("matcher", MATCHERS, ids=lambda m: m.name)
@pytest.mark.parametrize("cost", [SqEuclidean(), Euclidean()], ids=lambda c: c.name)
@pytest.mark.parametrize("seed", range(5))
def test_matched_cost_never_above_identity_pairing(matcher, cost, seed):
    x, y = points(40, 20, seed=seed)
    match = matcher(x, y, cost, each_real=2)
    gen, real = identity_pairs(40, 20, 2)
    assert match.stats["matched_cost"] <= cost.paired(x[gen], y[real]).mean().item() + 1e-6
    assert match.stats["matched_cost"] <= match.stats["identity_cost"] + 1e-6


@pytest.mark.parametrize("matcher", MATCHERS, ids=lambda m: m.name)
def test_ties_and_duplicate_points(matcher):
    x = torch.zeros(20, 2)  # all generated points identical
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).repeat(5, 1)  # duplicated reals
    match = matcher(x, y, COST, each_real=2)
    assert sorted(match.gen_idx.tolist()) == list(range(20))
    assert torch.bincount(match.real_idx, minlength=10).tolist() == [2] * 10


@pytest.mark.parametrize("matcher", MATCHERS, ids=lambda m: m.name)
def test_solutions_are_deterministic(matcher):
    x, y = points(60, 20, seed=11)
    a, b = matcher(x, y, COST, each_real=3), matcher(x, y, COST, each_real=3)
    assert torch.equal(a.gen_idx, b.gen_idx) and torch.equal(a.real_idx, b.real_idx)


@pytest.mark.parametrize("matcher", MATCHERS, ids=lambda m: m.name)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_points_are_rejected(matcher, bad):
    x, y = points(10, 10)
    x[3, 1] = bad
    with pytest.raises(NonFiniteError, match="generated points contain NaN or Inf"):
        matcher(x, y, COST)


def test_too_few_generated_points_is_a_clear_error():
    x, y = points(10, 10)
    with pytest.raises(ValueError, match="10 generated points cannot give each of 10 reals 2"):
        ExactMatcher()(x, y, COST, each_real=2)


def test_exact_solver_that_stops_early_is_an_error_not_a_bad_plan():
    x, y = points(200, 20, seed=1)
    with pytest.raises(SolverError, match="num_itermax"):
        ExactMatcher(solver="pot", num_itermax=5)(x, y, COST, each_real=10)
