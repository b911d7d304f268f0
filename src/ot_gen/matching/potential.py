"""Matchers driven by a dual potential ψ over the reals: each generated point x goes to
argmin_j c(x, y_j) − ψ_j, and ψ is raised on reals that receive too few points and
lowered on those that receive too many (stochastic ascent on the semi-dual of OT), so
that every real receives its share.

- `semidiscrete` (Chen et al., ICML 2019, explicit Wasserstein minimisation): ψ is a
  vector over the WHOLE training set, kept across rounds (a module parameter, so it is
  in the checkpoint with its Adam state). This is how the oversampled mode scales to a full 60,000-image data set:
  no assignment over the set is ever solved, only argmins.
- `critic` (the OT-GAN paper): ψ_θ(y) is a small network over the round's pool of reals
  (the whole training set when `mode.pool_size` is its size, as in the paper's code),
  kept across rounds and trained for `critic_steps` Adam steps per round.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ot_gen.errors import check, check_choice, check_positive, check_positive_int
from ot_gen.matching.base import Matcher


def balance_excess(counts: torch.Tensor, m: int) -> float:
    """How unevenly m points fall on the reals, above the best any m points can do: the
    total-variation distance between the assignment histogram and uniform, minus that of
    the most even histogram of m points (0 when m is a multiple of the number of reals)."""
    n = len(counts)
    best = torch.full((n,), m // n, dtype=torch.float64)
    best[: m % n] += 1
    tv = 0.5 * (counts.double().cpu() / m - 1 / n).abs().sum()
    floor = 0.5 * (best / m - 1 / n).abs().sum()
    return float(tv - floor)


class _OwnOptimizer(Matcher):
    """A matcher that learns its potential with its own Adam; the Adam state goes into the
    checkpoint next to the potential, so a resumed run continues the same ascent."""

    optimizer: torch.optim.Optimizer

    def get_extra_state(self):
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class SemiDiscreteMatcher(_OwnOptimizer):
    """ψ over all `n_reals` training points. Each round (in training mode only) takes Adam
    ascent steps on the semi-dual over the round's generated points, until the assignment
    is balanced (`balance_excess` <= `tol`) or `max_iters` steps are done, then assigns
    every generated point by the argmin rule. ψ and Adam's moments carry over to the next
    round (the generator moves little), so the ascent is stochastic over rounds: each
    round's points are a fresh sample of the generator.

    The semi-dual's gradient in ψ_j is 1/N − count_j/m. Adam's step size is `lr` times
    the mean nearest-real cost of the first round's points, so `lr` has no unit. The cost
    matrix is kept when it has at most `cache_entries` entries, otherwise recomputed
    `chunk` rows at a time per step.
    """

    name = "semidiscrete"
    bijective = False
    modes = ("oversampled",)

    def __init__(self, n_reals: int, lr: float = 0.01, max_iters: int = 20, tol: float = 0.05,
                 chunk: int = 4096, cache_entries: int = 100_000_000):
        super().__init__()
        self.lr = check_positive("lr", lr)
        self.max_iters = check_positive_int("max_iters", max_iters, minimum=0)
        self.tol = check_positive("tol", tol)
        self.chunk = check_positive_int("chunk", chunk)
        self.cache_entries = check_positive_int("cache_entries", cache_entries, minimum=0)
        # A parameter (moved in place with the module, so Adam keeps it) that autograd never
        # touches: its gradient is the semi-dual's, set by hand.
        self.psi = nn.Parameter(torch.zeros(check_positive_int("n_reals", n_reals)), requires_grad=False)
        self.register_buffer("scale", torch.zeros(()))  # Adam's step unit, fixed in round one
        self.register_buffer("reals", None, persistent=False)
        self.optimizer = torch.optim.Adam([self.psi], lr=self.lr)

    def bind(self, train_set: torch.Tensor) -> None:
        if len(train_set) != len(self.psi):
            raise ValueError(f"matcher semidiscrete: built for {len(self.psi)} reals, given {len(train_set)}")
        self.reals = train_set.to(self.psi.device)

    def targets(self, y, ids, z=None):
        """The whole training set, whatever the round's pool: ψ lives over all of it."""
        if self.reals is None:
            raise RuntimeError("matcher semidiscrete: bind(train_set) must come before matching")
        return self.reals, None

    def _pair(self, x, y, cost, each_real, real_ids):
        m, n = len(x), len(y)
        if n != len(self.psi):
            raise ValueError(f"matcher semidiscrete: holds a potential for {len(self.psi)} reals, given {n}")
        cached = self.cost_matrix(x, y, cost) if m * n <= self.cache_entries else None
        iters = 0
        while True:
            idx = self._assign(x, y, self.psi.to(x.dtype), cost, cached)
            counts = torch.bincount(idx, minlength=n)
            excess = balance_excess(counts, m)
            if excess <= self.tol or iters >= self.max_iters or not self.training:
                break
            if self.scale == 0:
                nearest = self._assign(x, y, torch.zeros_like(self.psi, dtype=x.dtype), cost, cached)
                self.scale.fill_(cost.paired(x, y[nearest]).mean().clamp_min(1e-12).item())
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr * float(self.scale)
            self.psi.grad = counts.to(self.psi.dtype) * n / m - 1  # minus the semi-dual's gradient, times N
            self.optimizer.step()
            iters += 1
        return torch.arange(m, device=x.device), idx, {"balance": excess, "potential_iters": float(iters)}

    def _assign(self, x, y, psi, cost, cached: torch.Tensor | None):
        """argmin_j c(x_i, y_j) − ψ_j for every row i, on the kept matrix or `chunk` rows at a time."""
        if cached is not None:
            return (cached - psi).argmin(1)
        return torch.cat([(self.cost_matrix(rows, y, cost) - psi).argmin(1) for rows in x.split(self.chunk)])


