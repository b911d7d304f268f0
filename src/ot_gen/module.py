"""The LightningModule: one round of OT-matching training per batch of reals, in either mode.

The module never knows which prior, network, matcher or cost it has: Hydra builds them
and hands over objects. Optimisation is manual because an oversampled round takes many
optimizer steps on pairs that exist only inside the round; `trainer.global_step` counts
those steps, so `trainer.max_steps` means optimizer steps in both modes.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from ot_gen.costs import Cost
from ot_gen.errors import NonFiniteError
from ot_gen.matching import Matcher, Matching
from ot_gen.metrics import energy_distance, sliced_w2, w2
from ot_gen.modes import Minibatch, Oversampled
from ot_gen.priors import Prior

GENERATE_CHUNK = 8192  # generated points per forward pass when no gradient is needed


class OTGenerator(L.LightningModule):
    def __init__(
        self,
        prior: Prior,
        generator: nn.Module,
        matcher: Matcher,
        cost: Cost,
        mode: Minibatch | Oversampled,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        config: dict[str, Any] | None = None,
        match_cost: Cost | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.prior, self.generator, self.matcher = prior, generator, matcher
        self.cost, self.mode = cost, mode
        self.match_cost = match_cost or cost  # what the matcher pairs by; `cost` is the loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.config = config  # the resolved run config, stored in every checkpoint
        self.register_buffer("rounds", torch.zeros((), dtype=torch.long))
        self.w2_floor: float | None = None

    # -- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        z = self.prior.sample(n)
        return torch.cat([self.generator(c) for c in z.split(GENERATE_CHUNK)])

    # -- training ------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.generator.parameters())
        if self.scheduler_factory is None:
            return optimizer
        # Stepped by _step after every optimizer step (manual optimization).
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def on_fit_start(self) -> None:
        if self.matcher.full_data:
            self.matcher.attach_data(self.trainer.datamodule.train_set.to(self.device))

    def on_train_start(self) -> None:
        if self.trainer.world_size > 1:
            # Every rank starts from the same seed (or the same restored RNG state): fork the
            # stream by rank, deterministically, so ranks draw different latents.
            torch.manual_seed(int(torch.randint(2**62, ())) + self.global_rank)

    def training_step(self, batch, batch_idx):
        (y,) = batch
        if isinstance(self.mode, Oversampled):
            stats = self._oversampled_round(y)
        else:
            stats = self._minibatch_round(y)
        self.rounds += 1
        stats["lr"] = self.optimizers().param_groups[0]["lr"]
        self.log("train/matched_cost", stats.pop("matched_cost"), prog_bar=True)
        self.log_dict({f"train/{k}": float(v) for k, v in stats.items()})

    def _minibatch_round(self, y: torch.Tensor) -> dict[str, float]:
        z = self.prior.sample(self.mode.ratio * len(y))
        x = self.generator(z)
        self._check_finite(x, "generated points")
        match = self.matcher(x, y, self.match_cost, each_real=1)
        loss = self.cost.paired(x[match.gen_idx], y[match.real_idx]).mean()
        self._step(loss)
        return {**match.stats, "loss": loss.item(), "reals_in_solve": float(len(y))}

    def _oversampled_round(self, y: torch.Tensor) -> dict[str, float]:
        k = self.mode.k_at(int(self.rounds))
        z = self.prior.sample(k * len(y))
        with torch.no_grad():
            x = torch.cat([self.generator(c) for c in z.split(GENERATE_CHUNK)])
        self._check_finite(x, "generated points")
        if self.matcher.full_data:  # matched against the whole training set, not the pool
            y = self.matcher.reals
        if self.trainer.world_size > 1:
            z, y, match = self._global_match(z, x, y, k)
        else:
            match = self.matcher(x, y, self.match_cost, each_real=k)
        z_pairs, y_pairs = z[match.gen_idx], y[match.real_idx]
        for _ in range(self.mode.fit_epochs):
            order = torch.randperm(len(z_pairs), device=z_pairs.device)
            losses = []
            for idx in order.split(self.mode.fit_batch_size):
                loss = self.cost.paired(self.generator(z_pairs[idx]), y_pairs[idx]).mean()
                self._step(loss)
                losses.append(loss.detach())
        return {**match.stats, "loss": torch.stack(losses).mean().item(), "k": k, "reals_in_solve": float(len(y))}

    def _global_match(self, z, x, y, k):
        """DDP: ONE assignment over every rank's generated points and reals, solved on rank
        zero and broadcast; each rank then regresses on an equal share of the global pairs
        (pairs r, r + W, r + 2W, ...), so every real still receives exactly k partners
        whatever the number of ranks. Returns (global z, global reals, this rank's pairs)."""
        world, rank = self.trainer.world_size, self.global_rank
        gather = lambda t: self.all_gather(t).flatten(0, 1)  # noqa: E731  (W, n, ...) -> (W·n, ...)
        z, x = gather(z), gather(x)
        if not self.matcher.full_data:
            y = gather(y)
        match = self.matcher(x, y, self.match_cost, each_real=k) if rank == 0 else None
        gen_idx, real_idx, stats = self.trainer.strategy.broadcast(
            None if match is None else (match.gen_idx.cpu(), match.real_idx.cpu(), match.stats), src=0
        )
        share = len(gen_idx) // world  # equal shares keep the ranks' optimizer steps in lockstep
        mine = torch.arange(rank, share * world, world)
        return z, y, Matching(gen_idx[mine].to(z.device), real_idx[mine].to(z.device), stats)

    def _step(self, loss: torch.Tensor) -> None:
        self._check_finite(loss, "the loss")
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def _check_finite(self, t: torch.Tensor, what: str) -> None:
        if not torch.isfinite(t).all():
            raise NonFiniteError(
                f"{what} became NaN/Inf at step {self.global_step} (round {int(self.rounds)}); "
                "training stopped, the checkpoints already saved are intact; "
                "try a lower optimizer.lr"
            )

    # -- validation ----------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        (y,) = batch
        x = self.sample(len(y))
        if self.w2_floor is None:
            self.w2_floor = self._noise_floor(len(y))
        dist = w2(x, y)
        self.log_dict(
            {
                "val/w2": dist,
                "val/w2_floor": self.w2_floor,
                "val/w2_ratio": dist / max(self.w2_floor, 1e-12),
                "val/energy": energy_distance(x, y),
                "val/sliced_w2": sliced_w2(x, y),
            },
            prog_bar=True,
            batch_size=len(y),
            sync_dist=True,  # under DDP each rank scores its shard of the held-out set: average them
        )

    def _noise_floor(self, n: int) -> float:
        """W2 between two independent data samples of the validation size: the value a
        perfect generator would get, up to sampling noise. Computed once per run."""
        dm = self.trainer.datamodule
        n = min(n, len(dm.train_set), len(dm.val_set))
        return w2(dm.train_set[:n], dm.val_set[:n])

    # -- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ot_gen_config"] = self.config
        dm = self.trainer.datamodule
        if dm is not None:  # what `python -m ot_gen.sample` needs to rebuild the generator
            value_range = None if dm.value_range is None else [float(v) for v in dm.value_range]
            checkpoint["ot_gen_data"] = {"shape": list(dm.data_shape), "value_range": value_range}
        # Global RNG streams (prior samples, shuffling, random matcher), so a resumed run
        # draws what the uninterrupted run would have drawn.
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        }
        wandb_ids = [lg.experiment.id for lg in self.loggers if isinstance(lg, WandbLogger)]
        if wandb_ids:
            checkpoint["wandb_run_id"] = wandb_ids[0]  # a resumed run continues this W&B run

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            np.random.set_state(_numpy_state_from_plain(states["numpy"]))
            random.setstate(states["python"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])


# numpy's RNG state holds an ndarray, which `torch.load(weights_only=True)` (Lightning's
# resume) refuses: keep it in the checkpoint as a tensor and plain numbers.
def _numpy_state_to_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached
