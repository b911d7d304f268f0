"""A small U-Net velocity for images (`network=flow_unet`): v(x, t) for 28×28 and 32×32
images, the architecture of the image flows of torchcfm's and the diffusion papers'
examples (DDPM's U-Net, Ho et al. 2020), cut to CPU size: residual blocks with group norm
and SiLU, the time's sinusoidal features added per channel in every block, one
resolution per entry of `channels` (stride-2 convolutions down, nearest upsampling and a
convolution up, skips concatenated). No attention: at 7×7 or 8×8 a 3×3 convolution
already sees most of the image.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ot_gen.errors import check, check_positive_int
from ot_gen.flow.velocity import ODEGenerator, TimeFeatures


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class _ResBlock(nn.Module):
    """norm, SiLU, 3×3 conv; plus the time embedding per channel; norm, SiLU, 3×3 conv;
    plus the input (through a 1×1 conv where the channels change)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.skip(x)


class VelocityUNet(nn.Module):
    """v(x, t) of images `shape` = (C, H, W): a stem convolution to `channels[0]`, then per
    resolution i a residual block to `channels[i]` (and a stride-2 convolution down, but
    after the last), a middle block, and back up through a block per resolution on the
    concatenated skip. H and W must halve `len(channels) - 1` times evenly (28×28: 3 levels,
    28, 14, 7; 32×32: up to 4). With `n_classes`, the one-hot class c joins the time's
    features in the embedding every block adds. The last convolution starts at zero: the
    untrained field is v = 0."""

    def __init__(self, shape: Sequence[int], channels: Sequence[int] = (32, 64, 64), time_dim: int = 64,
                 groups: int = 8, n_classes: int = 0):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        check(len(self.shape) == 3, "out_shape", self.shape,
              "image data (C, H, W) for a U-Net velocity (network=flow_mlp for points and codes)")
        channels = list(channels) if isinstance(channels, Sequence) and not isinstance(channels, str) else channels
        check(isinstance(channels, list) and len(channels) >= 1
              and all(isinstance(c, int) and c >= 1 for c in channels), "channels", channels,
              "a list of positive integers, one per resolution, e.g. [32, 64, 64]")
        check_positive_int("groups", groups)
        c, h, w = self.shape
        halvings, possible = len(channels) - 1, _halvings(h, w)
        check(halvings <= possible, "channels", channels,
              f"at most as many entries as {h}×{w} images halve evenly, plus one "
              f"({h}×{w} halves {possible} times: up to {possible + 1} entries)")
        emb_dim = 4 * channels[0]
        self.time = TimeFeatures(time_dim)
        self.embed = nn.Sequential(nn.Linear(time_dim + n_classes, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.n_classes = n_classes
        self.stem = nn.Conv2d(c, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = channels[0]
        for i, width in enumerate(channels):
            self.down.append(_ResBlock(previous, width, emb_dim, groups))
            if i < halvings:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            previous = width
        self.middle = _ResBlock(previous, previous, emb_dim, groups)
        self.up = nn.ModuleList(_ResBlock(2 * width, width, emb_dim, groups) for width in channels)
        self.upsample = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels[i], channels[i - 1], 3, padding=1))
            for i in range(1, len(channels)))
        self.out = nn.Sequential(_norm(channels[0], groups), nn.SiLU(), nn.Conv2d(channels[0], c, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = x.view(len(x), *self.shape)
        emb = self.embed(torch.cat([self.time(t, x), *([c] if self.n_classes else [])], dim=1))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.middle(h, emb)
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([h, skips[i]], dim=1), emb)
            if i > 0:
                h = self.upsample[i - 1](h)
        return self.out(h)


def _halvings(h: int, w: int) -> int:
    n = 0
    while h % 2 == 0 and w % 2 == 0:
        h, w, n = h // 2, w // 2, n + 1
    return n


class UNetFlowGenerator(ODEGenerator):
    """`network=flow_unet`: an ODE generator whose velocity is a `VelocityUNet`, for
    images; sampled as every flow is (`solver`, `steps`)."""

    def __init__(self, in_dim: int, out_shape: Sequence[int], channels: Sequence[int] = (32, 64, 64),
                 time_dim: int = 64, groups: int = 8, solver: str = "midpoint", steps: int = 20,
                 rtol: float = 1e-5, atol: float = 1e-5, n_classes: int = 0):
        super().__init__(in_dim, out_shape, VelocityUNet(out_shape, channels, time_dim, groups, n_classes),
                         solver, steps, rtol, atol, n_classes)
