"""Evaluation figures: the Fréchet distance in a self-trained classifier's features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ot_gen.evaluation.frechet import SmallClassifier, frechet_distance, train_classifier


def test_frechet_known_cases_and_the_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.arange(6.0)
    assert frechet_distance(a, a + shift) == pytest.approx(shift @ shift, rel=1e-9)
    b = rng.standard_normal((300, 6)) * 2 + 1
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = a.mean(0) - b.mean(0)
    textbook = mu @ mu + np.trace(sa + sb - 2 * np.real(scipy.linalg.sqrtm(sa @ sb)))
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-8)
    dead = np.c_[a, np.zeros(400)]  # a feature that never fires: singular covariance, no warning
    assert frechet_distance(dead, dead + 1.0) == pytest.approx(7.0, rel=1e-9)


def test_the_classifier_learns_and_leaves_the_global_rng_alone():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (256,), generator=gen)
    images = torch.randn(256, 1, 12, 12, generator=gen) * 0.3
    images[labels == 1, :, :6] += 1.0  # class 1: bright top half
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    model = train_classifier(images, labels, steps=60, seed=0)
    assert torch.equal(torch.rand(3), before), "training the classifier does not move the run's RNG"
    assert isinstance(model, SmallClassifier)
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.95
        assert model.features(images).shape == (256, 64)


def test_class_imbalance_is_zero_for_the_held_out_mix_and_the_missing_share_without_a_class():
    """`val/class_imbalance` of samples that ARE the held-out images is 0; of samples that
    are only class-1 images, the share the classifier gives class 0 among held-out ones."""
    from types import SimpleNamespace

    from ot_gen.evaluation.frechet import ClassifierFrechet

    gen = torch.Generator().manual_seed(0)

    def images(n):
        labels = torch.randint(2, (n,), generator=gen)
        x = torch.rand(n, 1, 12, 12, generator=gen) * 0.3
        x[labels == 1, :, :6] += 0.7
        return x, labels

    (train, train_labels), (held, held_labels) = images(256), images(200)
    data = SimpleNamespace(train_set=train, train_labels=train_labels, val_set=held, val_labels=held_labels)
    data.eval_data = data  # images, not codes
    trainer = SimpleNamespace(datamodule=data, sanity_checking=False)

    def figures_for(source):
        logged = {}
        module = SimpleNamespace(device=torch.device("cpu"), prior=SimpleNamespace(sample=torch.arange),
                                 render=lambda z: source[z % len(source)], log_dict=lambda d, **_: logged.update(d))
        callback.on_validation_epoch_end(trainer, module)
        return logged

    callback = ClassifierFrechet(n_samples=200, steps=80)
    assert figures_for(held)["val/class_imbalance"] == 0.0
    predicted = callback.model(held).argmax(1)
    ones = held[predicted == 1]
    assert figures_for(ones)["val/class_imbalance"] == pytest.approx((predicted == 0).double().mean().item())
