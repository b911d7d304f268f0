"""Property-based tests (hypothesis) of every matcher: random shapes, duplicated points,
ties, extreme magnitudes and non-finite values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ot_gen.matching.costs import Euclidean, L1, SqEuclidean
from ot_gen.errors import NonFiniteError
from ot_gen.matching import (
    CriticMatcher, ExactMatcher, NearestMatcher, RandomMatcher, SemiDiscreteMatcher,
    SinkhornMatcher,
)

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COSTS = st.sampled_from([SqEuclidean(), Euclidean(), L1()])


@st.composite
def problems(draw):
    """(x, y, k): n reals, m >= k·n generated points, in d dims, with duplicates and a
    common scale from 1e-3 to 1e3; integer-valued coordinates make exact ties common."""
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 4))
    m = k * n + draw(st.integers(0, 6))
    d = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # ties: coarse integer grid
        x, y = x.round(), y.round()
    if draw(st.booleans()) and m > 1:  # duplicated generated points
        x[m // 2 :] = x[: m - m // 2].clone()
    if draw(st.booleans()) and n > 1:  # duplicated reals
        y[-1] = y[0]
    return x * scale, y * scale, k


def cost_of(x, y, match, cost):
    return cost.paired(x[match.gen_idx], y[match.real_idx]).sum().item()


def assert_k_to_one(match, m, n, k):
    assert len(set(match.gen_idx.tolist())) == len(match) == k * n
    assert 0 <= int(match.gen_idx.min()) and int(match.gen_idx.max()) < m
    assert torch.bincount(match.real_idx, minlength=n).tolist() == [k] * n


@SETTINGS
@given(problems(), COSTS)
def test_exact_and_hungarian_agree_and_are_valid(problem, cost):
    x, y, k = problem
    exact = ExactMatcher(solver="auction")(x, y, cost, each_real=k)
    hung = ExactMatcher(solver="hungarian")(x, y, cost, each_real=k)
    for match in (exact, hung):
        assert_k_to_one(match, len(x), len(y), k)
    a, b = cost_of(x, y, exact, cost), cost_of(x, y, hung, cost)
    assert math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-9 * max(1.0, abs(b)))
    assert a <= cost_of(x, y, RandomMatcher()(x, y, cost, each_real=k), cost) * (1 + 1e-9) + 1e-12


@SETTINGS
@given(problems(), COSTS)
def test_sinkhorn_and_random_are_always_valid_assignments(problem, cost):
    x, y, k = problem
    for matcher in (SinkhornMatcher(reg=0.5, num_itermax=200), RandomMatcher()):
        assert_k_to_one(matcher(x, y, cost, each_real=k), len(x), len(y), k)


@SETTINGS
@given(problems())
def test_maps_give_indices_in_range(problem):
    x, y, k = problem
    sd = SemiDiscreteMatcher(len(y), max_iters=5)
    sd.bind(y)
    for matcher in (NearestMatcher(), NearestMatcher("generated_to_real"), sd,
                    CriticMatcher((x.shape[1],), critic_steps=2).double()):
        match = matcher(x, y, SqEuclidean(), each_real=k)
        assert len(match) > 0 and match.gen_idx.shape == match.real_idx.shape
        assert 0 <= int(match.gen_idx.min()) and int(match.gen_idx.max()) < len(x)
        assert 0 <= int(match.real_idx.min()) and int(match.real_idx.max()) < len(y)
        assert math.isfinite(match.stats["matched_cost"])


MATCHERS = [ExactMatcher, lambda: ExactMatcher(solver="hungarian"), RandomMatcher, SinkhornMatcher, NearestMatcher,
            lambda: CriticMatcher((3,), critic_steps=1).double()]


@SETTINGS
@given(st.integers(0, len(MATCHERS) - 1), st.sampled_from([math.nan, math.inf, -math.inf]),
       st.booleans(), st.integers(0, 10**6))
def test_non_finite_values_anywhere_are_rejected(which, bad, in_reals, where):
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    target = y if in_reals else x
    target.view(-1)[where % target.numel()] = bad
    with pytest.raises(NonFiniteError, match="contain NaN or Inf"):
        MATCHERS[which]()(x, y, SqEuclidean(), each_real=2)
