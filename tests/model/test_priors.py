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
