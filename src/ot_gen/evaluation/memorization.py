"""Is the generator making new images or copying its training images?

OT matching against a finite training set has that set itself as its optimum, and the
Fréchet distance and recall against held-out images cannot tell a copy from a new image.
Three figures can, each read against unseen real images, which are the reference:

- `train_distance_ratio`: the median distance (pixels in [0, 1]) from a generated image
  to its nearest training image, over the same median for held-out real images.
  1.0: no closer to the training set than unseen data; 0.0: exact copies. Blur alone
  lowers it a little (a blurred copy sits near its source).
- `near_copies`: the share of generated images that Lowe's ratio test flags: nearest over
  second-nearest training distance below the 5th percentile of that ratio among held-out
  images (so about 0.05 for unseen data, 1.0 for copies).
- `data_copying_ct`: the C_T statistic of Meehan, Chaudhuri and Dasgupta ("A
  non-parametric test to detect data-copying in generative models", AISTATS 2020), in a
  feature space (the run's classifier's): the space is cut into `cells` by k-means on the
  training features; in each cell a Mann-Whitney U test compares the distances of
  generated and of held-out points to the cell's training points; C_T is the z-scores'
  average weighted by the held-out share of each cell (cells with fewer than
  `min_per_cell` generated points left out). About 0 for unseen data, strongly negative
  for copies (generated points closer to the training set), positive for underfitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from scipy.stats import mannwhitneyu

from ot_gen.errors import check_positive_int
from ot_gen.evaluation.frechet import ClassifierFrechet
from ot_gen.evaluation.pictures import log_picture, nearest_training_picture
from ot_gen.rng import own_rng

COPY_PERCENTILE = 5.0  # held-out images flagged by the ratio test, by construction (percent)


@torch.no_grad()
def two_nearest(queries: torch.Tensor, train: torch.Tensor, chunk: int = 4096
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distance to the nearest training point, to the second nearest, the nearest's index)
    for every query, Euclidean over flattened points (float64); the training set in chunks."""
    q = queries.flatten(1).double()
    q_sq = (q * q).sum(1, keepdim=True)
    best = torch.full((len(q), 2), float("inf"), dtype=torch.float64, device=q.device)
    best_idx = torch.zeros((len(q), 2), dtype=torch.long, device=q.device)
    for start in range(0, len(train), chunk):
        t = train[start : start + chunk].flatten(1).double().to(q.device)
        d2 = (q_sq + (t * t).sum(1) - 2.0 * q @ t.T).clamp_min_(0)
        vals, idx = d2.topk(min(2, d2.shape[1]), dim=1, largest=False)
        vals, idx = torch.cat([best, vals], 1), torch.cat([best_idx, idx + start], 1)
        order = vals.argsort(1)[:, :2]
        best, best_idx = vals.gather(1, order), idx.gather(1, order)
    return best[:, 0].sqrt(), best[:, 1].sqrt(), best_idx[:, 0]


@dataclass(frozen=True)
class Reference:
    """What unseen real images score: the median distance to the nearest training image,
    and the ratio-test threshold (the `COPY_PERCENTILE` percentile of their ratios)."""

    median_distance: float
    ratio_threshold: float

    @classmethod
    def of(cls, heldout: torch.Tensor, train: torch.Tensor) -> "Reference":
        d1, d2, _ = two_nearest(heldout, train)
        ratio = (d1 / d2.clamp_min(1e-12)).cpu().numpy()
        return cls(float(d1.median()), float(np.percentile(ratio, COPY_PERCENTILE)))


def pixel_scores(generated: torch.Tensor, train: torch.Tensor, reference: Reference) -> dict[str, float]:
    """`train_distance_ratio` and `near_copies` of `generated` (pixel scale [0, 1])."""
    d1, d2, _ = two_nearest(generated, train)
    ratio = d1 / d2.clamp_min(1e-12)
    return {"train_distance_ratio": float(d1.median()) / max(reference.median_distance, 1e-12),
            "near_copies": float((ratio < reference.ratio_threshold).double().mean())}


