"""SSIM, PSNR and Laplacian-pyramid costs against independent formulas, and their config rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ot_gen.matching.costs import PSNR, SSIM, LaplacianL1
from ot_gen.errors import ConfigError
from ot_gen.run.build import build


def images(n, seed, shape=(1, 16, 16)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def ssim_by_convolution(x, y, data_range):
    """SSIM computed the textbook way: Gaussian-filtered moments by conv2d per channel."""
    r = torch.arange(11, dtype=x.dtype) - 5
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    w = torch.outer(g, g) / g.sum() ** 2
    c = x.shape[1]
    w = w.expand(c, 1, 11, 11)
    blur = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 12, 14)])
def test_ssim_cost_matches_the_textbook_formula_pairwise_and_paired(shape):
    x, y = images(5, 0, shape), images(4, 1, shape)
    cost = SSIM((-1.0, 1.0))
    pairwise = cost.pairwise(x, y)
    expected = torch.stack([1 - ssim_by_convolution(x[i : i + 1].expand_as(y), y, 2.0) for i in range(5)])
    torch.testing.assert_close(pairwise, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cost.paired(x[:4], y), expected.diagonal(), atol=1e-5, rtol=1e-5)
    assert cost.paired(x, x).abs().max() < 1e-6, "identical images cost nothing"


def test_psnr_cost_is_minus_psnr_in_db():
    x, y = images(3, 2), images(2, 3)
    cost = PSNR((0.0, 1.0))
    mse = ((x[:, None] - y[None]) ** 2).flatten(2).mean(2)
    torch.testing.assert_close(cost.pairwise(x, y), 10 * torch.log10(mse), atol=1e-4, rtol=1e-5)
    shifted = cost.paired(x, x + 0.1)
    torch.testing.assert_close(shifted, torch.full((3,), 10 * math.log10(0.01)), atol=1e-4, rtol=1e-5)


def laplacian_by_hand(x, y, levels):
    """Σ_j 4^j ‖L_j x − L_j y‖₁, the pyramid built image by image with explicit 2×2 means."""
    def pyramid(img):
        bands, g = [], img
        for _ in range(levels - 1):
            c, h, w = g.shape
            coarse = g.reshape(c, h // 2, 2, w // 2, 2).mean((2, 4))
            bands.append(g - coarse.repeat_interleave(2, 1).repeat_interleave(2, 2))
            g = coarse
        return bands + [g]
    return sum(4**j * (a - b).abs().sum() for j, (a, b) in enumerate(zip(pyramid(x), pyramid(y))))


@pytest.mark.parametrize("levels", [1, 3])
def test_laplacian_cost_is_the_weighted_l1_of_pyramid_bands(levels):
    x, y = images(4, 4, (2, 8, 8)), images(3, 5, (2, 8, 8))
    cost = LaplacianL1((-1.0, 1.0), levels=levels)
    expected = torch.tensor([[float(laplacian_by_hand(a, b, levels)) for b in y] for a in x])
    torch.testing.assert_close(cost.pairwise(x, y), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(cost.paired(x[:3], y), expected.diagonal(), atol=1e-4, rtol=1e-5)
    assert cost.paired(x, x).abs().max() == 0
    if levels == 1:  # one band: the image itself, plain L1
        torch.testing.assert_close(cost.pairwise(x, y), torch.cdist(x.flatten(1), y.flatten(1), p=1.0))


def test_laplacian_cost_refuses_images_its_bands_do_not_halve(config):
    cfg = config("data=clock", "data.image_size=28", "cost=laplacian", "cost.levels=4", "data.n_train=300",
                 "val_samples=50", "network.width=16")
    with pytest.raises(ConfigError, match=r"cost.levels=4.*28×28.*divisible by 8"):
        build(cfg)


def test_image_costs_refuse_non_images():
    with pytest.raises(ValueError, match="needs images"):
        SSIM((-1.0, 1.0)).pairwise(torch.zeros(3, 2), torch.zeros(3, 2))


def test_ssim_on_2d_data_is_a_config_error_naming_the_key(config):
    with pytest.raises(ConfigError, match=r"cost\.data_range=None .*works on image data only"):
        build(config("cost=ssim"))


def test_psnr_as_regression_cost_is_refused_with_the_way_out(config):
    with pytest.raises(ConfigError, match=r"cost='psnr' .*cost@match_cost=psnr"):
        build(config("data=clock", "network=conv28", "cost=psnr", "data.n_train=64", "mode.batch_size=16"))


def test_ssim_loss_with_psnr_matching_trains_on_images(config):
    from ot_gen.run.train import run

    cfg = config("data=clock", "network=conv28", "cost=ssim", "cost@match_cost=psnr", "data.n_train=256",
                 "data.n_val=64", "val_samples=64", "mode.batch_size=32", "trainer.max_steps=4",
                 "mode.val_every_rounds=2", "eval.n_generated=256", "eval.n_heldout=32", "callbacks=none")
    module, _, _, _ = build(cfg)
    assert module.cost.name == "ssim" and module.match_cost.name == "psnr"
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0 <= metrics["train/loss"] <= 2  # 1 - SSIM of the matched pairs
    assert metrics["train/matched_cost"] <= metrics["train/identity_cost"]  # PSNR matching beats identity pairs


def test_ssim_on_images_smaller_than_its_window_is_refused_before_training(config):
    with pytest.raises(ConfigError, match=r"cost='ssim' .*at least 11×11 pixels .*data=clock gives 8×8"):
        build(config("data=clock", "data.image_size=8", "cost=ssim", "data.n_train=64", "mode.batch_size=16"))
    with pytest.raises(ConfigError, match=r"match_cost='ssim' .*at least 11×11"):
        build(config("data=clock", "data.image_size=8", "cost@match_cost=ssim", "data.n_train=64",
                     "mode.batch_size=16"))


def test_matching_a_whole_set_by_ssim_says_up_front_what_it_costs_and_the_way_out(config, caplog):
    whole_set = ("data=clock", "mode=oversampled", "mode.pool_size=1200", "mode.k=2", "data.n_train=1200",
                 "mode.fit_batch_size=100")
    with caplog.at_level("WARNING", logger="ot_gen.run.build"):
        build(config(*whole_set, "cost=ssim"))
    slow = [r.getMessage() for r in caplog.records if "multiply-adds" in r.getMessage()]
    assert len(slow) == 1 and "cost=ssim matches 2,400 × 1,200" in slow[0], slow
    assert "cost@match_cost=sqeuclidean" in slow[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ot_gen.run.build"):
        build(config(*whole_set, "cost=ssim", "cost@match_cost=sqeuclidean"))
        build(config("data=clock", "cost=ssim", "data.n_train=64", "mode.batch_size=16"))  # a minibatch: fine
    assert not [r for r in caplog.records if "multiply-adds" in r.getMessage()]
