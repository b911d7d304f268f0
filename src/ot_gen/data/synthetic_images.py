"""Synthetic image families generated in-process (the Earth-moving-net seed's test sets).

Each family is a low-dimensional manifold of images: its true parameters are listed in
`PARAMETERS`, which makes them the best test of whether a generator finds the "right"
parametrization. Images are float32 in [0, 1], shape (n, 1, size, size).
"""

from __future__ import annotations

import numpy as np
import torch


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], shape (size, size) each (x to the right, y up)."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, -c)
    return x, y


def clock(n, size, rng):
    """A filled triangle "clock hand" from the centre, at a random angle and intensity."""
    x, y = _grid(size)
    theta = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    intensity = rng.uniform(0.3, 1.0, n)[:, None, None]
    length, half_width = 0.85, 0.18
    # Hand frame: u along the hand, v across it. Inside: 0 <= u <= L, |v| <= w (1 - u / L).
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    inside = (u >= 0) & (u <= length) & (np.abs(v) <= half_width * (1 - u / length))
    return intensity * inside


def wave(n, size, rng):
    """A plane wave 0.5 + 0.5 cos(f (x cos a + y sin a) + phase), random direction and phase."""
    x, y = _grid(size)
    angle = rng.uniform(0, np.pi, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    return 0.5 + 0.5 * np.cos(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) + phase)


def sine(n, size, rng):
    """The graph of y = A sin(pi x + phase) drawn as a soft line, random amplitude and phase."""
    x, y = _grid(size)
    amplitude = rng.uniform(0.2, 0.8, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    curve = amplitude * np.sin(np.pi * x + phase)
    return np.exp(-(((y - curve) / 0.08) ** 2))


def plane(n, size, rng):
    """A clipped random linear gradient clip(a + b x + c y, 0, 1)."""
    x, y = _grid(size)
    a = rng.uniform(0.2, 0.8, n)[:, None, None]
    b, c = (rng.normal(0, 0.6, n)[:, None, None] for _ in range(2))
    return np.clip(a + b * x + c * y, 0, 1)


FAMILIES = {f.__name__: f for f in (clock, wave, sine, plane)}
PARAMETERS = {"clock": 2, "wave": 2, "sine": 2, "plane": 3}


def sample(name: str, n: int, size: int, seed: int, stream: int) -> torch.Tensor:
    rng = np.random.default_rng([seed, stream])
    images = FAMILIES[name](n, size, rng).astype(np.float32)
    return torch.from_numpy(images).unsqueeze(1)
