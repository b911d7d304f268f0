"""Class-conditional generation: the class code, pairing that never crosses classes, the
figures and pictures of such a run, and `python -m ot_gen.sample class=...`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SHARED, needs_shared
from ot_gen.errors import ConfigError
from ot_gen.matching import (
    ExactMatcher, NearestMatcher, PartialMatcher, SinkhornMatcher, UnbalancedMatcher, match_by_class,
)
from ot_gen.matching.costs import SqEuclidean
from ot_gen.model.priors import ClassConditionalPrior, GaussianMixturePrior, GaussianPrior
from ot_gen.run.build import build
from ot_gen.run.train import run


def test_the_class_code_sits_beside_the_latent_and_is_read_back():
    prior = ClassConditionalPrior(GaussianPrior(5), torch.tensor([1.0, 0.0, 3.0]))
    assert prior.dim == 8 and prior.centres.shape == (1, 8)
    labels = torch.tensor([2, 0, 2, 1])
    z = prior.sample(4, labels)
    assert torch.equal(prior.labels_of(z), labels) and torch.equal(z[:, 5:].sum(1), torch.ones(4))
    drawn = prior.labels_of(prior.sample(4000))
    assert (drawn == 1).sum() == 0, "a class without training points is never drawn"
    assert 0.7 < (drawn == 2).double().mean() < 0.8  # 3 of 4
    mixture = ClassConditionalPrior(GaussianMixturePrior(4, 6, 0.1), torch.ones(10))
    assert mixture.centres.shape == (6, 14) and mixture.noise_std == 0.1


@pytest.mark.parametrize("make", [ExactMatcher, SinkhornMatcher, NearestMatcher, PartialMatcher,
                                  UnbalancedMatcher], ids=lambda m: m.__name__)
@pytest.mark.parametrize("k", [1, 3])
def test_pairing_by_class_never_crosses_classes(make, k):
    g = torch.Generator().manual_seed(k)
    real_labels = torch.randint(4, (60,), generator=g)
    gen_labels = real_labels.repeat(k)[torch.randperm(60 * k, generator=g)]  # shuffled, k per real
    x, y = torch.randn(60 * k, 2, generator=g), torch.randn(60, 2, generator=g)
    match = match_by_class(make(), x, y, SqEuclidean(), k, torch.arange(60), gen_labels, real_labels)
    assert torch.equal(gen_labels[match.gen_idx], real_labels[match.real_idx])
    assert match.stats["classes_solved"] == 4
    if make is ExactMatcher:  # every real its k partners, each generated point once
        assert torch.bincount(match.real_idx, minlength=60).tolist() == [k] * 60
        assert len(set(match.gen_idx.tolist())) == 60 * k


def test_reals_of_a_class_without_generated_points_get_none():
    real_labels = torch.tensor([0, 0, -1, 1])
    gen_labels = torch.tensor([0, 0, 1])
    x, y = torch.randn(3, 2), torch.randn(4, 2)
    match = match_by_class(ExactMatcher(), x, y, SqEuclidean(), 1, None, gen_labels, real_labels)
    assert sorted(match.real_idx.tolist()) == [0, 1, 3]


def test_conditional_needs_labelled_data(config):
    with pytest.raises(ConfigError, match=r"conditional=True is not allowed: false for data without class labels"):
        build(config("conditional=true"))


def test_conditional_refuses_a_matcher_over_the_whole_training_set(config, tmp_path):
    from conftest import write_cifar

    write_cifar(tmp_path / "c10")
    with pytest.raises(ConfigError, match=r"conditional=True is not allowed: false with matcher=semidiscrete"):
        build(config("data=cifar10", f"data.root={tmp_path}/c10", "val_samples=10", "data.n_train=null",
                     "mode=oversampled", "mode.pool_size=8", "matcher=semidiscrete", "conditional=true"))


MNIST = [f"paths.data_dir={SHARED}", "data=mnist", "data.download=false", "data.n_train=1000", "val_samples=200",
         "eval.n_heldout=200", "eval.n_generated=1000", "conditional=true", "logger=csv",
         "callbacks.frechet_classifier.steps=100", "callbacks.memorization=null"]


@needs_shared
@pytest.mark.parametrize("mode", ["mode.batch_size=100", "mode=oversampled mode.pool_size=200 mode.k=2"],
                         ids=["minibatch", "oversampled"])
def test_a_conditional_run_pairs_within_classes_and_shows_every_class(config, mode):
    cfg = config(*MNIST, *mode.split(), "trainer.max_steps=6", "mode.val_every_rounds=3")
    module, data, _, _ = build(cfg)
    assert module.conditional and module.prior.n_classes == 10 and module.generator.net[0].in_features == 10 + 2
    data.setup()
    module.real_labels = data.train_labels
    ids = torch.arange(200)
    z = module.latents_for(ids, 2)
    assert torch.equal(module.prior.labels_of(z), data.train_labels[ids].repeat(2))
    y, match = module.match(module.generate(z), data.train_set[ids], ids, 2, z=z)
    assert torch.equal(module.prior.labels_of(z)[match.gen_idx], data.train_labels[ids][match.real_idx])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train/classes_solved"] == 10 and 0 <= metrics["val/class_match"] <= 1
    assert list((out / "plots").glob("by_class_step*.png"))


@needs_shared
def test_sample_makes_the_class_asked_for_and_refuses_what_it_cannot(config, tmp_path):
    from ot_gen.run.sample import write_samples

    cfg = config(*MNIST, "mode.batch_size=100", "trainer.max_steps=2", "mode.val_every_rounds=2",
                 "callbacks.frechet_classifier=null", "callbacks.latent_traversals=null", "callbacks.image_grids=null",
                 "eval.n_generated=0")
    run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    png = tmp_path / "by_class.png"
    write_samples(ckpt, 20, tmp_path / "all.npy", png=png)
    from PIL import Image

    assert Image.open(png).size[1] > Image.open(png).size[0], "10 rows of 8: one per class"
    sevens = write_samples(ckpt, 20, tmp_path / "sevens.npy", label=7)
    assert sevens.shape == (20, 1, 28, 28)
    with pytest.raises(ConfigError, match=r"class=10 is not allowed: a class of the run's data: an integer in \[0, 10\)"):
        write_samples(ckpt, 5, tmp_path / "x.npy", label=10)
