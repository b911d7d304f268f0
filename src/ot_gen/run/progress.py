"""How far a run is: the console progress bar, and the clock of time spent validating.

The progress bar: one line, in optimizer steps toward `trainer.max_steps`,
with the last matched cost and the last validation figure.

Lightning's own bars count batches per epoch, which means little here (a run is counted
in steps, and `max_epochs=-1` shows as `Epoch 7/-2`) and wrap every logged metric over
several lines. This one replaces them when `trainer.enable_progress_bar` is true."""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from tqdm import tqdm


class StepProgressBar(ProgressBar):
    SHOWN = (("train/matched_cost", "matched cost"), ("val/w2", "val/w2"), ("val/frechet_classifier", "Fréchet"))

    def __init__(self):
        super().__init__()
        self._enabled = True
        self.bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if not self._enabled:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.bar = tqdm(total=total, initial=trainer.global_step, unit="step", desc="training",
                        dynamic_ncols=True, file=sys.stderr, smoothing=0.05)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0 or self.bar.n == self.bar.total:
            self._show(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.bar is not None and not trainer.sanity_checking:
            self._show(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.bar is not None:
            self._show(trainer)
            self.bar.close()
            self.bar = None

    def _show(self, trainer: L.Trainer) -> None:
        metrics = trainer.callback_metrics
        shown = [f"{label} {float(metrics[key]):.4g}" for key, label in self.SHOWN if key in metrics]
        self.bar.set_postfix_str(", ".join(shown), refresh=False)


class ValidationClock(L.Callback):
    """Seconds spent in validations (metrics, pictures, checkpoints) during `fit`, so
    metrics.json can tell training time from validation time, and the step of fit's last
    validation (`last_step`, None before the first), so that the state it scored is not
    validated again."""

    def __init__(self):
        self.seconds, self._start = 0.0, 0.0
        self.last_step: int | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.seconds += time.perf_counter() - self._start
            self.last_step = trainer.global_step