class CriticMatcher(_OwnOptimizer):
    """ψ_θ(y), a dense (`mlp`) or convolutional (`conv`, images) network over the reals of
    the round. Each round: `critic_steps` Adam steps maximising the semi-dual
    mean_j ψ_θ(y_j) − mean_i ψ_θ(y_{a(i)}) (a(i) the argmin rule), then the argmin rule
    assigns. Logged as in the paper's code: reals with no partner (`dropped`), the
    variance of partners per real (`assignment_var`) and `balance`.
    The critic's Adam state goes into the checkpoint with its weights.
    """

    name = "critic"
    bijective = False
    ddp_refusal = "the critic trains its own network outside DDP's forward"

    def __init__(self, data_shape: tuple[int, ...], network: str = "mlp", hidden: int = 256,
                 critic_steps: int = 20, lr: float = 1e-3, depth: int = 2):
        super().__init__()
        check_choice("network", network, ["mlp", "conv"])
        check(network == "mlp" or len(data_shape) == 3, "network", network, "mlp (conv needs image data)")
        hidden = check_positive_int("hidden", hidden)
        self.critic_steps = check_positive_int("critic_steps", critic_steps, minimum=0)
        depth = check_positive_int("depth", depth)
        self.net = _dense(data_shape, hidden, depth) if network == "mlp" else _conv(data_shape, hidden)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=check_positive("lr", lr))

    def _pair(self, x, y, cost, each_real, real_ids):
        m, n = len(x), len(y)
        C = self.cost_matrix(x, y, cost)
        with torch.enable_grad():
            for _ in range(self.critic_steps if self.training else 0):
                psi = self.net(y).squeeze(1)
                idx = (C - psi.detach()).argmin(1)
                loss = psi[idx].mean() - psi.mean()  # minus the semi-dual, up to a constant
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        idx = (C - self.net(y).squeeze(1)).argmin(1)
        counts = torch.bincount(idx, minlength=n).double()
        stats = {"balance": balance_excess(counts, m), "assignment_var": counts.var(unbiased=False).item()}
        return torch.arange(m, device=x.device), idx, stats

def _dense(data_shape, hidden, depth) -> nn.Module:
    """`depth` hidden layers of `hidden` units with leaky ReLUs (the OT-GAN code's DenseCritic)."""
    widths = [math.prod(data_shape)] + [hidden] * depth
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 1))


def _conv(data_shape, hidden) -> nn.Module:
    c, h, w = data_shape
    check(h >= 8 and w >= 8, "network", "conv", "mlp for images smaller than 8×8")
    return nn.Sequential(
        nn.Conv2d(c, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1),
    )
