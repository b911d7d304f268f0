"""What a code-space run shows of its code space, and the best its generator can reach.

`CodeSpaceFigures`, after validations of a code-space run (any other run: nothing):

- once (the autoencoder is fixed): `images/reconstructions`, held-out images (top row)
  above their decoded codes; `latent/code_interpolation`, decoded straight lines between
  the codes of two held-out images (is a blend of two codes an image?); and the
  **ceiling** figures: decoded training codes scored as samples are, in the same
  classifier's features, against the same held-out images (`val/ceiling_frechet_classifier`,
  `val/ceiling_precision_classifier`, `val/ceiling_recall_classifier`: what a generator
  that drew the codes of real images would score, as real training images score the
  best a pixel-space generator reaches) and the held-out images' reconstruction error
  per pixel (`val/ceiling_mse`);
- every validation: `latent/code_projection`, the training codes and as many generated
  codes on the two principal axes of the training codes.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from ot_gen.errors import check_positive_int
from ot_gen.evaluation.frechet import ClassifierFrechet, image_scores
from ot_gen.evaluation.pictures import log_picture
from ot_gen.latent.autoencoder import unit_mse
from ot_gen.latent.codes import CodeDataModule
from ot_gen.rng import own_rng


class CodeSpaceFigures(L.Callback):
    def __init__(self, n_show: int = 16, n_paths: int = 6, n_steps: int = 8, n_points: int = 2000):
        self.n_show = check_positive_int("n_show", n_show)
        self.n_paths = check_positive_int("n_paths", n_paths)
        self.n_steps = check_positive_int("n_steps", n_steps, minimum=2)
        self.n_points = check_positive_int("n_points", n_points)
        self._ceiling: dict[str, float] | None = None

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        dm = trainer.datamodule
        if trainer.sanity_checking or not isinstance(dm, CodeDataModule):
            return
        images, device = dm.images, pl_module.device
        if self._ceiling is None:
            self._ceiling = self._ceiling_figures(trainer, pl_module, dm)
            if trainer.is_global_zero:
                self._once(trainer, pl_module, dm)
        pl_module.log_dict(self._ceiling, sync_dist=True)
        if trainer.is_global_zero:
            with own_rng(device):
                fake = pl_module.generate(pl_module.prior.sample(min(self.n_points, len(dm.train_set))))
            log_picture(trainer.loggers, Path(trainer.default_root_dir), "latent/code_projection",
                        _projection(dm.train_set[: self.n_points], fake.cpu(), trainer.global_step),
                        trainer.global_step)

    def _ceiling_figures(self, trainer, pl_module, dm: CodeDataModule) -> dict[str, float]:
        held = dm.images.val_set.to(pl_module.device)
        figures = {"val/ceiling_mse": unit_mse(pl_module.decode(dm.val_set.to(pl_module.device)), held,
                                               dm.images.value_range)}
        frechet = next((cb for cb in trainer.callbacks if isinstance(cb, ClassifierFrechet)), None)
        if frechet is not None and frechet.model is not None:  # it scores samples against the same held-out images
            n = min(frechet.n_samples, len(held))
            copies = pl_module.decode(dm.train_set[:n].to(pl_module.device))
            scores = image_scores(frechet.model, held[:n], copies, frechet.k)
            figures.update({f"val/ceiling_{k}_classifier": v for k, v in scores.items()})
        return figures

    def _once(self, trainer, pl_module, dm: CodeDataModule) -> None:
        out_dir, step, device = Path(trainer.default_root_dir), trainer.global_step, pl_module.device
        held = dm.images.val_set[: self.n_show].to(device)
        recon = pl_module.decode(dm.val_set[: self.n_show].to(device))
        log_picture(trainer.loggers, out_dir, "images/reconstructions",
                    _grid(dm, torch.cat([held, recon]), len(held)), step)
        a, b = dm.val_set[: self.n_paths].to(device), dm.val_set[self.n_paths : 2 * self.n_paths].to(device)
        t = torch.linspace(0, 1, self.n_steps, device=device)[None, :, None]
        path = ((1 - t) * a[:, None] + t * b[:, None]).flatten(0, 1)
        log_picture(trainer.loggers, out_dir, "latent/code_interpolation",
                    _grid(dm, pl_module.decode(path), self.n_steps), step)


def _grid(dm: CodeDataModule, images: torch.Tensor, nrow: int) -> torch.Tensor:
    return make_grid(dm.images.to_unit(images).clamp(0, 1).cpu(), nrow=nrow, pad_value=1.0)


def _projection(codes: torch.Tensor, fake: torch.Tensor, step: int) -> Figure:
    """Training and generated codes on the training codes' first two principal axes."""
    mean = codes.mean(0)
    axes = torch.linalg.svd(codes - mean, full_matrices=False).Vh[:2].T  # deterministic: no RNG drawn
    real_2d, fake_2d = ((codes - mean) @ axes).numpy(), ((fake - mean) @ axes).numpy()
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.scatter(real_2d[:, 0], real_2d[:, 1], s=3, alpha=0.4, label="training codes")
    ax.scatter(fake_2d[:, 0], fake_2d[:, 1], s=3, alpha=0.4, label="generated codes")
    ax.set_title(f"codes on their 2 principal axes, step {step}")
    ax.legend(loc="upper right")
    return fig
