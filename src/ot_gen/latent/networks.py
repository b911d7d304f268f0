"""The autoencoder's networks: a small convolutional encoder (image -> code) and its
mirror decoder (code -> image), for square images whose side is a multiple of 4
(MNIST's 28×28, CIFAR's 32×32, a 64×64 folder)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ot_gen.errors import check, check_positive_int

# The decoder's last activation, by the images' value range: outputs always in range.
_OUTPUT = {(0.0, 1.0): nn.Sigmoid, (-1.0, 1.0): nn.Tanh}


class ConvAutoencoder(nn.Module):
    """Encoder: two stride-2 4×4 convolutions (`width`, 2·`width` channels, ReLU), a
    linear map to `code_dim` numbers. Decoder: the mirror (a linear map, two stride-2
    transposed convolutions), ending in the activation that keeps pixels in `value_range`
    (sigmoid for [0, 1], tanh for [-1, 1]). `image_shape` and `value_range` come from the
    data (never typed in a config)."""

    def __init__(self, image_shape: Sequence[int], value_range: Sequence[float], code_dim: int = 16,
                 width: int = 32):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        check(len(self.image_shape) == 3, "autoencoder.network", "ConvAutoencoder",
              f"an autoencoder of images (C, H, W); the data's points have shape {self.image_shape}")
        c, h, w = self.image_shape
        check(h == w and h % 4 == 0 and h >= 8, "data.image_size", h,
              f"square images whose side is a multiple of 4 (8, 28, 32, 64, ...); these are {h}×{w}")
        self.code_dim = check_positive_int("code_dim", code_dim)
        self.width = check_positive_int("width", width)
        value_range = tuple(float(v) for v in value_range)
        check(value_range in _OUTPUT, "data.value_range", list(value_range), "[0, 1] or [-1, 1]")
        self.value_range = value_range
        s, k = h // 4, 2 * width
        self.encoder = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, k, 4, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(k * s * s, code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, k * s * s), nn.ReLU(), nn.Unflatten(1, (k, s, s)),
            nn.ConvTranspose2d(k, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, 2, 1), _OUTPUT[value_range](),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
