"""The end-of-run evaluation (after the last validation): how well generated points
approximate unseen ones, with its pictures, and the OT-GAN paper's W1 to the training
set. Configured by the `eval` block of conf/train.yaml."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from ot_gen.evaluation.metrics import unseen_sample_distances, w1_k_to_1, w2_each
from ot_gen.evaluation.pictures import unseen_sample_pictures
from ot_gen.rng import own_rng

log = logging.getLogger(__name__)


def final_metrics(cfg: DictConfig, module: L.LightningModule, data, trainer: L.Trainer) -> dict[str, float]:
    """The `eval/*` figures of a trained `module` (anything with `sample(n)`) on `data`
    (against the images, for a code-space run's codes)."""
    data = data.eval_data
    return {**w2_over_draws(cfg.w2_draws, module, data, trainer.global_step),
            **_unseen_sample_metrics(cfg, module, data, trainer), **_w1_to_train(cfg, module, data)}


@torch.no_grad()
def w2_over_draws(draws: int, module: L.LightningModule, data, step: int | None = None) -> dict[str, float]:
    """val/w2 is one draw of generated points against the held-out set: its noise is as large
    as the differences a reader looks for. At the end, `draws` fixed draws (the first is
    validation's own) give `eval/w2` (their mean) and `eval/w2_spread` (their std); the floor
    likewise, `draws` disjoint training subsets of the held-out set's size against it
    (`eval/w2_floor`, `eval/w2_floor_spread`), and `eval/w2_ratio` = mean over mean.

    Draw 0 is validation's own draw and validation's floor: when a validation of this very
    state (`step`) scored the whole held-out set, its exact values are taken, not solved again
    (two 2000 × 2000 solves of the default run's ten). The rest are solved at once
    (`w2_each`), the samples drawn first, each from its fixed stream."""
    if not draws:
        return {}
    held = data.val_set.to(module.device)
    n = min(len(held), len(data.train_set))
    scored = getattr(module, "scored", None)  # set by validations of the whole held-out set only
    reuse_score = scored is not None and scored[0] == step
    samples = []
    for r in range(1 if reuse_score else 0, draws):  # r = 0: what every validation draws and scores
        with own_rng(module.device, r):
            samples.append(module.sample(len(held)))
    # The floor of r = 0 is validation's own: the first n training points, as here.
    subsets = [torch.arange(len(data.train_set)).roll(-r * n)[:n]  # disjoint while the set holds draws × n
               for r in range(1 if scored is not None else 0, draws)]
    solved = w2_each([(x, held) for x in samples] + [(data.train_set[s].to(module.device), held[:n]) for s in subsets])
    scores = ([scored[1]] if reuse_score else []) + solved[: len(samples)]
    floors = ([module.w2_floor] if scored is not None else []) + solved[len(samples):]
    mean, floor = float(np.mean(scores)), float(np.mean(floors))
    return {"eval/w2": mean, "eval/w2_spread": float(np.std(scores)), "eval/w2_floor": floor,
            "eval/w2_floor_spread": float(np.std(floors)), "eval/w2_ratio": mean / max(floor, 1e-12)}


def _unseen_sample_metrics(cfg: DictConfig, module: L.LightningModule, data, trainer: L.Trainer) -> dict[str, float]:
    """How well generated points approximate held-out ones (pixel scale [0, 1] for images),
    with the histogram and closest-image pictures."""
    if not cfg.n_generated:
        return {}
    heldout = data.to_unit(data.val_set[: cfg.n_heldout].to(module.device))
    train = data.to_unit(data.train_set.to(module.device))
    sample = lambda n: data.to_unit(module.sample(n))  # noqa: E731
    figures, details = unseen_sample_distances(heldout, train, sample, cfg.n_generated, cfg.chunk)
    if trainer.is_global_zero:
        unseen_sample_pictures(trainer.loggers, Path(trainer.default_root_dir), heldout, details, trainer.global_step)
    return figures


def _w1_to_train(cfg: DictConfig, module: L.LightningModule, data) -> dict[str, float]:
    """The OT-GAN paper's figure: W1 (exact OT, Euclidean cost, in the data's own scale)
    between `eval.w1_reals` training points and `eval.w1_k` times as many generated ones."""
    if not cfg.w1_k or not cfg.w1_reals:
        return {}
    reals = data.train_set[: cfg.w1_reals].to(module.device)
    start = time.perf_counter()
    w1 = w1_k_to_1(module.sample(cfg.w1_k * len(reals)), reals)
    log.info("eval/w1_train %.4f (%d training points, %d× as many generated; %.1f s)",
             w1, len(reals), cfg.w1_k, time.perf_counter() - start)
    return {"eval/w1_train": w1}
