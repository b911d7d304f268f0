"""Partial and unbalanced matchers: their limits, what they drop and what they report."""

from __future__ import annotations

import itertools

import ot
import pytest
import torch

from ot_gen.errors import ConfigError, SolverError
from ot_gen.matching import ExactMatcher, PartialMatcher, UnbalancedMatcher, identity_pairs
from ot_gen.matching.costs import SqEuclidean
from ot_gen.matching.unbalanced import unbalanced_sinkhorn_log
from ot_gen.run.build import build

COST = SqEuclidean()


def points(m, n, seed=0, outliers=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(m, 2, generator=g), torch.randn(n, 2, generator=g)
    y[:outliers] += 30.0  # far-away reals: every generated point is near the origin
    return x, y


def mean_cost(x, y, match):
    return COST.paired(x[match.gen_idx], y[match.real_idx]).mean().item()


@pytest.mark.parametrize("m,n,k", [(40, 40, 1), (90, 30, 3), (100, 30, 2)])
def test_partial_with_all_the_mass_is_the_exact_assignment(m, n, k):
    x, y = points(m, n, seed=m + k)
    exact, partial = ExactMatcher()(x, y, COST, each_real=k), PartialMatcher(mass=1.0)(x, y, COST, each_real=k)
    assert len(partial) == k * n == len(exact)
    assert mean_cost(x, y, partial) == pytest.approx(mean_cost(x, y, exact), rel=1e-6)
    assert torch.bincount(partial.real_idx, minlength=n).tolist() == [k] * n
    assert len(set(partial.gen_idx.tolist())) == len(partial), "each generated point at most once"


def test_partial_finds_the_cheapest_pairs_by_brute_force():
    x, y = points(5, 5, seed=3)
    C = COST.pairwise(x, y)
    best = min(sum(C[i, j] for i, j in zip(gens, reals))
               for gens in itertools.combinations(range(5), 3) for reals in itertools.permutations(range(5), 3))
    match = PartialMatcher(mass=0.6)(x, y, COST)
    assert len(match) == 3
    assert C[match.gen_idx, match.real_idx].sum().item() == pytest.approx(best.item(), rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_partial_leaves_the_outliers_and_reports_what_it_left(seed):
    x, y = points(300, 100, seed=seed, outliers=5)
    match = PartialMatcher(mass=0.9)(x, y, COST, each_real=3)
    assert len(match) == 270
    assert match.stats["untransported_generated"] == pytest.approx(0.1)
    assert match.stats["untransported_real"] == pytest.approx(0.1)
    assert not set(match.real_idx.tolist()) & set(range(5)), "no generated point sent to the outliers"
    assert match.stats["dropped"] >= 5
    assert torch.bincount(match.real_idx, minlength=100).max() <= 3
    exact = ExactMatcher()(x, y, COST, each_real=3)
    ident_gen, ident_real = identity_pairs(300, 100, 3)
    identity = COST.paired(x[ident_gen], y[ident_real]).mean().item()
    assert match.stats["matched_cost"] <= exact.stats["matched_cost"] <= identity


def test_the_log_domain_solver_is_pots_unbalanced_sinkhorn_where_pot_works():
    x, y = points(60, 20, seed=4)
    C = COST.pairwise(x.double(), y.double())
    a, b = torch.full((60,), 1 / 60, dtype=torch.float64), torch.full((20,), 3 / 60, dtype=torch.float64)
    for reg, reg_m in [(0.5, 1.0), (0.05, 1.0), (0.1, 10.0)]:
        reference = ot.unbalanced.sinkhorn_unbalanced(a, b, C, reg, reg_m, numItermax=100_000, stopThr=1e-14)
        plan, _, converged = unbalanced_sinkhorn_log(C, a, b, reg, reg_m, 100_000, 1e-12)
        assert converged
        torch.testing.assert_close(plan, reference, atol=1e-12, rtol=1e-8)


def test_unbalanced_near_the_balanced_limit_is_the_exact_assignment():
    x, y = points(90, 30, seed=5)
    exact = ExactMatcher()(x, y, COST, each_real=3)
    match = UnbalancedMatcher(reg=0.005, reg_m=1000.0, num_itermax=20_000)(x, y, COST, each_real=3)
    assert match.stats["unbalanced_converged"] == 1.0
    assert len(match) == 90 and match.stats["untransported_generated"] < 0.01
    assert mean_cost(x, y, match) == pytest.approx(mean_cost(x, y, exact), rel=0.02)


def test_unbalanced_drops_the_outliers_where_the_exact_matcher_must_reach_them():
    x, y = points(300, 100, seed=6, outliers=5)
    exact = ExactMatcher()(x, y, COST, each_real=3)
    assert set(range(5)) <= set(exact.real_idx.tolist()), "the exact matcher sends 15 points 30 units away"
    match = UnbalancedMatcher(reg=0.05, reg_m=1.0)(x, y, COST, each_real=3)
    assert match.stats["unbalanced_converged"] == 1.0
    assert not set(match.real_idx.tolist()) & set(range(5))
    assert match.stats["untransported_real"] >= 0.05  # at least the outliers' share
    assert match.stats["matched_cost"] < exact.stats["matched_cost"] / 10


def test_unbalanced_that_does_not_converge_is_reported_or_refused(caplog):
    x, y = points(60, 20, seed=7)
    match = UnbalancedMatcher(reg=0.001, reg_m=100.0, num_itermax=5)(x, y, COST, each_real=3)
    assert match.stats["unbalanced_converged"] == 0.0 and "no convergence" in caplog.text
    with pytest.raises(SolverError, match="matcher.num_itermax=5"):
        UnbalancedMatcher(reg=0.001, reg_m=100.0, num_itermax=5, on_not_converged="error")(x, y, COST, each_real=3)


@pytest.mark.parametrize("override, message", [
    ("matcher=partial matcher.mass=1.5", "matcher.mass=1.5 is not allowed: a fraction in (0, 1]"),
    ("matcher=partial matcher.mass=0", "matcher.mass=0 is not allowed: a number > 0"),
    ("matcher=unbalanced matcher.reg_m=-1", "matcher.reg_m=-1 is not allowed: a number > 0"),
    ("matcher=unbalanced matcher.keep=2", "matcher.keep=2 is not allowed: a fraction in (0, 1]: of the best"),
])
def test_bad_parameters_name_the_key(config, override, message):
    with pytest.raises(ConfigError) as err:
        build(config(*override.split()))
    assert message in str(err.value)
