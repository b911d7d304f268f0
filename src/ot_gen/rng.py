"""Random streams: the run's global ones (saved in every checkpoint, so a resumed run
draws what the uninterrupted run would have drawn) and private ones for pictures and
evaluation figures (so turning those on or off never changes a run's results)."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


@contextmanager
def own_rng(device: torch.device, seed: int = 0):
    """Draw from a fixed stream of its own: the run's global RNG (latents, data order, the
    random matcher) is left exactly where it was, so turning pictures or evaluation
    figures on or off never changes a run's results, and every validation draws the same
    latents (pictures comparable across steps)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def global_state() -> dict[str, Any]:
    """torch's, numpy's and Python's global streams (and CUDA's when there is one), in a
    form `torch.load(weights_only=True)` (Lightning's resume) accepts."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": random.getstate(),
        **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
    }


def set_global_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# numpy's RNG state holds an ndarray, which `torch.load(weights_only=True)` refuses: keep it
# as a tensor and plain numbers.
def _numpy_state_to_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached
