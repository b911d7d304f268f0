"""The toy data sets and the data module's order of reals, on their own."""

from __future__ import annotations

import pytest
import torch

from ot_gen.data import ToyDataModule
from ot_gen.data.toy import SAMPLERS
from ot_gen.errors import ConfigError


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


@pytest.mark.parametrize("name", ["eight_gaussians", "uniform_1d"])
def test_outliers_move_a_seeded_share_of_the_training_points_far_away(name):
    clean = ToyDataModule(name, n_train=1000, n_val=300, seed=2)
    noisy = ToyDataModule(name, n_train=1000, n_val=300, seed=2, outliers=0.05)
    clean.setup(), noisy.setup()
    ids = noisy.outlier_ids
    assert len(ids) == 50 and len(set(ids.tolist())) == 50
    radius = clean.train_set.norm(dim=1).max()
    assert torch.allclose(noisy.train_set[ids].norm(dim=1), 4 * radius)
    others = torch.ones(1000, dtype=torch.bool)
    others[ids] = False
    assert torch.equal(noisy.train_set[others], clean.train_set[others])
    assert torch.equal(noisy.val_set, clean.val_set), "held-out points stay clean"


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


def test_under_ddp_each_rank_takes_its_share_of_each_round_also_after_a_resume():
    """Rank r serves the batches r, r + W, ... of the pass (as Lightning's wrapper handed
    them out), shards itself so Lightning does not wrap it (a DistributedSampler), and
    after a resume mid-pass serves only the rest of it: the wrapper's indexing of a
    shorter rest failed there (IndexError)."""
    from torch.utils.data import DistributedSampler

    from ot_gen.data.datamodule import EpochShuffle

    served = 0
    batches = lambda sampler: [b.tolist() for b in sampler]  # noqa: E731  (index tensors)
    whole = batches(EpochShuffle(600, 50, 1, seed=3, rounds_served=lambda: served, rank=0))  # 12 batches
    ranks = [EpochShuffle(600, 50, 2, seed=3, rounds_served=lambda: served, rank=r) for r in (0, 1)]
    assert isinstance(ranks[0], DistributedSampler) and [len(s) for s in ranks] == [6, 6]
    assert [batches(s) for s in ranks] == [whole[0::2], whole[1::2]]
    served = 4  # resumed after 4 rounds of 2 batches
    assert [batches(s) for s in ranks] == [whole[8::2], whole[9::2]]


def test_unknown_toy_set_lists_the_choices():
    with pytest.raises(ConfigError, match="name='moonz'.*eight_gaussians"):
        ToyDataModule("moonz")
