"""The priors on their own: spread, centres from the seed, state, errors that name the key."""

from __future__ import annotations

import pytest
import torch

from ot_gen.errors import ConfigError
from ot_gen.model.priors import GaussianMixturePrior, GaussianPrior, MixedPrior


def test_gaussian_prior_has_the_configured_std():
    torch.manual_seed(0)
    z = GaussianPrior(dim=3, std=0.25).sample(20_000)
    assert z.shape == (20_000, 3)
    assert z.std(0).numpy() == pytest.approx([0.25] * 3, rel=0.03)


def test_gmm_centres_come_from_the_seed_and_travel_in_the_state_dict():
    a, b = GaussianMixturePrior(4, 5, 0.1, seed=1), GaussianMixturePrior(4, 5, 0.1, seed=1)
    c = GaussianMixturePrior(4, 5, 0.1, seed=2)
    assert torch.equal(a.centres, b.centres) and not torch.equal(a.centres, c.centres)
    c.load_state_dict(a.state_dict())
    assert torch.equal(a.centres, c.centres)


def test_gmm_samples_sit_sigma_around_centres():
    prior = GaussianMixturePrior(2, 3, sigma=0.01, seed=0)
    z = prior.sample(3000)
    nearest = torch.cdist(z, prior.centres).min(1).values
    assert nearest.max() < 0.06
    assert len(torch.unique(torch.cdist(z, prior.centres).argmin(1))) == 3


def test_mixed_prior_shifts_only_the_bool_dims_by_coin_flips():
    torch.manual_seed(0)
    z = MixedPrior(dim=3, bool_dims=2, std=0.01).sample(4000)
    assert z[:, 0].abs().max() < 0.06
    for d in (1, 2):
        coins = z[:, d].round()
        assert set(coins.tolist()) == {0.0, 1.0}
        assert coins.mean().item() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: GaussianPrior(0), "dim=0"),
        (lambda: GaussianPrior(2, std=-1.0), "std=-1.0"),
        (lambda: GaussianMixturePrior(2, 0, 0.1), "n_components=0"),
        (lambda: GaussianMixturePrior(2, 3, 0.0), "sigma=0.0"),
        (lambda: MixedPrior(2, bool_dims=3), "bool_dims=3"),
    ],
)
def test_bad_prior_values_name_the_key(make, key):
    with pytest.raises(ConfigError, match=key):
        make()


# -- the adaptive mixture ---------------------------------------------------------------------
def separated(**adapt) -> GaussianMixturePrior:
    """Four components far apart (centres 10 apart, sigma 0.1): a latent's component is plain."""
    prior = GaussianMixturePrior(2, 4, sigma=0.1, seed=0, **adapt)
    prior.centres.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    return prior


def test_components_of_finds_the_component_that_drew_each_latent():
    prior = separated(adapt_weights=True)
    k = torch.arange(4).repeat(50)
    z = prior.centres[k] + 0.1 * torch.randn(200, 2)
    assert torch.equal(prior.components_of(z), k)


def test_a_component_whose_points_go_unmatched_loses_weight_and_one_taken_twice_gains():
    torch.manual_seed(0)
    prior = separated(adapt_weights=True, adapt_rate=0.5)
    drawn = prior.sample(4000)
    comp = prior.components_of(drawn)
    # component 0: never matched; component 1: every point twice
    paired = torch.cat([torch.nonzero(comp != 0).squeeze(1), torch.nonzero(comp == 1).squeeze(1)])
    z = drawn[paired]
    figures = prior.adapt(prior.round_statistics(drawn, slice(None), paired, z, z))
    w = prior.weights
    assert w[0] == pytest.approx(0.125, rel=0.05), "half the way to 0 at adapt_rate 0.5"
    assert w[1] > w[2] and w[1] > w[3] and float(w.sum()) == pytest.approx(1.0)
    assert figures["prior_points"] == 4000 and figures["prior_effective_components"] < 4
    z = prior.sample(20_000)
    share = torch.bincount(prior.components_of(z), minlength=4).double() / 20_000
    assert torch.allclose(share, w, atol=0.015), "samples follow the weights"


