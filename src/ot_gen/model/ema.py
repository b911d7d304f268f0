"""An exponential moving average (EMA) of the generator's weights, as Lightning's
`WeightAveraging` callback keeps it, restricted to the generator.

Lightning's callback averages the whole LightningModule, buffers included. Here that
would average the step counter, the exact matcher's prices (per training image, with
their `priced` flags) and the semi-discrete potential, and it would misalign the two
models when a matcher fills a buffer at the start of fit (`Matcher.bind`). The generator
is the part whose average is wanted, so the average is kept of it alone.

`decay` is per optimizer step, with TensorFlow's warm-up: the n-th update uses
min(decay, (1 + n) / (10 + n)), so the first (random) weights are forgotten within a few
hundred steps rather than the 1 / (1 - decay) of a plain EMA. The average is updated at
the end of each round (one training batch): one step in the minibatch mode, many in the
oversampled mode, where a round of s steps keeps decay**s of the average, so its memory
in steps is the same in both modes.

As in Lightning: the average is swapped in for validation (val/* and the pictures show
it) and after training (the final evaluation, metrics.json, the last checkpoint), and a
checkpoint's `state_dict` holds it (`python -m ot_gen.sample` generates with it). The
training weights are kept under the checkpoint's `current_model_state`, so a resume,
even of a finished run, goes on from them.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import AveragedModel

from ot_gen.errors import check

PREFIX = "generator."  # the generator's keys in the module's state dict
AVERAGED = "module."  # and in the AveragedModel's


class GeneratorEMA(WeightAveraging):
    """EMA of the generator's parameters and buffers (batch-norm statistics) with `decay`
    per optimizer step, from optimizer step `start_step` on (the average starts as a copy
    of the weights at that step)."""

    def __init__(self, decay: float = 0.999, start_step: int = 0):
        check(isinstance(decay, float) and 0.0 < decay < 1.0, "decay", decay, "a number in (0, 1)")
        check(isinstance(start_step, int) and start_step >= 0, "start_step", start_step, "an integer >= 0")
        super().__init__()
        self.decay, self.start_step = decay, start_step
        self._steps = 1  # optimizer steps since the last update
        self._trained = False  # after training the generator holds the average, the copy the weights
        self._swapped = False  # the average is in the generator for this validation

    def _average_all(self, averages: list[torch.Tensor], currents: list[torch.Tensor], n: int) -> None:
        """average <- keep·average + (1 - keep)·current for every tensor, the floating ones
        in one foreach lerp (one kernel per step, not one per tensor). `n`: the updates so
        far."""
        keep = min(self.decay, (1 + n) / (10 + n)) ** self._steps  # warm-up: TensorFlow's num_updates
        float_averages, float_currents = [], []
        for average, current in zip(averages, currents):
            if average.is_floating_point():
                float_averages.append(average)
                float_currents.append(current)
            else:  # batch norm's num_batches_tracked: rounded down, as copy_ does
                average.copy_(keep * average + (1.0 - keep) * current)
        if float_averages:
            torch._foreach_lerp_(float_averages, float_currents, 1.0 - keep)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._average_model = _Average(pl_module.generator, self._average_all)
            self._trained = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps = max(1, trainer.global_step - self._latest_update_step)
        super().on_train_batch_end(trainer, pl_module.generator, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # by steps only: an epoch here is whatever the sampler serves

    def on_train_end(self, trainer, pl_module) -> None:
        self._swap_models(pl_module)  # the average into the generator, the weights kept here
        self._trained = True

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        # Before the first update (start_step) the weights are their own average; after
        # training the generator holds the average already.
        self._swapped = self._average_model is not None and not self._trained \
            and int(self._average_model.n_averaged) > 0
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def _swap_models(self, pl_module) -> None:
        super()._swap_models(pl_module.generator)

    def _copy_average_to_current(self, pl_module) -> None:
        super()._copy_average_to_current(pl_module.generator)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return
        held = self._average_model.state_dict()
        other = {PREFIX + name[len(AVERAGED):]: value for name, value in held.items() if name.startswith(AVERAGED)}
        state = checkpoint["state_dict"]
        if self._trained or self._swapped:  # the module holds the average; the copy holds the weights
            checkpoint["current_model_state"] = {**state, **other}
        else:
            checkpoint["current_model_state"] = state
            checkpoint["state_dict"] = {**state, **other}
        checkpoint["averaging_state"] = {name: value for name, value in held.items() if not name.startswith(AVERAGED)}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return
        average = {name[len(PREFIX):]: value for name, value in checkpoint["state_dict"].items()
                   if name.startswith(PREFIX)}
        if "current_model_state" in checkpoint:
            self._average_model.module.load_state_dict(average)
            self._average_model.load_state_dict(
                {**self._average_model.state_dict(), **checkpoint.get("averaging_state", {})})
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:  # written without the EMA: the average starts from the checkpoint's weights
            self._average_model.module.load_state_dict(average)


class _Average(AveragedModel):
    """torch's AveragedModel (its state dict, `n_averaged` and all, as Lightning keeps it)
    with a leaner update: the average and the current tensors are handed to `average_fn`
    as they are, where torch's update detaches, copies and groups them by device and dtype
    again every step (155 µs a step for the default MLP, against 58 µs here; the lerp
    itself is 28 µs). The average is a deep copy of the generator made in `setup`, before
    Lightning moves the generator to its device: the first update moves the copy there too
    (torch's update would copy the weights to the CPU every step instead). `n_averaged`
    stays on the CPU, so reading it syncs no device."""

    def __init__(self, module: torch.nn.Module, average_fn):
        super().__init__(module, use_buffers=True)
        self._average_fn = average_fn

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        averages = [*self.module.parameters(), *self.module.buffers()]
        currents = [*model.parameters(), *model.buffers()]
        if averages[0].device != currents[0].device:
            self.module.to(currents[0].device)
            averages = [*self.module.parameters(), *self.module.buffers()]
        n = int(self.n_averaged)
        if n == 0:
            torch._foreach_copy_(averages, currents)
        else:
            self._average_fn(averages, currents, n)
        self.n_averaged += 1

