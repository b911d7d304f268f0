"""Pictures made during training and at its end (Lightning callbacks, plus the end-of-run
closest-image pictures), sent to the active loggers and saved in the run dir. They draw
from their own random streams (`rng.own_rng`), so they never change a run's results."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid, save_image

from ot_gen.errors import check_positive_int
from ot_gen.rng import own_rng


def log_picture(loggers: list[Logger], out_dir: Path, key: str, picture: Figure | torch.Tensor, step: int) -> Path:
    """Save a matplotlib figure or an image tensor (C, H, W) in [0, 1] as
    `out_dir/plots/<name>_step<step>.png` (name: the last part of `key`) and send it to
    every logger that shows pictures (W&B as wandb.Image, TensorBoard as figure/image)."""
    path = Path(out_dir) / "plots" / f"{key.rsplit('/', 1)[-1]}_step{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(picture, Figure):
        picture.savefig(path, dpi=100)  # no bbox_inches="tight": a second layout pass, ~40% of the save
    else:
        save_image(picture, path)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            if isinstance(picture, Figure):
                logger.experiment.add_figure(key, picture, global_step=step)
            else:
                logger.experiment.add_image(key, picture.clamp(0, 1), global_step=step)
    return path


def _image_grid(dm, images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images in the data's value range as one grid picture in [0, 1]."""
    return make_grid(dm.to_unit(images).clamp(0, 1).cpu(), nrow=nrow, pad_value=1.0)


def nearest_training_picture(samples: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """Samples (top row) above their nearest training image (bottom row), both in [0, 1]:
    a copying generator shows the same image twice."""
    return make_grid(torch.cat([samples, nearest]).clamp(0, 1).cpu(), nrow=len(samples), pad_value=1.0)


def _plot_samples(ax, real: torch.Tensor, fake: torch.Tensor) -> None:
    """Generated over held-out points: histograms for 1-D data, a scatter for 2-D."""
    r, f = real.cpu().numpy(), fake.cpu().numpy()
    if r.shape[1] == 1:
        ax.hist(r[:, 0], bins=50, density=True, alpha=0.5, label="held-out")
        ax.hist(f[:, 0], bins=50, density=True, alpha=0.5, label="generated")
    else:
        ax.scatter(r[:, 0], r[:, 1], s=4, alpha=0.5, label="held-out")
        ax.scatter(f[:, 0], f[:, 1], s=4, alpha=0.5, label="generated")
        ax.set_aspect("equal")
    ax.legend(loc="upper right")


def _draws_now(trainer: L.Trainer) -> bool:
    """Pictures are drawn once per real validation, by rank zero only."""
    return not trainer.sanity_checking and trainer.is_global_zero


def _matched_pairs(pl_module, y: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """As many generated points as reals `y`, paired by the run's matcher and matching
    cost; returns (generated, real) row-aligned in the order of the reals. A matcher over
    the whole training set (semidiscrete) pairs them with training points instead of `y`.
    A class-conditional run generates the reals' classes (`labels`) and pairs within them.
    The module is in eval mode here, so stateful matchers pair without learning."""
    conditional = getattr(pl_module, "conditional", False) and labels is not None
    z = pl_module.prior.sample(len(y), labels.to(y.device)) if conditional else pl_module.prior.sample(len(y))
    x = pl_module.generate(z)
    y, match = pl_module.match(x, y, None, each_real=1, z=z, real_labels=labels if conditional else None)
    order = torch.argsort(match.real_idx, stable=True)
    return x[match.gen_idx[order]], y[match.real_idx[order]]


class PointCloudPlots(L.Callback):
    """After each validation, for 1-D and 2-D data:

    - `plots/samples`: generated points over held-out points (2-D scatter, 1-D histogram);
    - `plots/pairs` (2-D): `n_pairs` reals, as many generated points, and a line from each
      generated point to the partner the run's matcher gives it;
    - `plots/density` (2-D): 2-D histograms of `n_density` generated points and of the
      training points, on the same bins.

    Other data shapes are left to the image callbacks.
    """

    def __init__(self, n_points: int = 1000, n_pairs: int = 150, n_density: int = 20_000):
        self.n_points = check_positive_int("n_points", n_points)
        self.n_pairs = check_positive_int("n_pairs", n_pairs)
        self.n_density = check_positive_int("n_density", n_density)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        real = trainer.datamodule.eval_data.val_set
        if not _draws_now(trainer) or real.dim() != 2 or real.shape[1] > 2:
            return
        with own_rng(pl_module.device):
            self._draw(trainer, pl_module, real[: self.n_points].to(pl_module.device))

    def _draw(self, trainer: L.Trainer, pl_module, real: torch.Tensor) -> None:
        out_dir, step = Path(trainer.default_root_dir), trainer.global_step
        fake = pl_module.sample(len(real))
        log_picture(trainer.loggers, out_dir, "plots/samples", self._samples(real, fake, step), step)
        if real.shape[1] == 2:
            fig = self._pairs(*_matched_pairs(pl_module, real[: self.n_pairs]), step)
            log_picture(trainer.loggers, out_dir, "plots/pairs", fig, step)
            fig = self._density(trainer.datamodule.eval_data.train_set, pl_module.sample(self.n_density), step)
            log_picture(trainer.loggers, out_dir, "plots/density", fig, step)

    @staticmethod
    def _samples(real: torch.Tensor, fake: torch.Tensor, step: int) -> Figure:
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        _plot_samples(ax, real, fake)
        ax.set_title(f"step {step}")
        return fig

    @staticmethod
    def _density(real: torch.Tensor, fake: torch.Tensor, step: int) -> Figure:
        r, f = real.cpu().numpy(), fake.cpu().numpy()
        lo, hi = np.percentile(r, 0.5, axis=0), np.percentile(r, 99.5, axis=0)
        pad = 0.1 * (hi - lo)
        bins = [np.linspace(lo[i] - pad[i], hi[i] + pad[i], 80) for i in range(2)]
        fig = Figure(figsize=(10, 4.6))
        for k, (points, title) in enumerate(((r, "training data"), (f, f"generated, step {step}"))):
            ax = fig.add_subplot(1, 2, k + 1)
            ax.hist2d(points[:, 0], points[:, 1], bins=bins, density=True, cmap="magma")
            ax.set_aspect("equal")
            ax.set_title(f"{title} ({len(points)} points)")
        return fig

    @staticmethod
    def _pairs(x: torch.Tensor, y: torch.Tensor, step: int) -> Figure:
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        xs, ys = x.cpu().numpy(), y.cpu().numpy()
        ax.add_collection(LineCollection(np.stack([xs, ys], 1), colors="0.6", linewidths=0.6))
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
      run's matcher pairs them with (bottom row);
    - `images/by_class` (class-conditional runs): one row per class, `per_class` samples
      of it each.
    """

    def __init__(self, n_samples: int = 64, n_pairs: int = 16, per_class: int = 8):
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.n_pairs = check_positive_int("n_pairs", n_pairs, minimum=2)
        self.per_class = check_positive_int("per_class", per_class)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        points, dm = trainer.datamodule, trainer.datamodule.eval_data
        if not _draws_now(trainer) or dm.val_set.dim() != 4:
            return
        out_dir, step = Path(trainer.default_root_dir), trainer.global_step
        with own_rng(pl_module.device):
            samples = pl_module.sample(self.n_samples)
            labels = None if getattr(dm, "val_labels", None) is None else dm.val_labels[: self.n_pairs]
            # Paired where the run pairs (a code-space run: codes), shown as data (decoded).
            pairs = _matched_pairs(pl_module, points.val_set[: self.n_pairs].to(pl_module.device), labels)
            fake, real = (pl_module.decode(x) for x in pairs)
            by_class = class_grid(pl_module, self.per_class) if getattr(pl_module, "conditional", False) else None
        log_picture(trainer.loggers, out_dir, "images/samples", _image_grid(dm, samples, int(self.n_samples**0.5)), step)
        log_picture(trainer.loggers, out_dir, "images/pairs", _image_grid(dm, torch.cat([real, fake]), len(real)), step)
        if by_class is not None:
            log_picture(trainer.loggers, out_dir, "images/by_class", _image_grid(dm, by_class, self.per_class), step)


def class_grid(module, per_class: int) -> torch.Tensor:
    """`per_class` samples of every class of a class-conditional module, class by class."""
    labels = torch.arange(module.prior.n_classes, device=module.device).repeat_interleave(per_class)
    return module.sample(len(labels), labels)


class LatentTraversals(L.Callback):
    """After each validation, for image data, what the generator does to its input space
    (pictures drawn from a fixed generator, so they never touch the training RNG):

    - `latent/plane_i_j`: the generator on a regular `n_grid`×`n_grid` grid over latent
      dimensions (i, j) ∈ {(0, 1), (1, 2), (0, 2)}, ±`span` times the prior's spread (the
      std of its component centres and noise together) around its first component centre,
      the other dimensions fixed there — the Earth-moving net's "fixed input plane" pictures;
    - `latent/interpolation`: `n_paths` straight lines between latent points (between
      different components for a mixture), `n_steps` images each;
    - `latent/centre_noise` (priors of several components): samples around one component
      centre at noise 0, 0.5, 1, 2 and 4 × its noise std, one row each.
    """

    NOISE = (0.0, 0.5, 1.0, 2.0, 4.0)

    def __init__(self, n_grid: int = 8, span: float = 2.0, n_paths: int = 6, n_steps: int = 8, seed: int = 0):
        self.n_grid = check_positive_int("n_grid", n_grid, minimum=2)
        self.span = float(span)
        self.n_paths = check_positive_int("n_paths", n_paths)
        self.n_steps = check_positive_int("n_steps", n_steps, minimum=2)
        self.seed = int(seed)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        dm = trainer.datamodule.eval_data
        if not _draws_now(trainer) or dm.val_set.dim() != 4:
            return
        prior, device = pl_module.prior, pl_module.device
        # A class-conditional prior: the traversals move in its base latent, for class 0.
        conditional = prior if getattr(prior, "base", None) is not None else None
        with_code = (lambda z: torch.cat([z, conditional.code(torch.zeros(len(z), dtype=torch.long))], 1)) \
            if conditional is not None else (lambda z: z)  # noqa: E731
        prior = prior if conditional is None else conditional.base
        centres, scale = prior.centres.to(device), prior.noise_std
        mixture = len(centres) > 1
        centre = centres[0]
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = lambda *shape: torch.randn(*shape, generator=gen).to(device)  # noqa: E731
        show = lambda z, nrow: _image_grid(dm, pl_module.render(with_code(z)), nrow)  # noqa: E731
        out_dir, step = Path(trainer.default_root_dir), trainer.global_step
        # The plane spans the prior's overall spread: its centres' spread and its noise.
        spread = float((centres.var(0).mean() + scale**2).sqrt()) if mixture else scale
        values = torch.linspace(-self.span * spread, self.span * spread, self.n_grid, device=device)
        for i, j in ((0, 1), (1, 2), (0, 2)):
            if j >= prior.dim:
                continue
            z = centre.repeat(self.n_grid**2, 1)
            z[:, i] += values.repeat_interleave(self.n_grid)
            z[:, j] += values.repeat(self.n_grid)
            log_picture(trainer.loggers, out_dir, f"latent/plane_{i}_{j}", show(z, self.n_grid), step)
        ends = centre + scale * noise(2, self.n_paths, prior.dim)
        if mixture:  # paths between different components
            ends = ends - centre + centres[torch.randint(len(centres), (2, self.n_paths), generator=gen).to(device)]
        t = torch.linspace(0, 1, self.n_steps, device=device)[None, :, None]
        z = (ends[0][:, None] * (1 - t) + ends[1][:, None] * t).reshape(-1, prior.dim)
        log_picture(trainer.loggers, out_dir, "latent/interpolation", show(z, self.n_steps), step)
        if mixture:
            z = torch.cat([centre + level * scale * noise(self.n_steps, prior.dim) for level in self.NOISE])
            log_picture(trainer.loggers, out_dir, "latent/centre_noise", show(z, self.n_steps), step)


def unseen_sample_pictures(loggers, out_dir: Path, heldout: torch.Tensor, details: dict[str, torch.Tensor],
                           step: int, n_show: int = 16) -> None:
    """The Earth-moving net's diff_validation pictures, from `unseen_sample_distances`:

    - `eval/nn_histogram`: the distances from held-out points to their closest generated
      point, next to those to their closest training point (the memorisation baseline);
    - `eval/closest` (images): `n_show` held-out images (top row), the closest generated
      image to each (middle) and the closest training image (bottom).
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    gen, train = details["generated"].cpu().numpy(), details["train"].cpu().numpy()
    bins = np.linspace(0, max(gen.max(), train.max()) * 1.02, 40)
    ax.hist(gen, bins=bins, alpha=0.6, label=f"closest generated (mean {gen.mean():.3g})")
    ax.hist(train, bins=bins, alpha=0.6, label=f"closest training (mean {train.mean():.3g})")
    ax.set_xlabel("distance from a held-out point")
    ax.set_ylabel("held-out points")
    ax.legend()
    log_picture(loggers, out_dir, "eval/nn_histogram", fig, step)
    if heldout.dim() == 4:
        k = min(n_show, len(heldout))
        rows = torch.cat([heldout[:k].float().cpu(), details["closest_generated"][:k].cpu(),
                          details["closest_train"][:k].cpu()])
        log_picture(loggers, out_dir, "eval/closest", make_grid(rows.clamp(0, 1), nrow=k, pad_value=1.0), step)


class SummaryFigure(L.Callback):
    """`plots/summary`: one figure of the final state of a run (at the end of fit when fit
    validated that state last, else at train.py's final `trainer.validate`): val/w2 with
    its noise floor, val/energy, the matched and identity costs at every validation, and
    the final samples (scatter, histogram or image grid). The curves themselves are the
    logger's job; this is the picture to keep."""

    CURVES = ("val/w2", "val/w2_floor", "val/energy", "train/matched_cost", "train/identity_cost",
              "val/frechet_classifier")

    def __init__(self, n_points: int = 1000):
        self.n_points = check_positive_int("n_points", n_points)
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        # After the module's on_validation_epoch_end, which logs val/w2.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.history.append({"step": trainer.global_step,
                             **{k: float(metrics[k]) for k in self.CURVES if k in metrics}})
        if trainer.state.fn == "validate" and trainer.is_global_zero:
            self._draw(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        # After on_train_end: the generator holds what validations score (the EMA's average).
        if self.history and self.history[-1]["step"] == trainer.global_step and trainer.is_global_zero:
            self._draw(trainer, pl_module)

    def _draw(self, trainer: L.Trainer, pl_module) -> None:
        dm = trainer.datamodule.eval_data
        fig = Figure(figsize=(16, 4))
        ax = fig.add_subplot(1, 4, 1)
        self._curves(ax, ["val/w2", "val/w2_floor"], "W2 to held-out data")
        self._curves(fig.add_subplot(1, 4, 2), ["val/energy", "val/frechet_classifier"], "energy / Fréchet (classifier)")
        self._curves(fig.add_subplot(1, 4, 3), ["train/matched_cost", "train/identity_cost"], "cost per pair")
        ax = fig.add_subplot(1, 4, 4)
        with own_rng(pl_module.device):
            fake = pl_module.sample(self.n_points if dm.val_set.dim() != 4 else 64)
        if dm.val_set.dim() == 4:
            ax.imshow(_image_grid(dm, fake, 8).permute(1, 2, 0).numpy())
            ax.axis("off")
        else:
            _plot_samples(ax, dm.val_set[: self.n_points], fake)
        ax.set_title(f"samples after {trainer.global_step} steps")
        log_picture(trainer.loggers, Path(trainer.default_root_dir), "summary", fig, trainer.global_step)

    def _curves(self, ax, keys: list[str], title: str) -> None:
        drawn = 0
        for key in keys:
            points = [(h["step"], h[key]) for h in self.history if key in h]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=key)
                drawn += 1
        ax.set_xlabel("step")
        ax.set_title(title)
        if drawn:
            ax.legend()
