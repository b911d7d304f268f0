"""Low-dimensional synthetic data sets, generated in-process from a seed.

Each sampler takes (n, rng, noise) and returns a float32 array (n, d); `noise` is the
std of Gaussian noise added to every coordinate (for the Gaussian clusters it is the
cluster std). The 1-D and disk sets are those of Varga's Earth-moving-net experiments.
"""

from __future__ import annotations

import numpy as np


def eight_gaussians(n, rng, noise):
    angles = rng.integers(0, 8, n) * (np.pi / 4)
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return centres + noise * rng.standard_normal((n, 2))


def moons(n, rng, noise):
    upper = rng.random(n) < 0.5
    t = np.pi * rng.random(n)
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x - 0.5, y - 0.25], 1)  # centred
    return pts + noise * rng.standard_normal((n, 2))


def swiss_roll(n, rng, noise):
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 7.0
    return pts + noise * rng.standard_normal((n, 2))


def checkerboard(n, rng, noise):
    """Uniform on the 8 black squares of a 4x4 board over [-2, 2]²."""
    x1 = 4.0 * rng.random(n) - 2.0
    x2 = rng.random(n) + rng.integers(0, 2, n) * 2.0 - 2.0
    x2 = x2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) + noise * rng.standard_normal((n, 2))


def circles(n, rng, noise):
    """Two concentric circles of radius 1 and 2, half the points on each."""
    radius = np.where(rng.random(n) < 0.5, 1.0, 2.0)
    t = 2 * np.pi * rng.random(n)
    pts = radius[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    return pts + noise * rng.standard_normal((n, 2))


def two_spirals(n, rng, noise):
    t = np.sqrt(rng.random(n)) * 3 * np.pi
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * np.stack([t * np.cos(t), t * np.sin(t)], 1) / (1.5 * np.pi)
    return pts + noise * rng.standard_normal((n, 2))


def uniform_1d(n, rng, noise):
    """Uniform on [-1, 1]."""
    return (2.0 * rng.random((n, 1)) - 1.0) + noise * rng.standard_normal((n, 1))


def triangle_1d(n, rng, noise):
    """Triangular density on [-1, 1], peak at 0 (sum of two uniforms on [-1/2, 1/2])."""
    pts = rng.random((n, 1)) + rng.random((n, 1)) - 1.0
    return pts + noise * rng.standard_normal((n, 1))


def disk_2d(n, rng, noise):
    """Uniform on the unit disk."""
    r = np.sqrt(rng.random(n))
    t = 2 * np.pi * rng.random(n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1) + noise * rng.standard_normal((n, 2))


def half_disk_2d(n, rng, noise):
    """Uniform on the upper half of the unit disk."""
    r = np.sqrt(rng.random(n))
    t = np.pi * rng.random(n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1) + noise * rng.standard_normal((n, 2))


SAMPLERS = {
    f.__name__: f
    for f in (
        eight_gaussians, moons, swiss_roll, checkerboard, circles, two_spirals,
        uniform_1d, triangle_1d, disk_2d, half_disk_2d,
    )
}


def sample(name: str, n: int, seed: int, stream: int, noise: float) -> np.ndarray:
    """`n` points of data set `name`; (seed, stream) pairs give independent samples."""
    rng = np.random.default_rng([seed, stream])
    return SAMPLERS[name](n, rng, noise).astype(np.float32)
