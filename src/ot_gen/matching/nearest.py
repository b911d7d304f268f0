"""The Earth-moving net's pairing: nearest neighbours, no transport constraint."""

from __future__ import annotations

import torch

from ot_gen.errors import check_choice, check_positive_int
from ot_gen.matching.base import Matcher

DIRECTIONS = ["real_to_generated", "generated_to_real"]


class NearestMatcher(Matcher):
    """`real_to_generated` (the seed's choice): every real takes its `each_real` nearest
    generated points (its k nearest in the oversampled mode), so a generated point may
    serve several reals and many get no gradient. `generated_to_real`: every generated
    point goes to its nearest real, so reals may be left without partner.

    Not a bijection: `generated_used` and `reals_sharing` (reals whose partner also serves
    another real) say how far from one it is. Rows are done `chunk` at a time, so the
    full cost matrix is never held.
    """

    name = "nearest"
    bijective = False

    def __init__(self, direction: str = "real_to_generated", chunk: int = 4096):
        super().__init__()
        self.direction = check_choice("direction", direction, DIRECTIONS)
        self.chunk = check_positive_int("chunk", chunk)

    def _pair(self, x, y, cost, each_real, real_ids):
        if self.direction == "generated_to_real":
            real = torch.cat([self._nearest(rows, y, cost, 1) for rows in x.split(self.chunk)]).squeeze(1)
            return torch.arange(len(x), device=x.device), real
        k = min(each_real, len(x))
        gen = torch.cat([self._nearest(rows, x, cost, k) for rows in y.split(self.chunk)])
        real = torch.arange(len(y), device=y.device).repeat_interleave(k)
        return gen.reshape(-1), real

    def _nearest(self, rows, points, cost, k):
        return self.cost_matrix(rows, points, cost).topk(k, dim=1, largest=False).indices

    def extra_repr(self) -> str:
        return f"{self.name}, direction={self.direction}"
