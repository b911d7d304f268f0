"""Pictures made during training, sent to the active loggers and saved in the run dir."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from ot_gen.errors import check_positive_int
from ot_gen.loggers import log_picture


def _draws_now(trainer: L.Trainer) -> bool:
    """Pictures are drawn once per real validation, by rank zero only."""
    return not trainer.sanity_checking and trainer.is_global_zero


def _matched_pairs(pl_module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As many generated points as reals `y`, paired by the run's matcher and matching
    cost; returns (generated, real) row-aligned in the order of the reals. A matcher over
    the whole training set (semidiscrete) pairs them with training points instead of `y`.
    The module is in eval mode here, so stateful matchers pair without learning."""
    x = pl_module.sample(len(y))
    matcher = pl_module.matcher
    if matcher.full_data:
        y = matcher.reals
    match = matcher(x, y, pl_module.match_cost)
    order = torch.argsort(match.real_idx, stable=True)
    return x[match.gen_idx[order]], y[match.real_idx[order]]


class PointCloudPlots(L.Callback):
    """After each validation, for 1-D and 2-D data:

    - `plots/samples`: generated points over held-out points (2-D scatter, 1-D histogram);
    - `plots/pairs` (2-D): `n_pairs` reals, as many generated points, and a line from each
      generated point to the partner the run's matcher gives it.

    Other data shapes are left to the image callbacks.
    """

    def __init__(self, n_points: int = 1000, n_pairs: int = 150):
        self.n_points = check_positive_int("n_points", n_points)
        self.n_pairs = check_positive_int("n_pairs", n_pairs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        real = trainer.datamodule.val_set
        if not _draws_now(trainer) or real.dim() != 2 or real.shape[1] > 2:
            return
        out_dir = Path(trainer.default_root_dir)
        step = trainer.global_step
        real = real[: self.n_points].to(pl_module.device)
        fake = pl_module.sample(len(real))
        log_picture(trainer.loggers, out_dir, "plots/samples", self._samples(real, fake, step), step)
        if real.shape[1] == 2:
            fig = self._pairs(*_matched_pairs(pl_module, real[: self.n_pairs]), step)
            log_picture(trainer.loggers, out_dir, "plots/pairs", fig, step)

    @staticmethod
    def _samples(real: torch.Tensor, fake: torch.Tensor, step: int) -> Figure:
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        r, f = real.cpu().numpy(), fake.cpu().numpy()
        if r.shape[1] == 1:
            ax.hist(r[:, 0], bins=50, density=True, alpha=0.5, label="held-out")
            ax.hist(f[:, 0], bins=50, density=True, alpha=0.5, label="generated")
        else:
            ax.scatter(r[:, 0], r[:, 1], s=4, alpha=0.5, label="held-out")
            ax.scatter(f[:, 0], f[:, 1], s=4, alpha=0.5, label="generated")
            ax.set_aspect("equal")
        ax.legend(loc="upper right")
        ax.set_title(f"step {step}")
        return fig

    @staticmethod
    def _pairs(x: torch.Tensor, y: torch.Tensor, step: int) -> Figure:
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        xs, ys = x.cpu().numpy(), y.cpu().numpy()
        for a, b in zip(xs, ys):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.6", lw=0.6)
        ax.scatter(ys[:, 0], ys[:, 1], s=8, label="real")
        ax.scatter(xs[:, 0], xs[:, 1], s=8, label="generated")
        ax.set_aspect("equal")
        ax.legend(loc="upper right")
        ax.set_title(f"matched pairs, step {step}")
        return fig


class ImageGrids(L.Callback):
    """After each validation, for image data:

    - `images/samples`: a grid of `n_samples` generated images;
    - `images/pairs`: `n_pairs` held-out images (top row) over the generated images the
      run's matcher pairs them with (bottom row).
    """

    def __init__(self, n_samples: int = 64, n_pairs: int = 16):
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.n_pairs = check_positive_int("n_pairs", n_pairs, minimum=2)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        dm = trainer.datamodule
        if not _draws_now(trainer) or dm.val_set.dim() != 4:
            return
        out_dir, step = Path(trainer.default_root_dir), trainer.global_step
        samples = dm.to_unit(pl_module.sample(self.n_samples)).clamp(0, 1).cpu()
        grid = make_grid(samples, nrow=int(self.n_samples**0.5), pad_value=1.0)
        log_picture(trainer.loggers, out_dir, "images/samples", grid, step)
        fake, real = _matched_pairs(pl_module, dm.val_set[: self.n_pairs].to(pl_module.device))
        rows = torch.cat([real, fake])
        grid = make_grid(dm.to_unit(rows).clamp(0, 1).cpu(), nrow=len(real), pad_value=1.0)
        log_picture(trainer.loggers, out_dir, "images/pairs", grid, step)
