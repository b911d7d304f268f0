"""The two training modes: what one round of training is made of.

Built from `conf/mode/*.yaml` by Hydra's `_target_`; each checks its own values. The
LightningModule hands every batch of reals to `mode.round(parts, y, ids, figures_due)`; a
mode uses what `RoundParts` names of the module (prior, generator, sampling, matching, the
optimizer step) and nothing else, and returns the round's figures. `reals_per_round` is the data module's batch size; `val_every_rounds` sets how
often the validation metrics are computed, in rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from ot_gen.errors import check, check_choice, check_positive_int
from ot_gen.matching import Matcher, Matching
from ot_gen.matching.costs import Cost
from ot_gen.memory import check_fits
from ot_gen.model.priors import Prior


class RoundParts(Protocol):
    """What a mode may use of the module in a round (`OTGenerator` provides it)."""

    prior: Prior
    generator: nn.Module
    cost: Cost  # the regression loss of a pair
    rounds: torch.Tensor  # rounds done before this one (0-d)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """The generator on `z`, without gradient."""

    def check_finite(self, t: torch.Tensor, what: str) -> None:
        """A NonFiniteError naming `what` when `t` holds NaN/Inf."""

    def latents_for(self, ids: torch.Tensor, per_real: int) -> torch.Tensor:
        """`per_real` latents for each real of `ids` (of its class, in a class-conditional run)."""

    def match(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, each_real: int,
              diagnostics: bool, z: torch.Tensor) -> tuple[torch.Tensor, Matching]:
        """(the reals matched against, the pairs) on this rank; `z`: the latents of `x`."""

    def match_across_ranks(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                           each_real: int, diagnostics: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Matching]:
        """(every rank's latents, generated points and reals, this rank's pairs): one assignment."""

    def adapt_prior(self, z: torch.Tensor, n_drawn: int, paired: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor) -> dict[str, float]:
        """An adaptive prior's update from the round's latents (this rank drew `n_drawn`
        of them) and this rank's pairs (indices into them, generated, partner); its figures."""

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer (and scheduler) step on `loss`."""


class Mode:
    """What every mode answers: its name (for `matcher.modes`), the reals one round
    takes (and the config key that sets them), and one round of training."""

    name: str
    reals_key: str  # the key of conf/mode/<name>.yaml that sets reals_per_round
    figures_every_round = False  # True: log every round's figures, not every log_every_n_steps rounds

    @property
    def reals_per_round(self) -> int:
        return getattr(self, self.reals_key)

    generated_key = "ratio"  # the key that sets the generated points per real of a round

    def generated_per_round(self) -> int:
        raise NotImplementedError

    def check_data(self, n_train: int, data_name: str, point_size: int, matcher: Matcher | None = None) -> None:
        """A round cannot take more reals than the training set holds, nor more memory than
        the machine has: its matching (`matcher.round_bytes`; a float64 cost matrix about
        twice over when no matcher is given) and its generated points (float32, and
        float64 for the cost) of `point_size` numbers each."""
        check(self.reals_per_round <= n_train, f"mode.{self.reals_key}", self.reals_per_round,
              f"at most the {n_train} training points of data={data_name}")
        m, n = self.generated_per_round(), self.reals_per_round
        key = f"mode.{self.generated_key}"
        matching = 16.0 * m * n if matcher is None else matcher.round_bytes(m, n, point_size)
        check_fits(key, getattr(self, self.generated_key), matching + 12.0 * m * point_size,
                   f"a round of {m:,} generated points matched to {n:,} reals",
                   f"lower {key} or mode.{self.reals_key}")

    def check_parts(self, prior: Prior, generator: nn.Module) -> None:
        """A config error when the module's parts cannot run in this mode: the one-step
        modes regress a generator's single output, so they refuse a flow's network."""
        check(not getattr(generator, "is_flow", False), "network", type(generator).__name__,
              f"a one-step generator under mode={self.name} (a flow's velocity network trains under mode=flow)")

    def round(self, module: RoundParts, y: torch.Tensor, ids: torch.Tensor, figures_due: bool) -> dict[str, float]:
        """One round on the reals `y` (training-set indices `ids`); returns its figures
        (numbers or 0-d tensors), the matcher's diagnostics and `matched_cost` among them
        when `figures_due` (the rounds whose figures are logged)."""
        raise NotImplementedError


def regress_in_passes(module: RoundParts, n_pairs: int, epochs: int, batch_size: int, device: torch.device,
                      loss_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`epochs` passes over a round's `n_pairs` pairs, each in a fresh random order, one
    optimizer step on `loss_of(indices)` per batch of `batch_size`; returns the mean loss
    of the last pass (`train/loss`)."""
    for _ in range(epochs):
        losses = []
        for idx in torch.randperm(n_pairs, device=device).split(batch_size):
            loss = loss_of(idx)
            module.step(loss)
            losses.append(loss.detach())
    return torch.stack(losses).mean()


