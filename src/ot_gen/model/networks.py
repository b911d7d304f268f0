"""Generator architectures. A generator maps (n, in_dim) latents to (n, *out_shape)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ot_gen.errors import check, check_choice, check_positive_int

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
}
OUTPUT_ACTIVATIONS = [None, *ACTIVATIONS]


class MLP(nn.Module):
    """`depth` hidden layers of `width` units, then a linear map to the data shape.

    `out_shape` comes from the data module (never typed in a config); `in_dim` from the
    prior. `output_activation` (None, tanh, sigmoid, ...) bounds the output range.
    """

    def __init__(
        self,
        in_dim: int,
        out_shape: Sequence[int],
        depth: int = 3,
        width: int = 256,
        activation: str = "relu",
        output_activation: str | None = None,
    ):
        super().__init__()
        self.in_dim = check_positive_int("in_dim", in_dim)
        check_positive_int("depth", depth, minimum=0)
        check_positive_int("width", width)
        check_choice("activation", activation, list(ACTIVATIONS))
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        self.out_shape = tuple(int(s) for s in out_shape)
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), ACTIVATIONS[activation]()]
            d = width
        layers.append(nn.Linear(d, math.prod(self.out_shape)))
        if output_activation is not None:
            layers.append(ACTIVATIONS[output_activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(len(z), *self.out_shape)


NORMS = {"batch": nn.BatchNorm2d, "none": None}
UPSAMPLES = ["transposed", "nearest", "bilinear"]


class DeconvGenerator(nn.Module):
    """DCGAN-style generator: a dense layer to `widths[0]` maps of side S, then one
    stride-2 transposed convolution per entry of `widths` (each doubling the side), the
    last one to the image's channels: S = image side / 2^len(widths).

    `widths=[256, 128, 64]` on 32×32 is the OT-GAN paper's generator (dense to 4×4×256,
    then 128, 64, channels); `[128, 64]` on 28×28 starts from 7×7.

    `upsample`: `transposed` (the papers': 4×4 transposed convolutions of stride 2, whose
    overlapping kernels print a regular checkerboard of dots into the images), or
    `nearest` / `bilinear` (resize ×2, then a 3×3 convolution: every output pixel sees the
    same number of kernel taps, so no checkerboard; Odena et al. 2016).
    """

    def __init__(
        self,
        in_dim: int,
        out_shape: Sequence[int],
        widths: Sequence[int] = (256, 128, 64),
        norm: str = "batch",
        activation: str = "relu",
        output_activation: str | None = "tanh",
        upsample: str = "transposed",
    ):
        super().__init__()
        self.in_dim = check_positive_int("in_dim", in_dim)
        check_choice("upsample", upsample, UPSAMPLES)
        widths = [check_positive_int("widths", int(w)) for w in widths]
        check(len(widths) >= 1, "widths", widths, "a list of at least one channel count")
        check_choice("norm", norm, list(NORMS))
        check_choice("activation", activation, list(ACTIVATIONS))
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        check(len(out_shape) == 3, "out_shape", tuple(out_shape), "an image shape (C, H, W): use network=mlp for points")
        channels, height, width = (int(s) for s in out_shape)
        factor = 2 ** len(widths)
        check(
            height == width and height % factor == 0, "widths", widths,
            f"a depth that divides the {height}×{width} images: side / 2^len(widths) must be a whole "
            f"number (e.g. 3 widths for 32×32, 2 for 28×28; or set data.image_size)",
        )
        self.out_shape = (channels, height, width)
        self.start = height // factor
        act = ACTIVATIONS[activation]
        Norm = NORMS[norm]

        def double(c_in: int, c_out: int, bias: bool) -> list[nn.Module]:
            if upsample == "transposed":
                return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias)]
            return [nn.Upsample(scale_factor=2, mode=upsample), nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)]

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return double(c_in, c_out, bias=Norm is None) + ([Norm(c_out)] if Norm else []) + [act()]

        self.dense = nn.Sequential(nn.Linear(in_dim, widths[0] * self.start**2), act())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += block(c_in, c_out)
        layers += double(widths[-1], channels, bias=True)
        if output_activation is not None:
            layers.append(ACTIVATIONS[output_activation]())
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(len(z), -1, self.start, self.start)
        return self.convs(h)
