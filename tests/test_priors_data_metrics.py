"""Priors, the toy data sets and the distribution metrics, on their own."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from ot_gen.data import ToyDataModule
from ot_gen.data.toy import SAMPLERS
from ot_gen.errors import ConfigError
from ot_gen.evaluation.metrics import energy_distance, w1_k_to_1, w2
from ot_gen.model.priors import GaussianMixturePrior, GaussianPrior, MixedPrior


# -- priors ---------------------------------------------------------------------------------
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


# -- toy data -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_toy_set_is_seeded_and_has_independent_splits(name):
    dm = ToyDataModule(name, n_train=500, n_val=300, noise=0.05, seed=3)
    dm.setup()
    again = ToyDataModule(name, n_train=500, n_val=300, noise=0.05, seed=3)
    again.setup()
    assert dm.train_set.shape == (500, dm.data_shape[0]) and dm.data_shape[0] in (1, 2)
    assert dm.val_set.shape == (300, dm.data_shape[0])
    assert torch.isfinite(dm.train_set).all() and dm.train_set.dtype == torch.float32
    assert torch.equal(dm.train_set, again.train_set)
    assert not torch.equal(dm.train_set[:300], dm.val_set)


def test_reals_per_round_are_capped_at_the_training_set_and_come_with_their_indices():
    dm = ToyDataModule("moons", n_train=300, n_val=100, batch_size=1000)
    dm.setup()
    batch, ids = next(iter(dm.train_dataloader()))
    assert batch.shape == (300, 2)
    assert sorted(ids.tolist()) == list(range(300)) and torch.equal(dm.train_set[ids], batch)


def test_the_data_order_continues_from_the_data_modules_own_position():
    """The sampler's position is the data module's state (in every checkpoint): a module
    restored after 5 rounds serves what a fresh one serves as its 6th, 7th, ... batches."""
    fresh = ToyDataModule("moons", n_train=300, n_val=100, batch_size=64, seed=2)
    fresh.setup()
    served = []
    for _ in range(9):  # two passes of 4 full batches, and one more
        served.append(next(iter(fresh.train_dataloader()))[1])
        fresh.rounds_served += 1  # what Lightning's batch-transfer hook does for each training batch
    assert fresh.state_dict() == {"rounds_served": 9}
    resumed = ToyDataModule("moons", n_train=300, n_val=100, batch_size=64, seed=2)
    resumed.setup()
    resumed.load_state_dict({"rounds_served": 5})
    loader = iter(resumed.train_dataloader())
    for expected in served[5:8]:
        assert torch.equal(next(loader)[1], expected)
    assert not torch.equal(served[0], served[4]), "a new pass, a new order"


def test_unknown_toy_set_lists_the_choices():
    with pytest.raises(ConfigError, match="name='moonz'.*eight_gaussians"):
        ToyDataModule("moonz")


# -- metrics --------------------------------------------------------------------------------
def test_w2_of_identical_sets_is_zero_and_of_a_shift_is_the_shift():
    x = torch.randn(300, 2)
    assert w2(x, x) == pytest.approx(0.0, abs=1e-6)
    assert w2(x, x + torch.tensor([3.0, 4.0])) == pytest.approx(5.0, rel=1e-6)


def test_w2_matches_pot_on_unequal_sizes():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(25, 3)) + 1
    expected = np.sqrt(ot.emd2(np.full(40, 1 / 40), np.full(25, 1 / 25), ot.dist(x, y)))
    assert w2(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n,d", [(300, 2), (200, 50)])
def test_w2_of_equal_sizes_by_the_auction_matches_pot(n, d):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) * 1.5 + 0.3
    expected = np.sqrt(ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), ot.dist(x, y), numItermax=10**8))
    assert w2(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("k, d", [(1, 2), (3, 5), (10, 784)])
def test_w1_k_to_1_is_pots_exact_w1_with_k_generated_points_per_real(k, d):
    g = torch.Generator().manual_seed(k)
    reals, generated = torch.rand(60, d, generator=g), torch.rand(60 * k, d, generator=g) + 0.1
    M = ot.dist(generated.double().numpy(), reals.double().numpy(), metric="euclidean")
    expected = ot.emd2(np.full(60 * k, 1 / (60 * k)), np.full(60, 1 / 60), M)
    assert w1_k_to_1(generated, reals) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="not a multiple"):
        w1_k_to_1(generated[:-1], reals)


def test_energy_distance_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g)
    assert abs(energy_distance(x, y)) < 0.01
    assert energy_distance(x, y + 1.0) > 0.5


def test_energy_distance_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 2, generator=g).double(), torch.randn(5, 2, generator=g).double()
    xy = np.mean([np.linalg.norm(a - b) for a in x.numpy() for b in y.numpy()])
    xx = np.mean([np.linalg.norm(a - b) for i, a in enumerate(x.numpy()) for j, b in enumerate(x.numpy()) if i != j])
    yy = np.mean([np.linalg.norm(a - b) for i, a in enumerate(y.numpy()) for j, b in enumerate(y.numpy()) if i != j])
    assert energy_distance(x, y) == pytest.approx(2 * xy - xx - yy, rel=1e-6)


def test_sliced_w2_is_zero_for_identical_sets_and_the_shift_over_sqrt_d_for_a_shift():
    from ot_gen.evaluation.metrics import sliced_w2

    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sliced_w2(x, x) == pytest.approx(0.0, abs=1e-12)
    shift = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=torch.float64)  # |s| = 5, d = 4
    assert sliced_w2(x, x + shift, n_projections=4000) == pytest.approx(5 / 2, rel=0.05)
    assert sliced_w2(x, x + shift) == sliced_w2(x, x + shift), "fixed directions: reproducible"


def test_knn_precision_recall_tell_blur_and_collapse_from_a_good_sample():
    from ot_gen.evaluation.metrics import knn_precision_recall

    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 8, generator=g)
    same = torch.randn(500, 8, generator=g)
    assert min(knn_precision_recall(real, same)) > 0.8, "a second sample of the same law"
    collapsed = real[:5].repeat(100, 1) + 1e-3 * torch.randn(500, 8, generator=g)
    precision, recall = knn_precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.1, "realistic samples, little variety"
    shrunk = 0.3 * torch.randn(500, 8, generator=g)  # what blur does: everything near the mean
    precision, recall = knn_precision_recall(real, shrunk)
    assert precision > 0.9 and recall < 0.3
    assert knn_precision_recall(real, real + 100.0) == (0.0, 0.0)
