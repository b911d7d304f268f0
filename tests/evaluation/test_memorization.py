"""The memorization figures tell copies from new images: training images score as copies,
unseen real images as novel, blurred copies in between (real MNIST)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, SHARED, needs_shared
from omegaconf import OmegaConf, open_dict
from ot_gen.data import ImageDataModule
from ot_gen.evaluation.memorization import Reference, data_copying_ct, pixel_scores, two_nearest
from ot_gen.run.train import run


def test_two_nearest_is_the_brute_force_answer_across_chunks():
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(40, 6, generator=g), torch.randn(301, 6, generator=g)
    d = torch.cdist(q.double(), t.double())
    best = d.topk(2, dim=1, largest=False)
    d1, d2, idx = two_nearest(q, t, chunk=64)
    assert torch.allclose(d1, best.values[:, 0], atol=1e-9) and torch.allclose(d2, best.values[:, 1], atol=1e-9)
    assert torch.equal(idx, best.indices[:, 0])
    exact = two_nearest(t[:5], t)  # a training point's nearest is itself, at distance 0
    assert torch.equal(exact[2], torch.arange(5)) and exact[0].abs().max() < 1e-6


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    dm = ImageDataModule("mnist", root=str(SHARED / "mnist"), n_train=6000, n_val=2000, value_range=(0, 1),
                         download=False, cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.setup()
    return dm.train_set, dm.val_set[:1000], dm.val_set[1000:]  # training set, reference, unseen


def _features(x):  # a cheap fixed feature space for C_T: 7×7 average-pooled pixels
    return F.avg_pool2d(x, 4)


@needs_shared
def test_copies_score_as_copies_and_unseen_images_as_novel(mnist):
    train, reference, unseen = mnist
    ref = Reference.of(reference, train)
    copies = train[:1000]
    blurred = F.avg_pool2d(copies, 3, stride=1, padding=1, count_include_pad=False)
    scores = {name: pixel_scores(x, train, ref) for name, x in
              (("copies", copies), ("unseen", unseen), ("blurred", blurred))}
    ct = {name: data_copying_ct(_features(train), _features(reference), _features(x)) for name, x in
          (("copies", copies), ("unseen", unseen), ("blurred", blurred))}
    assert scores["copies"]["train_distance_ratio"] < 1e-3 and scores["copies"]["near_copies"] == 1.0
    assert 0.9 < scores["unseen"]["train_distance_ratio"] < 1.1
    assert 0.01 < scores["unseen"]["near_copies"] < 0.10  # 5% by construction, up to sampling noise
    # blur alone does not hide a copy: its source stays its nearest image, far closer than unseen ones
    assert scores["blurred"]["train_distance_ratio"] < 0.8 and scores["blurred"]["near_copies"] > 0.5
    assert ct["copies"] < -5 and ct["blurred"] < -5 and abs(ct["unseen"]) < 3


def test_data_copying_ct_is_nan_without_a_cell_big_enough():
    g = torch.Generator().manual_seed(1)
    train, held, gen = (torch.randn(n, 3, generator=g) for n in (200, 10, 10))
    assert math.isnan(data_copying_ct(train, held, gen, cells=4, min_per_cell=20))


@needs_shared
def test_early_stopping_on_the_copying_figure_stops_the_run_at_that_validation(config, tmp_path):
    """Lightning's EarlyStopping on val/near_copies in the `callbacks.early_stopping` slot: the
    run stops at the first validation whose near-copy share passes the threshold (here any)."""
    stop = {"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "val/near_copies", "mode": "min",
            "divergence_threshold": -1.0, "patience": 1_000_000, "check_on_train_epoch_end": False}
    cfg = config("experiment=emgn_mnist", "debug=smoke", f"paths.data_dir={SHARED}", f"data.cache_dir={tmp_path}/c",
                 "data.download=false", "trainer.max_steps=60", "eval.n_generated=0", fast=False)
    with open_dict(cfg):
        cfg.callbacks.early_stopping = OmegaConf.create(stop)
    run(cfg)
    metrics = json.loads((ROOT / cfg.paths.output_dir / "metrics.json").read_text())
    assert metrics["rounds"] == cfg.mode.val_every_rounds  # stopped at the first validation, not at max_steps
    assert metrics["steps"] < 60 and "val/near_copies" in metrics