def test_a_round_that_matches_every_point_once_leaves_the_weights_and_says_so_once(caplog):
    prior = separated(adapt_weights=True)
    for _ in range(2):
        z = prior.sample(400)
        prior.adapt(prior.round_statistics(z, slice(None), torch.arange(len(z)), z, z))
    assert torch.allclose(prior.weights, torch.full((4,), 0.25, dtype=torch.float64))
    said = [r for r in caplog.records if "matched every drawn point exactly once" in r.message]
    assert len(said) == 1


def test_sigma_moves_towards_the_spread_of_the_partners_within_its_bounds():
    torch.manual_seed(0)
    prior = separated(adapt_sigma=True, adapt_rate=1.0, sigma_bounds=(0.1, 3.0))
    z = prior.sample(4000)
    comp = prior.components_of(z)
    x = z.clone()
    y = prior.centres[comp] + 2.0 * (z - prior.centres[comp])  # partners spread twice as wide (4x variance)
    y[comp == 3] = prior.centres[3]  # component 3's partners: one point
    every = torch.arange(len(z))
    prior.adapt(prior.round_statistics(z, slice(None), every, x, y))
    assert prior.sigmas[:3] == pytest.approx(torch.full((3,), 0.2), rel=0.02), "sigma · sqrt(4)"
    assert prior.sigmas[3] == pytest.approx(0.01), "shrunk, but not below sigma_bounds[0] · sigma"
    prior.adapt(prior.round_statistics(z, slice(None), every, x, 100 * y))
    assert float(prior.sigmas.max()) == pytest.approx(0.3), "nor above sigma_bounds[1] · sigma"


def test_a_dead_component_respawns_next_to_the_heaviest_the_same_way_every_time():
    def respawn():
        prior = separated(adapt_weights=True, respawn_below=0.5, adapt_rate=1.0)
        drawn = prior.sample(4000)
        comp = prior.components_of(drawn)
        # 0 dies, 2 is the heaviest
        paired = torch.cat([torch.nonzero(comp != 0).squeeze(1), torch.nonzero(comp == 2).squeeze(1)])
        z = drawn[paired]
        figures = prior.adapt(prior.round_statistics(drawn, slice(None), paired, z, z))
        return prior, figures

    torch.manual_seed(0)
    a, figures = respawn()
    torch.manual_seed(1)  # another global stream: the respawn draws from the prior's own generator
    b, _ = respawn()
    assert figures["prior_respawned"] == 1 and int(a.respawned) == 1
    assert torch.equal(a.centres, b.centres) and torch.equal(a.weights, b.weights)
    assert torch.dist(a.centres[0], a.centres[2]) < 1.0, "moved next to the heaviest"
    assert a.weights[0] == a.weights[2] and float(a.weights.sum()) == pytest.approx(1.0)
    assert a.weights[0] > 0.5 / 4


def test_a_fixed_mixture_keeps_the_state_old_checkpoints_hold_and_an_adaptive_one_saves_its_own():
    assert set(GaussianMixturePrior(2, 3, 0.1).state_dict()) == {"centres"}
    adaptive = separated(adapt_weights=True, adapt_sigma=True)
    assert set(adaptive.state_dict()) == {"centres", "weights", "sigmas", "respawned"}
    adaptive.weights.copy_(torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64))
    other = separated(adapt_weights=True, adapt_sigma=True)
    other.load_state_dict(adaptive.state_dict())
    assert torch.equal(other.weights, adaptive.weights)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"respawn_below": 0.1}, "respawn_below=0.1"),
        ({"adapt_weights": True, "respawn_below": 1.5}, "respawn_below=1.5"),
        ({"adapt_sigma": True, "adapt_rate": 0.0}, "adapt_rate=0.0"),
        ({"adapt_sigma": True, "sigma_bounds": (2.0, 3.0)}, r"sigma_bounds=\[2.0, 3.0\]"),
        ({"adapt_weights": "yes"}, "adapt_weights='yes'"),
    ],
)
def test_bad_adaptive_values_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        GaussianMixturePrior(2, 3, 0.1, **kwargs)
