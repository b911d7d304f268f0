"""The LightningModule: one round of OT-matching training per batch of reals, in either mode.

The module never knows which prior, network, matcher or cost it has: Hydra builds them
and hands over objects. Optimisation is manual because an oversampled round takes many
optimizer steps on pairs that exist only inside the round; `trainer.global_step` counts
those steps, so `trainer.max_steps` means optimizer steps in both modes.
"""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from ot_gen.costs import Cost
from ot_gen.errors import NonFiniteError
from ot_gen.matching import Matcher
from ot_gen.metrics import energy_distance, w2
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
    ):
        super().__init__()
        self.automatic_optimization = False
        self.prior, self.generator, self.matcher = prior, generator, matcher
        self.cost, self.mode = cost, mode
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
        match = self.matcher(x, y, self.cost, each_real=1)
        loss = self.cost.paired(x[match.gen_idx], y[match.real_idx]).mean()
        self._step(loss)
        return {**match.stats, "loss": loss.item()}

    def _oversampled_round(self, y: torch.Tensor) -> dict[str, float]:
        k = self.mode.k_at(int(self.rounds))
        z = self.prior.sample(k * len(y))
        with torch.no_grad():
            x = torch.cat([self.generator(c) for c in z.split(GENERATE_CHUNK)])
        self._check_finite(x, "generated points")
        match = self.matcher(x, y, self.cost, each_real=k)
        z_pairs, y_pairs = z[match.gen_idx], y[match.real_idx]
        for _ in range(self.mode.fit_epochs):
            order = torch.randperm(len(z_pairs), device=z_pairs.device)
            losses = []
            for idx in order.split(self.mode.fit_batch_size):
                loss = self.cost.paired(self.generator(z_pairs[idx]), y_pairs[idx]).mean()
                self._step(loss)
                losses.append(loss.detach())
        return {**match.stats, "loss": torch.stack(losses).mean().item(), "k": k}

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