@dataclass(frozen=True)
class CopyingTest:
    """Meehan et al.'s test prepared once for a training set and its held-out reference: the
    k-means partition of the training features and, per cell, the held-out points' distances
    to the cell's training points. `score(generated)` is C_T; only the generated side is
    computed again at each validation."""

    centroids: np.ndarray
    train_cells: list[torch.Tensor]  # the training points of each cell
    heldout_dist: list[np.ndarray]  # each cell's held-out points' distances to them

    @classmethod
    def of(cls, train: torch.Tensor, heldout: torch.Tensor, cells: int = 10, seed: int = 0) -> "CopyingTest":
        check_positive_int("cells", cells, minimum=2)
        train_f = train.flatten(1).double().cpu().numpy()
        centroids, train_cell = kmeans2(train_f, cells, minit="++", seed=np.random.default_rng(seed))
        held_f = heldout.flatten(1).double().cpu().numpy()
        held_cell = _cell_of(held_f, centroids)
        train_cells = [torch.from_numpy(train_f[train_cell == c]) for c in range(cells)]
        heldout_dist = [two_nearest(torch.from_numpy(held_f[held_cell == c]), t)[0].numpy() if len(t) else
                        np.empty(0) for c, t in enumerate(train_cells)]
        return cls(centroids, train_cells, heldout_dist)

    def score(self, generated: torch.Tensor, min_per_cell: int = 20) -> float:
        """C_T of `generated` (see the module docstring). NaN when no cell holds
        `min_per_cell` generated and held-out points."""
        gen_f = generated.flatten(1).double().cpu().numpy()
        gen_cell = _cell_of(gen_f, self.centroids)
        weights, z_scores = [], []
        for c, (t, p_dist) in enumerate(zip(self.train_cells, self.heldout_dist)):
            q = gen_f[gen_cell == c]
            if len(t) == 0 or len(q) < min_per_cell or len(p_dist) < min_per_cell:
                continue
            q_dist = two_nearest(torch.from_numpy(q), t)[0].numpy()
            u = mannwhitneyu(q_dist, p_dist, alternative="less").statistic  # generated closer: small U
            m, n = len(q), len(p_dist)
            z_scores.append((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))
            weights.append(n)
        if not weights:
            return float("nan")
        w = np.asarray(weights, dtype=float)
        return float((w / w.sum()) @ np.asarray(z_scores))


def _cell_of(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)


def data_copying_ct(train: torch.Tensor, heldout: torch.Tensor, generated: torch.Tensor, cells: int = 10,
                    min_per_cell: int = 20, seed: int = 0) -> float:
    """Meehan et al.'s C_T over a k-means partition of the training features, in one call
    (`CopyingTest` keeps the partition for repeated scoring)."""
    return CopyingTest.of(train, heldout, cells, seed).score(generated, min_per_cell)


class Memorization(L.Callback):
    """Image data: at each validation, `n_samples` generated images (fixed latents from
    their own RNG) scored against the training set with held-out images as the reference,
    logged as `val/train_distance_ratio`, `val/near_copies` and, when the run trains its
    classifier (`callbacks.frechet_classifier`), `val/data_copying_ct` in its features;
    and the picture `images/nearest_train`: `n_show` random samples (top row) above their
    nearest training image (bottom row)."""

    def __init__(self, n_samples: int = 1000, n_show: int = 16, cells: int = 10, min_per_cell: int = 20,
                 seed: int = 0):
        self.n_samples = check_positive_int("n_samples", n_samples, minimum=20)
        self.n_show = check_positive_int("n_show", n_show)
        self.cells = check_positive_int("cells", cells, minimum=2)
        self.min_per_cell = check_positive_int("min_per_cell", min_per_cell)
        self.seed = int(seed)
        self._reference: Reference | None = None
        self._copying: CopyingTest | None = None

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        dm = None if trainer.datamodule is None else trainer.datamodule.eval_data
        if trainer.sanity_checking or dm is None or dm.val_set.dim() != 4:
            return
        device = pl_module.device
        train = dm.to_unit(dm.train_set).to(device)
        heldout = dm.val_set[: self.n_samples].to(device)
        if self._reference is None:
            self._reference = Reference.of(dm.to_unit(heldout), train)
        with own_rng(device, self.seed):  # the images ClassifierFrechet scores, with the same seed
            fake = pl_module.sample(len(heldout))
        fake_unit = dm.to_unit(fake).clamp(0, 1)
        figures = pixel_scores(fake_unit, train, self._reference)
        classifier = next((cb.model for cb in trainer.callbacks if isinstance(cb, ClassifierFrechet)), None)
        if classifier is not None:
            if self._copying is None:  # the classifier is trained once: so is the partition of its features
                self._copying = CopyingTest.of(_features(classifier, dm.train_set.to(device)),
                                               _features(classifier, heldout), self.cells, self.seed)
            figures["data_copying_ct"] = self._copying.score(_features(classifier, fake), self.min_per_cell)
        pl_module.log_dict({f"val/{k}": v for k, v in figures.items()}, sync_dist=True)
        if trainer.is_global_zero:
            shown = fake_unit[: self.n_show]
            _, _, idx = two_nearest(shown, train)
            log_picture(trainer.loggers, Path(trainer.default_root_dir), "images/nearest_train",
                        nearest_training_picture(shown, train[idx]), trainer.global_step)


def _features(classifier, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([classifier.features(c) for c in images.split(1000)])
