"""The distribution metrics against POT and brute force."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from ot_gen.evaluation.metrics import energy_distance, w1_k_to_1, w2


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



def test_sliced_w2_of_equal_sizes_is_pots_value_and_unequal_sizes_go_to_pot():
    import ot

    from ot_gen.evaluation.metrics import sliced_w2

    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(500, 3, generator=g, dtype=torch.float64) + 0.3
    pot = float(ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), n_projections=64, p=2, seed=3))
    assert sliced_w2(x, y, n_projections=64, seed=3) == pytest.approx(pot, rel=1e-10)  # the sorted path
    pot = float(ot.sliced_wasserstein_distance(x.numpy(), y[:300].numpy(), n_projections=64, p=2, seed=3))
    assert sliced_w2(x, y[:300], n_projections=64, seed=3) == pot

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


def test_w2_each_solves_pairs_at_once_in_threads_with_the_values_of_one_at_a_time(monkeypatch):
    import threading

    from ot_gen.evaluation import metrics
    from ot_gen.matching.auction import threads_can_solve

    g = torch.Generator().manual_seed(2)
    pairs = [(torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + s) for s in range(4)]
    one_by_one = [metrics.w2(x, y) for x, y in pairs]  # a solve has chosen numba's threading layer
    threads, solve = set(), metrics.w2
    monkeypatch.setattr(metrics, "w2", lambda x, y: threads.add(threading.get_ident()) or solve(x, y))
    assert metrics.w2_each(pairs) == one_by_one
    assert (threading.get_ident() not in threads) == threads_can_solve()  # pool threads, or this one
    threads.clear()
    monkeypatch.setattr(metrics, "threads_can_solve", lambda: False)  # numba's workqueue layer
    assert metrics.w2_each(pairs) == one_by_one and threads == {threading.get_ident()}