@dataclass
class Minibatch(Mode):
    """n reals, ratio·n generated, matched (each real takes its best distinct generated
    point), then ONE optimizer step on the mean cost of the matched pairs. Under DDP each
    rank matches its own batch."""

    batch_size: int = 256
    ratio: int = 1
    val_every_rounds: int = 500

    name = "minibatch"
    reals_key = "batch_size"

    def generated_per_round(self) -> int:
        return self.ratio * self.batch_size

    def __post_init__(self):
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("ratio", self.ratio)
        check_positive_int("val_every_rounds", self.val_every_rounds)

    def round(self, module, y, ids, figures_due):
        z = module.latents_for(ids, self.ratio)
        x = module.generator(z)
        module.check_finite(x, "generated points")
        y, match = module.match(x, y, ids, each_real=1, diagnostics=figures_due, z=z)
        loss = module.cost.paired(x[match.gen_idx], y[match.real_idx]).mean()
        module.step(loss)
        prior = module.adapt_prior(z, len(z), match.gen_idx, x.detach()[match.gen_idx], y[match.real_idx])
        return {**match.stats, **prior, "loss": loss.detach(), "reals_in_solve": len(y)}


@dataclass
class Oversampled(Mode):
    """A pool of reals, k·pool generated, an exact k-to-1 assignment, then `fit_epochs`
    passes of minibatch regression over all k·pool pairs (the OT-GAN paper's method).
    Under DDP the ranks' points and pools form ONE assignment (`module.match_across_ranks`).

    `k_schedule=sqrt` grows k from `k_start` to `k` over `k_ramp_rounds` rounds as
    k_start + (k - k_start)·sqrt(round / k_ramp_rounds); `linear` as
    k_start + (k - k_start)·round / k_ramp_rounds (the OT-GAN code's growing number of
    latent batches per assignment); `constant` uses k throughout.
    """

    pool_size: int = 500
    k: int = 10
    fit_epochs: int = 1
    fit_batch_size: int = 256
    k_schedule: str = "constant"
    k_start: int = 1
    k_ramp_rounds: int = 50
    val_every_rounds: int = 5

    name = "oversampled"
    reals_key = "pool_size"
    generated_key = "k"

    def generated_per_round(self) -> int:
        return self.k * self.pool_size
    figures_every_round = True  # a round is many optimizer steps: its figures cost little

    def __post_init__(self):
        check_positive_int("pool_size", self.pool_size)
        check_positive_int("k", self.k)
        check_positive_int("fit_epochs", self.fit_epochs)
        check_positive_int("fit_batch_size", self.fit_batch_size)
        check_choice("k_schedule", self.k_schedule, ["constant", "sqrt", "linear"])
        check_positive_int("k_start", self.k_start)
        check_positive_int("k_ramp_rounds", self.k_ramp_rounds)
        check_positive_int("val_every_rounds", self.val_every_rounds)

    def k_at(self, round_index: int) -> int:
        if self.k_schedule == "constant" or self.k_start >= self.k:
            return self.k
        frac = min(1.0, round_index / self.k_ramp_rounds)
        grow = math.sqrt(frac) if self.k_schedule == "sqrt" else frac
        return int(round(self.k_start + (self.k - self.k_start) * grow))

    def round(self, module, y, ids, figures_due):
        k = self.k_at(int(module.rounds))
        z = module.latents_for(ids, k)
        x = module.generate(z)
        module.check_finite(x, "generated points")
        n_drawn = len(z)
        z, x, y, match = module.match_across_ranks(z, x, y, ids, each_real=k, diagnostics=figures_due)
        z_pairs, y_pairs = z[match.gen_idx], y[match.real_idx]
        prior = module.adapt_prior(z, n_drawn, match.gen_idx, x[match.gen_idx], y_pairs)  # the round's pairs
        loss = regress_in_passes(module, len(z_pairs), self.fit_epochs, self.fit_batch_size, z_pairs.device,
                                 lambda idx: module.cost.paired(module.generator(z_pairs[idx]), y_pairs[idx]).mean())
        return {**match.stats, **prior, "loss": loss, "k": k, "reals_in_solve": len(y)}
