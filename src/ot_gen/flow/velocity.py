"""The flow's networks: a time-conditioned velocity field, and the generator that
integrates it from a prior point (t = 0) to a sample (t = 1).

`FlowGenerator` is what `network=flow_mlp` builds (an MLP velocity, for points and
codes); `ot_gen.flow.unet.UNetFlowGenerator` (`network=flow_unet`) the same with a U-Net
velocity for images. Called on latents either returns the ODE's endpoints, so everything
that draws samples from a generator (validation, pictures, metrics, the EMA, `python -m
ot_gen.sample`, the notebook) draws them from the flow unchanged; `mode=flow` trains its
`velocity`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torchdiffeq import odeint

from ot_gen.errors import check, check_choice, check_positive_int
from ot_gen.model.networks import ACTIVATIONS

# Velocity evaluations per step of the fixed-grid solvers (dopri5 adapts: counted).
SOLVERS = {"euler": 1, "midpoint": 2, "rk4": 4, "dopri5": None}


class TimeFeatures(nn.Module):
    """Sine and cosine of t at `dim // 2` frequencies from 1 to 1000 (geometric), so that
    t in [0, 1] is told apart at every scale; t a number or one per point."""

    def __init__(self, dim: int):
        super().__init__()
        check(isinstance(dim, int) and dim >= 2 and dim % 2 == 0, "time_dim", dim,
              "an even integer >= 2 (sine and cosine features of t)")
        self.register_buffer("freqs", torch.logspace(0, 3, dim // 2), persistent=False)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(len(x))
        angles = t[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class VelocityMLP(nn.Module):
    """v(x, t[, c]): the point (flattened) beside `time_dim` sinusoidal features of t (and,
    with `n_classes`, the one-hot class c), through `depth` hidden layers of `width` units,
    to a velocity of the point's shape."""

    def __init__(self, shape: Sequence[int], depth: int = 3, width: int = 256, activation: str = "relu",
                 time_dim: int = 32, n_classes: int = 0):
        super().__init__()
        check_positive_int("depth", depth, minimum=0)
        check_positive_int("width", width)
        check_choice("activation", activation, list(ACTIVATIONS))
        self.shape = tuple(int(s) for s in shape)
        size = math.prod(self.shape)
        self.time = TimeFeatures(time_dim)
        self.n_classes = n_classes
        layers: list[nn.Module] = []
        d = size + time_dim + n_classes
        for _ in range(depth):
            layers += [nn.Linear(d, width), ACTIVATIONS[activation]()]
            d = width
        layers.append(nn.Linear(d, size))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.cat([x.flatten(1), self.time(t, x), *([c] if self.n_classes else [])], dim=1)
        return self.net(h).view(len(x), *self.shape)


@torch.no_grad()
def straightness(velocity: nn.Module, x0: torch.Tensor, steps: int = 100) -> float:
    """How straight the paths of `velocity` are from the points `x0`: |x1 − x0|² over
    the path energy ∫|v|² dt, by `steps` Euler steps (1 for straight paths at constant
    speed; paths that bend or cross score less)."""
    x, energy = x0.clone(), torch.zeros(len(x0), dtype=x0.dtype, device=x0.device)
    for i in range(steps):
        v = velocity(x, torch.tensor(i / steps))
        energy += v.pow(2).flatten(1).sum(1) / steps
        x = x + v / steps
    return float((x - x0).pow(2).flatten(1).sum(1).mean() / energy.mean())


class ODEGenerator(nn.Module):
    """Samples by integrating dx/dt = v(x, t) (`velocity`, any module called as v(x, t))
    from a prior point at t = 0 to t = 1 with torchdiffeq: `solver` euler, midpoint or rk4
    over `steps` equal steps, or dopri5 (adaptive, to `rtol`/`atol`). The prior lives in
    the data's space: `in_dim` (the prior's dimension) must be the number of numbers of one
    data point, plus `n_classes` for a class-conditional flow, whose latents carry the
    one-hot class after the point (`conditional=true`): the class rides along unchanged,
    an input of the velocity at every step, v(x, t, c).

    `nfe` is the number of velocity evaluations a sample costs (a one-step generator's
    is 1): `steps` times the solver's evaluations per step, or for dopri5 what its last
    integration took (0 before the first).
    """

    is_flow = True  # what mode=flow asks of its network, and the one-step modes refuse

    def __init__(self, in_dim: int, out_shape: Sequence[int], velocity: nn.Module, solver: str = "midpoint",
                 steps: int = 20, rtol: float = 1e-5, atol: float = 1e-5, n_classes: int = 0):
        super().__init__()
        self.out_shape = tuple(int(s) for s in out_shape)
        self.size = math.prod(self.out_shape)
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.n_classes = check_positive_int("n_classes", n_classes, minimum=0)
        classes = f" and the class code's {n_classes}" if n_classes else ""
        check(in_dim == self.size + n_classes, "in_dim", in_dim,
              f"the data's dimension{classes}, {self.size + n_classes} (a flow starts from prior points in the data's "
              f"space: prior.dim={self.size})")
        self.integrate_with(solver, steps)
        check(rtol > 0 and atol > 0, "rtol", (rtol, atol), "tolerances > 0 (dopri5's rtol and atol)")
        self.rtol, self.atol = float(rtol), float(atol)
        self.velocity = velocity
        self._adaptive_nfe = 0

    def integrate_with(self, solver: str | None = None, steps: int | None = None) -> None:
        """Sample with another solver or number of steps than trained with (the velocity
        does not depend on them): `python -m ot_gen.sample solver=... steps=...`."""
        if solver is not None:
            self.solver = check_choice("solver", solver, list(SOLVERS))
        if steps is not None:
            self.steps = check_positive_int("steps", steps)

    @property
    def nfe(self) -> int:
        per_step = SOLVERS[self.solver]
        return self._adaptive_nfe if per_step is None else per_step * self.steps

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents as (starting points of the data's shape, one-hot classes or None)."""
        x0 = z[:, :self.size].reshape(len(z), *self.out_shape)
        return x0, (z[:, self.size:] if self.n_classes else None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x0, c = self.split(z)
        calls = 0

        def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            return self.velocity(x, t, c)

        t = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
        if self.solver == "dopri5":
            path = odeint(field, x0, t, method="dopri5", rtol=self.rtol, atol=self.atol)
        else:
            grid = torch.linspace(0.0, 1.0, self.steps + 1, dtype=x0.dtype, device=x0.device)
            path = odeint(field, x0, t, method=self.solver, options={"grid_constructor": lambda *_: grid})
        self._adaptive_nfe = calls
        return path[-1]


class FlowGenerator(ODEGenerator):
    """`network=flow_mlp`: an ODE generator whose velocity is a `VelocityMLP` (`depth`
    layers of `width`, `time_dim` time features): for points and codes."""

    def __init__(self, in_dim: int, out_shape: Sequence[int], depth: int = 3, width: int = 256,
                 activation: str = "relu", time_dim: int = 32, solver: str = "midpoint", steps: int = 20,
                 rtol: float = 1e-5, atol: float = 1e-5, n_classes: int = 0):
        super().__init__(in_dim, out_shape, VelocityMLP(out_shape, depth, width, activation, time_dim, n_classes),
                         solver, steps, rtol, atol, n_classes)
