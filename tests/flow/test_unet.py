"""network=flow_unet: a U-Net velocity for pixel-space flows on 28×28 and 32×32 images."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT
from ot_gen.errors import ConfigError
from ot_gen.evaluation.metrics import w2
from ot_gen.flow.unet import VelocityUNet
from ot_gen.run.build import build
from ot_gen.run.sample import load_module
from ot_gen.run.train import run

SMALL = ["mode=flow", "network=flow_unet", "network.channels=[8,16,16]", "network.steps=4", "prior.dim=784"]


@pytest.mark.parametrize("shape,channels", [((1, 28, 28), (8, 16, 16)), ((3, 32, 32), (8, 16, 16, 16))])
def test_the_unet_velocity_keeps_the_image_shape_starts_at_zero_and_reads_t(shape, channels):
    torch.manual_seed(0)
    v = VelocityUNet(shape, channels, time_dim=16)
    x = torch.randn(5, *shape)
    assert torch.equal(v(x, torch.tensor(0.3)), torch.zeros(5, *shape))  # the last convolution starts at zero
    torch.nn.init.normal_(v.out[-1].weight, std=0.1)
    out0, out1 = v(x, torch.tensor(0.0)), v(x, torch.full((5,), 1.0))
    assert out0.shape == (5, *shape) and not torch.allclose(out0, out1)  # the time is an input
    # a point's velocity depends on its own image only (group norm, no batch statistics)
    torch.testing.assert_close(v(x[:2], torch.tensor(0.5)), v(x, torch.tensor(0.5))[:2], atol=1e-5, rtol=1e-5)


def test_a_unet_flow_learns_images_and_its_checkpoint_samples(config):
    """Clock hands at 28×28: a few dozen rounds of exact pairs move noise toward the
    images (W2 to held-out images falls), and the checkpoint samples images through the
    ODE as every flow does."""
    cfg = config("data=clock", *SMALL, "data.n_train=256", "data.n_val=128", "val_samples=128", "mode.pool_size=64",
                 "mode.fit_batch_size=64", "trainer.max_steps=60", "mode.val_every_rounds=60", "eval.n_generated=0",
                 "callbacks=none", "optimizer.lr=3e-3", "ema=null")
    untrained, data, _, _ = build(cfg)
    data.setup("fit")
    run(cfg)
    out = ROOT / cfg.paths.output_dir
    assert json.loads((out / "metrics.json").read_text())["train/nfe"] == 8
    trained, _ = load_module(out / "checkpoints" / "last.ckpt")
    assert type(trained.generator).__name__ == "UNetFlowGenerator"
    scores = []
    for module in (untrained, trained):
        torch.manual_seed(1)
        images = module.sample(128)
        assert images.shape == (128, 1, 28, 28)
        scores.append(w2(images, data.val_set))
    assert scores[1] < 0.6 * scores[0], scores


@pytest.mark.parametrize("overrides,message", [
    (["mode=flow", "network=flow_unet", "prior.dim=2"],
     "network.out_shape=(2,) is not allowed: image data (C, H, W) for a U-Net velocity"),
    (["data=clock", *SMALL, "network.channels=[8,16,16,16]"],
     "network.channels=[8, 16, 16, 16] is not allowed: at most as many entries as 28×28 images halve evenly, plus one "
     "(28×28 halves 2 times: up to 3 entries)"),
    (["data=clock", *SMALL, "network.channels=[8,0]"], "network.channels=[8, 0] is not allowed: a list of positive"),
    (["data=clock", "network=flow_unet", "prior.dim=784"],
     "network='UNetFlowGenerator' is not allowed: a one-step generator under mode=minibatch"),
])
def test_bad_unet_configs_are_one_line_naming_the_key(config, overrides, message):
    with pytest.raises(ConfigError) as err:
        build(config(*overrides))
    assert message in str(err.value)
