"""Ground costs c(x, y) between points, used both to match and as the regression loss.

Every cost offers two views of the same function: `pairwise(x, y)` gives the (m, n)
matrix the matchers solve on, `paired(x, y)` the (p,) costs of already-paired rows that
the generator regresses on. Points are flattened to vectors first, so images work too.
"""

from __future__ import annotations

import torch


class Cost:
    """Base class: subclasses implement `_paired` on flat (p, d) rows and `_pairwise`."""

    name = "cost"

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._pairwise(x.flatten(1), y.flatten(1))

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._paired(x.flatten(1), y.flatten(1))

    def _pairwise(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _paired(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SqEuclidean(Cost):
    """c(x, y) = ||x - y||², the default (W2 geometry)."""

    name = "sqeuclidean"

    def _pairwise(self, x, y):
        # ||x||² + ||y||² - 2 x·y is fast but cancels badly; clamp the round-off below 0.
        d = (x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2.0 * x @ y.T
        return d.clamp_min_(0.0)

    def _paired(self, x, y):
        return ((x - y) ** 2).sum(1)


class Euclidean(Cost):
    """c(x, y) = ||x - y|| (the Earth-moving net's "L2 unsquared")."""

    name = "euclidean"

    def _pairwise(self, x, y):
        return torch.cdist(x, y)

    def _paired(self, x, y):
        return (x - y).norm(dim=1)


class L1(Cost):
    """c(x, y) = ||x - y||_1."""

    name = "l1"

    def _pairwise(self, x, y):
        return torch.cdist(x, y, p=1.0)

    def _paired(self, x, y):
        return (x - y).abs().sum(1)
