"""Every matcher of conf/matcher on small real problems: shapes, balance, limits, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ot_gen.matching.costs import SqEuclidean
from ot_gen.errors import NonFiniteError
from ot_gen.matching import (
    CriticMatcher, ExactMatcher, NearestMatcher, PartialMatcher, RandomMatcher, SemiDiscreteMatcher,
    SinkhornMatcher, UnbalancedMatcher, balance_excess, round_to_assignment,
)

COST = SqEuclidean()


def points(m, n, d=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def semidiscrete(y, **kw):
    matcher = SemiDiscreteMatcher(len(y), **kw)
    matcher.bind(y)
    return matcher


def total(x, y, match):
    return COST.paired(x[match.gen_idx], y[match.real_idx]).sum().item()


ASSIGNMENTS = [ExactMatcher, lambda: ExactMatcher(solver="hungarian"), RandomMatcher, lambda: SinkhornMatcher(reg=0.1)]
MAPS = [NearestMatcher, lambda: NearestMatcher("generated_to_real"), lambda: CriticMatcher((2,), critic_steps=5)]


@pytest.mark.parametrize("make", ASSIGNMENTS, ids=["exact", "hungarian", "random", "sinkhorn"])
@pytest.mark.parametrize("m,n,k", [(40, 40, 1), (90, 30, 3), (100, 30, 2)])
def test_assignment_matchers_give_each_real_exactly_k_distinct_partners(make, m, n, k):
    x, y = points(m, n, seed=m + k)
    match = make()(x, y, COST, each_real=k)
    assert len(match) == k * n
    assert len(set(match.gen_idx.tolist())) == k * n, "a generated point used twice"
    assert 0 <= match.gen_idx.min() and match.gen_idx.max() < m
    assert torch.bincount(match.real_idx, minlength=n).tolist() == [k] * n
    assert match.stats["dropped"] == 0 and match.stats["reals_sharing"] == 0


@pytest.mark.parametrize("make", MAPS, ids=["nearest", "nearest_reverse", "critic"])
def test_map_matchers_give_valid_indices_and_report_how_far_from_a_bijection(make):
    x, y = points(90, 30, seed=1)
    match = make()(x, y, COST, each_real=3)
    assert match.gen_idx.shape == match.real_idx.shape
    assert 0 <= match.gen_idx.min() and match.gen_idx.max() < 90
    assert 0 <= match.real_idx.min() and match.real_idx.max() < 30
    for key in ("matched_cost", "dropped", "partner_spread", "generated_used", "reals_sharing", "solve_s"):
        assert key in match.stats


def test_nearest_is_the_brute_force_nearest_neighbour_in_both_directions():
    x, y = points(50, 20, seed=2)
    C = COST.pairwise(x, y)
    fwd = NearestMatcher(chunk=7)(x, y, COST, each_real=2)
    assert fwd.real_idx.tolist() == [j for j in range(20) for _ in range(2)]
    expected = C.T.topk(2, dim=1, largest=False).indices.reshape(-1)
    assert fwd.gen_idx.tolist() == expected.tolist()
    back = NearestMatcher("generated_to_real", chunk=7)(x, y, COST)
    assert back.gen_idx.tolist() == list(range(50))
    assert back.real_idx.tolist() == C.argmin(1).tolist()


def test_nearest_reports_shared_generated_points():
    """Three reals around one generated point: all three take it."""
    x = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    y = torch.tensor([[0.1, 0.0], [0.0, 0.1], [-0.1, 0.0]])
    match = NearestMatcher()(x, y, COST)
    assert match.gen_idx.tolist() == [0, 0, 0]
    assert match.stats["generated_used"] == 0.5
    assert match.stats["reals_sharing"] == 3


def test_sinkhorn_approaches_the_exact_cost_as_the_regularisation_shrinks():
    x, y = points(120, 40, d=3, seed=3, dtype=torch.float64)
    exact = total(x, y, ExactMatcher()(x, y, COST, each_real=3)) / 120
    plan_gaps, rounded_gaps = [], []
    for reg in (3.0, 0.3, 0.02):
        match = SinkhornMatcher(reg=reg, num_itermax=100_000, stop_thr=1e-6)(x, y, COST, each_real=3)
        assert match.stats["sinkhorn_converged"] == 1.0
        plan_gaps.append(match.stats["sinkhorn_plan_cost"] / exact - 1)
        rounded_gaps.append(match.stats["matched_cost"] / exact - 1)
    assert plan_gaps[0] > plan_gaps[1] > plan_gaps[2] > 0, "the entropic plan's cost falls to the exact one"
    assert plan_gaps[2] < 0.01
    assert min(rounded_gaps) >= -1e-9, "no assignment beats the exact one"
    assert rounded_gaps[2] < rounded_gaps[0] and rounded_gaps[2] < 0.01


def test_sinkhorn_that_does_not_converge_is_reported_or_refused():
    from ot_gen.errors import SolverError

    x, y = points(60, 20, seed=4)
    match = SinkhornMatcher(reg=0.001, num_itermax=3)(x, y, COST, each_real=3)
    assert match.stats["sinkhorn_converged"] == 0.0
    assert torch.bincount(match.real_idx, minlength=20).tolist() == [3] * 20, "still a valid assignment"
    with pytest.raises(SolverError, match="matcher.num_itermax=3"):
        SinkhornMatcher(reg=0.001, num_itermax=3, on_not_converged="error")(x, y, COST, each_real=3)


def test_rounding_keeps_capacities_and_recovers_a_permutation_plan():
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    plan = torch.full((30, 30), -50.0)
    plan[torch.arange(30), perm] = 0.0
    assert round_to_assignment(plan, torch.ones(30, dtype=torch.long)).tolist() == perm.tolist()
    score = torch.randn(100, 7, generator=torch.Generator().manual_seed(1))
    capacity = torch.tensor([30, 20, 10, 10, 10, 10, 10])
    assert torch.bincount(round_to_assignment(score, capacity), minlength=7).tolist() == capacity.tolist()


def test_semidiscrete_balance_improves_with_ascent_and_the_potential_persists():
    x, y = points(600, 100, seed=5)
    before = semidiscrete(y, max_iters=0)(x, y, COST, each_real=6).stats["balance"]
    matcher = semidiscrete(y, max_iters=300, tol=1e-6, lr=0.05)
    after = matcher(x, y, COST, each_real=6).stats["balance"]
    assert after < 0.5 * before
    assert matcher.psi.abs().sum() > 0
    # The potential and its Adam state are checkpoint state.
    state = matcher.state_dict()
    clone = semidiscrete(y)
    clone.load_state_dict(state)
    assert torch.equal(clone.psi, matcher.psi)
    assert clone.optimizer.state_dict()["state"][0]["step"] == 300


def test_semidiscrete_does_not_learn_in_eval_mode():
    x, y = points(200, 50, seed=6)
    matcher = semidiscrete(y).eval()
    match = matcher(x, y, COST)
    assert match.stats["potential_iters"] == 0 and matcher.psi.abs().sum() == 0
    assert match.real_idx.tolist() == COST.pairwise(x, y).argmin(1).tolist()


def test_critic_balance_improves_with_training():
    x, y = points(300, 60, seed=7)
    torch.manual_seed(0)
    untrained = CriticMatcher((2,), critic_steps=0)(x, y, COST, each_real=5).stats
    torch.manual_seed(0)
    trained = CriticMatcher((2,), critic_steps=300, lr=3e-3)(x, y, COST, each_real=5).stats
    assert trained["balance"] < 0.6 * untrained["balance"]
    assert trained["dropped"] < untrained["dropped"]
    assert "assignment_var" in trained


def test_balance_excess_is_zero_for_the_most_even_histograms():
    assert balance_excess(torch.tensor([3, 3, 3]), 9) == pytest.approx(0)
    assert balance_excess(torch.tensor([1, 1, 0, 0]), 2) == pytest.approx(0), "m < n: at most one each"
    assert balance_excess(torch.tensor([9, 0, 0]), 9) == pytest.approx(2 / 3)


ALL = {
    "exact": ExactMatcher, "hungarian": lambda: ExactMatcher(solver="hungarian"), "random": RandomMatcher,
    "sinkhorn": SinkhornMatcher, "nearest": NearestMatcher, "critic": lambda: CriticMatcher((2,), critic_steps=3),
    "partial": PartialMatcher, "unbalanced": UnbalancedMatcher,
}


@pytest.mark.parametrize("name", [*ALL, "semidiscrete"])
def test_ties_and_duplicate_points_still_give_valid_pairs(name):
    x = torch.zeros(40, 2)  # every generated point identical
    y = torch.tensor([[1.0, 1.0]] * 10 + [[-1.0, 0.0]] * 10)  # two duplicated reals
    matcher = semidiscrete(y, max_iters=5) if name == "semidiscrete" else ALL[name]()
    match = matcher(x, y, COST, each_real=2)
    assert torch.isfinite(torch.tensor(match.stats["matched_cost"]))
    assert 0 <= match.real_idx.min() and match.real_idx.max() < 20
    if matcher.bijective:
        assert torch.bincount(match.real_idx, minlength=20).tolist() == [2] * 20


@pytest.mark.parametrize("name", [*ALL, "semidiscrete"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_rejected_with_a_clear_error(name, bad):
    x, y = points(20, 10, seed=8)
    matcher = semidiscrete(y) if name == "semidiscrete" else ALL[name]()
    x[3, 1] = bad
    with pytest.raises(NonFiniteError, match=f"matcher {matcher.name}: generated points contain NaN or Inf"):
        matcher(x, y, COST, each_real=2)
    x2, y2 = points(20, 10, seed=8)
    y2[0, 0] = bad
    with pytest.raises(NonFiniteError, match="real points contain NaN or Inf"):
        matcher(x2, y2, COST, each_real=2)


def test_a_cost_that_overflows_on_finite_points_is_rejected():
    x = torch.full((4, 2), 1e200, dtype=torch.float64)  # finite, but its square is not
    y = -x
    with pytest.raises(NonFiniteError, match="cost matrix"):
        ExactMatcher()(x, y, COST)


# -- in real training runs --------------------------------------------------------------
from ot_gen.errors import ConfigError  # noqa: E402
from ot_gen.run.build import build  # noqa: E402
from ot_gen.run.train import run  # noqa: E402

TINY = ["trainer.max_steps=40", "mode.val_every_rounds=20", "eval.n_generated=2000", "callbacks=none"]


@pytest.mark.parametrize("matcher", ["nearest", "sinkhorn", "critic", "random", "partial", "unbalanced"])
def test_each_matcher_trains_in_minibatch_mode(config, matcher):
    import json

    cfg = config(f"matcher={matcher}", *TINY)
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["rounds"] == 40
    if matcher != "random":  # a matching never pairs worse than the identity pairing of the same points
        assert metrics["train/matched_cost"] <= metrics["train/identity_cost"]


@pytest.mark.parametrize("matcher", ["nearest", "sinkhorn", "critic", "semidiscrete", "partial", "unbalanced"])
def test_each_matcher_trains_in_oversampled_mode_with_its_diagnostics(config, matcher, tmp_path):
    import json

    cfg = config(f"matcher={matcher}", "mode=oversampled", "mode.pool_size=200", "mode.k=5",
                 "trainer.max_steps=40", "mode.val_every_rounds=5", "eval.n_generated=2000")
    run(cfg)
    metrics = json.loads((tmp_path / "run0" / "metrics.json").read_text())
    for key in ("train/matched_cost", "train/solve_s", "train/dropped", "train/partner_spread", "s_per_round"):
        assert key in metrics
    if matcher in ("critic", "semidiscrete"):
        assert "train/balance" in metrics
    if matcher in ("partial", "unbalanced"):
        assert 0 <= metrics["train/untransported_real"] < 1 and 0 <= metrics["train/untransported_generated"] < 1


def test_semidiscrete_in_minibatch_mode_is_a_config_error(config):
    with pytest.raises(ConfigError, match="matcher='semidiscrete' .*runs in mode=oversampled"):
        build(config("matcher=semidiscrete"))


def test_semidiscrete_potential_resumes_from_the_checkpoint(config, tmp_path):
    first = config("matcher=semidiscrete", "mode=oversampled", "mode.pool_size=200", "mode.k=5",
                   "trainer.max_steps=20", "eval.n_generated=0", "mode.val_every_rounds=2")
    run(first)
    ckpt = torch.load(tmp_path / "run0" / "checkpoints" / "last.ckpt", weights_only=False)
    psi = ckpt["state_dict"]["matcher.psi"]
    assert psi.shape == (2000,) and psi.abs().sum() > 0
    second = config("matcher=semidiscrete", "mode=oversampled", "mode.pool_size=200", "mode.k=5",
                    "trainer.max_steps=20", "eval.n_generated=0", "mode.val_every_rounds=2",
                    f"ckpt_path={tmp_path / 'run0' / 'checkpoints' / 'last.ckpt'}")
    module, data, trainer, _ = build(second)
    trainer.fit(module, datamodule=data, ckpt_path=second.ckpt_path)
    assert torch.equal(module.matcher.psi.detach().cpu(), psi), "no step taken: potential restored as saved"
