"""Generator architectures. A generator maps (n, in_dim) latents to (n, *out_shape)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ot_gen.errors import check_choice, check_positive_int

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
