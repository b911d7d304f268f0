"""Distribution distances between generated and held-out samples."""

from __future__ import annotations

import numpy as np
import ot
import torch


def w2(x: torch.Tensor, y: torch.Tensor, num_itermax: int = 100_000_000) -> float:
    """Exact 2-Wasserstein distance between two empirical measures (POT, float64).

    Uniform weights on each sample; sizes may differ.
    """
    xs = x.detach().flatten(1).double().cpu().numpy()
    ys = y.detach().flatten(1).double().cpu().numpy()
    M = ot.dist(xs, ys, metric="sqeuclidean")
    a = np.full(len(xs), 1.0 / len(xs))
    b = np.full(len(ys), 1.0 / len(ys))
    return float(np.sqrt(max(ot.emd2(a, b, M, numItermax=num_itermax), 0.0)))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased estimate of the energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'|.

    Zero in expectation exactly when the distributions agree, and, unlike W2 between
    samples, it penalises a generator that shrinks clusters. The within-sample terms are
    U-statistics (diagonal excluded), so the estimate can be slightly negative.
    """
    xs = x.detach().flatten(1).double()
    ys = y.detach().flatten(1).double()
    m, n = len(xs), len(ys)
    xy = torch.cdist(xs, ys).mean()
    xx = torch.cdist(xs, xs).sum() / (m * (m - 1))
    yy = torch.cdist(ys, ys).sum() / (n * (n - 1))
    return float(2 * xy - xx - yy)
