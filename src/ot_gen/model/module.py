"""The LightningModule: one round of OT-matching training per batch of reals.

The module never knows which prior, network, matcher, cost or mode it has: Hydra builds
them and hands over objects. The mode runs the round (`mode.round(self, y, ids, figures_due)`) with
the parts below: sampling, matching (on this rank, or across ranks under DDP) and the
optimizer step. Optimisation is manual because an oversampled round takes many optimizer
steps on pairs that exist only inside the round; `trainer.global_step` counts those
steps, so `trainer.max_steps` means optimizer steps in both modes.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from typing import Callable

import lightning as L
import torch
from torch import nn

from ot_gen.matching.costs import Cost
from ot_gen.model.ema import GeneratorEMA
from ot_gen.errors import NonFiniteError, all_finite
from ot_gen.matching import Matcher, Matching, match_by_class
from ot_gen.evaluation.metrics import energy_distance, in_background, sliced_w2, w2
from ot_gen.model.modes import Mode
from ot_gen.model.priors import ClassConditionalPrior, Prior
from ot_gen.rng import own_rng

GENERATE_CHUNK = 8192  # generated points per forward pass when no gradient is needed


class OTGenerator(L.LightningModule):
    def __init__(
        self,
        prior: Prior,
        generator: nn.Module,
        matcher: Matcher,
        cost: Cost,
        mode: Mode,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        match_cost: Cost | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.prior, self.generator, self.matcher = prior, generator, matcher
        self.cost, self.mode = cost, mode
        self.match_cost = match_cost or cost  # what the matcher pairs by; `cost` is the loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # A code-space run (ot_gen.latent): the autoencoder's decoder, frozen, from the
        # generator's points (codes) to what is scored and shown (images). None: the
        # generator's points are the data.
        self.decoder = None if decoder is None else decoder.requires_grad_(False)
        self.register_buffer("rounds", torch.zeros((), dtype=torch.long))
        self.w2_floor: float | None = None
        # (global step, val/w2) of the last validation that scored the whole held-out set:
        # the final evaluation's first draw of that state (ot_gen.evaluation.final).
        self.scored: tuple[int, float] | None = None
        self._w2_solve: tuple[int, Future] | None = None  # (points, the validation's W2 being solved)
        # A class-conditional run: every training point's class (set at fit start; -1: none).
        self.register_buffer("real_labels", torch.zeros(0, dtype=torch.long), persistent=False)

    @property
    def conditional(self) -> bool:
        return isinstance(self.prior, ClassConditionalPrior)

    # -- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """The generator on latents `z`, without gradient, in chunks."""
        return torch.cat([self.generator(c) for c in z.split(GENERATE_CHUNK)])

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's points as data: decoded images in a code-space run, else as they are."""
        return x if self.decoder is None else torch.cat([self.decoder(c) for c in x.split(GENERATE_CHUNK)])

    def render(self, z: torch.Tensor) -> torch.Tensor:
        """The samples of latents `z`, as data (what every figure and picture scores)."""
        return self.decode(self.generate(z))

    def latents(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`n` prior draws; of the classes `labels` (a class-conditional run), else drawn
        as the training set's classes are."""
        return self.prior.sample(n) if labels is None else self.prior.sample(n, labels)

    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`n` samples as data (`latents` through `render`)."""
        return self.render(self.latents(n, labels))

    def latents_for(self, ids: torch.Tensor, per_real: int) -> torch.Tensor:
        """`per_real` latents for each of the reals `ids` (training-set indices): in a
        class-conditional run, of those reals' classes, so each class has its partners."""
        n = per_real * len(ids)
        if not self.conditional:
            return self.prior.sample(n)
        return self.prior.sample(n, self.real_labels[ids].clamp_min(0).repeat(per_real))

    # -- the parts a round is made of ----------------------------------------------------
    def match(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None, each_real: int,
              diagnostics: bool = True, z: torch.Tensor | None = None,
              real_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Matching]:
        """Pair the generated points `x` (from latents `z`) with the reals the matcher
        matches against (the round's reals `y`, or for a matcher over the whole training
        set, that set), with the matcher's diagnostics when `diagnostics`. A
        class-conditional run pairs within each class only: the reals' classes are those
        of the training points `ids`, or `real_labels` (held-out reals). Returns (those
        reals, the pairs)."""
        y, ids = self.matcher.targets(y, ids, z)
        if self.conditional and z is not None and (ids is not None or real_labels is not None):
            labels = self.real_labels[ids] if real_labels is None else real_labels
            return y, match_by_class(self.matcher, x, y, self.match_cost, each_real, ids, self.prior.labels_of(z),
                                     labels.to(x.device), diagnostics)
        return y, self.matcher(x, y, self.match_cost, each_real, real_ids=ids, diagnostics=diagnostics)

    def match_across_ranks(self, z, x, y, ids, each_real: int, diagnostics: bool = True):
        """`match` over every rank's points at once. Under DDP: ONE assignment over every
        rank's generated points and reals, solved on rank zero and broadcast; each rank
        then regresses on an equal share of the global pairs (pairs r, r + W, r + 2W, ...),
        so every real still receives exactly k partners whatever the number of ranks.
        Returns (latents, generated points, reals, this rank's pairs), the first three for
        all ranks."""
        world, rank = self.trainer.world_size, self.global_rank
        if world == 1:
            return (z, x, *self.match(x, y, ids, each_real, diagnostics, z))
        gather = lambda t: self.all_gather(t).flatten(0, 1)  # noqa: E731  (W, n, ...) -> (W·n, ...)
        z, x, y, ids = gather(z), gather(x), gather(y), gather(ids)
        if rank == 0:
            y, match = self.match(x, y, ids, each_real, diagnostics, z)
        else:
            y, match = self.matcher.targets(y, ids, z)[0], None
        gen_idx, real_idx, stats = self.trainer.strategy.broadcast(
            None if match is None else (match.gen_idx.cpu(), match.real_idx.cpu(), match.stats), src=0
        )
        share = len(gen_idx) // world  # equal shares keep the ranks' optimizer steps in lockstep
        mine = torch.arange(rank, share * world, world)
        return z, x, y, Matching(gen_idx[mine].to(z.device), real_idx[mine].to(z.device), stats)

    def adapt_prior(self, z: torch.Tensor, n_drawn: int, paired: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor) -> dict[str, float]:
        """An adaptive prior's re-estimation after a round (`Prior.adapt`), from the round's
        latents `z` (every rank's when gathered: this rank's `n_drawn` are its block), this
        rank's pairs (indices `paired` into `z`) and their generated points `x` and partners
        `y`; the statistics are summed over the ranks first, so every rank's prior stays
        the same. Returns the prior's figures ({} for a fixed prior)."""
        if not self.prior.adaptive:
            return {}
        first = self.global_rank * n_drawn if len(z) > n_drawn else 0
        stats = self.prior.round_statistics(z, slice(first, first + n_drawn), paired, x, y)
        if self.trainer.world_size > 1:
            stats = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in stats.items()}
        return self.prior.adapt(stats)

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer (and scheduler) step on `loss`."""
        self.check_finite(loss, "the loss")
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def check_finite(self, t: torch.Tensor, what: str) -> None:
        if not all_finite(t):
            raise NonFiniteError(
                f"{what} became NaN/Inf at step {self.global_step} (round {int(self.rounds)}); "
                "training stopped, the checkpoints already saved are intact; "
                "try a lower optimizer.lr"
            )

    # -- training ------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.generator.parameters())
        if self.scheduler_factory is None:
            return optimizer
        # Stepped by `step` after every optimizer step (manual optimization).
        scheduler = self.scheduler_factory(optimizer)
        self._configured_t_max = getattr(scheduler, "T_max", None)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        self.matcher.bind(dm.train_set)
        if self.conditional:
            self.real_labels = dm.train_labels.to(self.device)

    def on_load_checkpoint(self, checkpoint) -> None:
        """A checkpoint written with the generator's EMA (`ot_gen.model.ema`) holds the average in
        `state_dict` and the training weights in `current_model_state`: a run resumed
        without the EMA goes on from the training weights."""
        ema_on = any(isinstance(cb, GeneratorEMA) for cb in self.trainer.callbacks)
        if "current_model_state" in checkpoint and not ema_on:
            checkpoint["state_dict"] = checkpoint["current_model_state"]

    def on_train_start(self) -> None:
        self._stretch_schedule()
        if self.trainer.world_size > 1:
            # Every rank starts from the same seed (or the same restored RNG state): fork the
            # stream by rank, deterministically, so ranks draw different latents.
            torch.manual_seed(int(torch.randint(2**62, ())) + self.global_rank)

    def _stretch_schedule(self) -> None:
        """A run resumed with another `trainer.max_steps` (so another cosine `T_max`) goes on
        as if it had been started with the new one: from here, the learning rate is that of
        the new schedule at this step, ending at eta_min on the new last step. The restored
        scheduler state would otherwise keep the old T_max, and the cosine would climb back
        to the initial rate past the old end."""
        scheduler = self.lr_schedulers()
        t_max = getattr(self, "_configured_t_max", None)
        if scheduler is None or t_max is None or scheduler.T_max == t_max:
            return
        scheduler.T_max = t_max
        progress = math.cos(math.pi * min(scheduler.last_epoch, t_max) / t_max)
        lrs = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + progress) / 2 for base in scheduler.base_lrs]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs  # what get_last_lr() reports

    def training_step(self, batch, batch_idx):
        y, ids = batch
        figures_due = self._figures_due()
        stats = self.mode.round(self, y, ids, figures_due)
        self.rounds += 1
        if figures_due:
            stats["lr"] = self.optimizers().param_groups[0]["lr"]
            self.log("train/matched_cost", float(stats.pop("matched_cost")), prog_bar=True)
            self.log_dict({f"train/{k}": float(v) for k, v in stats.items()})

    def _figures_due(self) -> bool:
        """Lightning writes step metrics every `log_every_n_steps` batches (one batch, one
        round): compute and log the round's figures on those rounds (self.log costs about a
        millisecond per figure), on the last step, and every round of a mode whose rounds
        are long."""
        trainer, every = self.trainer, self.trainer.log_every_n_steps
        return bool(self.mode.figures_every_round or trainer.fast_dev_run
                    or (every > 0 and (int(self.rounds) + 1) % every == 0)
                    or 0 <= trainer.max_steps <= self.global_step + 1)

    # -- validation ----------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        """val/energy and val/sliced_w2 here; then val/w2's exact solve in a thread, while
        the callbacks draw their pictures (GIL-bound, one core; the auction releases the
        GIL and takes the other): in the default run both take 0.2-0.3 s a validation.
        `on_validation_epoch_end`, after the callbacks, logs it."""
        (y,) = batch
        with own_rng(self.device):  # the same latents every validation; training's stream untouched
            x = self.sample(len(y))
        figures = {"val/energy": energy_distance(x, y), "val/sliced_w2": sliced_w2(x, y)}  # on all cores
        if self.w2_floor is None:  # once per run; its solve also sets up numba's threads (threads_can_solve)
            self.w2_floor = self._noise_floor(len(y))
        self._w2_solve = (len(y), in_background(lambda: w2(x, y)))
        # under DDP each rank scores its shard of the held-out set: average them
        self.log_dict(figures, prog_bar=True, batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self._w2_solve is None:
            return
        (n, solve), self._w2_solve = self._w2_solve, None
        dist = solve.result()
        if n == len(self.trainer.datamodule.eval_data.val_set):  # not a DDP rank's shard
            self.scored = (self.global_step, dist)
        self.log_dict(
            {"val/w2": dist, "val/w2_floor": self.w2_floor, "val/w2_ratio": dist / max(self.w2_floor, 1e-12)},
            prog_bar=True,
            sync_dist=True,
        )

    def _noise_floor(self, n: int) -> float:
        """W2 between two independent data samples of the validation size: the value a
        perfect generator would get, up to sampling noise. Computed once per run."""
        dm = self.trainer.datamodule.eval_data
        n = min(n, len(dm.train_set), len(dm.val_set))
        return w2(dm.train_set[:n], dm.val_set[:n])
