"""The two training modes: what one round of training is made of.

Built from `conf/mode/*.yaml` by Hydra's `_target_`; each checks its own values. The
LightningModule runs one round per training batch (`val_every_rounds` sets how often the
validation metrics are computed, in rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ot_gen.errors import check_choice, check_positive_int


@dataclass
class Minibatch:
    """n reals, ratio·n generated, matched (each real takes its best distinct generated
    point), then ONE optimizer step on the mean cost of the matched pairs."""

    batch_size: int = 256
    ratio: int = 1
    val_every_rounds: int = 250

    def __post_init__(self):
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("ratio", self.ratio)
        check_positive_int("val_every_rounds", self.val_every_rounds)

    @property
    def reals_per_round(self) -> int:
        return self.batch_size


@dataclass
class Oversampled:
    """A pool of reals, k·pool generated, an exact k-to-1 assignment, then `fit_epochs`
    passes of minibatch regression over all k·pool pairs (the OT-GAN paper's method).

    `k_schedule=sqrt` grows k from `k_start` to `k` over `k_ramp_rounds` rounds as
    k_start + (k - k_start)·sqrt(round / k_ramp_rounds); `constant` uses k throughout.
    """

    pool_size: int = 500
    k: int = 10
    fit_epochs: int = 1
    fit_batch_size: int = 256
    k_schedule: str = "constant"
    k_start: int = 1
    k_ramp_rounds: int = 50
    val_every_rounds: int = 5

    def __post_init__(self):
        check_positive_int("pool_size", self.pool_size)
        check_positive_int("k", self.k)
        check_positive_int("fit_epochs", self.fit_epochs)
        check_positive_int("fit_batch_size", self.fit_batch_size)
        check_choice("k_schedule", self.k_schedule, ["constant", "sqrt"])
        check_positive_int("k_start", self.k_start)
        check_positive_int("k_ramp_rounds", self.k_ramp_rounds)
        check_positive_int("val_every_rounds", self.val_every_rounds)

    @property
    def reals_per_round(self) -> int:
        return self.pool_size

    def k_at(self, round_index: int) -> int:
        if self.k_schedule == "constant" or self.k_start >= self.k:
            return self.k
        frac = min(1.0, round_index / self.k_ramp_rounds)
        return int(round(self.k_start + (self.k - self.k_start) * math.sqrt(frac)))
