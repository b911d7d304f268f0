"""The interface every matcher shares.

A matcher pairs m generated points x with n real points y. Two kinds exist:

- assignments (`bijective = True`: exact, hungarian, sinkhorn, random): each real receives
  exactly `each_real` distinct generated partners (m >= each_real * n). When
  m == each_real * n every generated point is used (the oversampled mode: each real gets
  k); when m > each_real * n the leftovers get no partner (the minibatch mode with
  ratio > 1: each real takes its best distinct generated point).
- maps (`bijective = False`: nearest, semidiscrete, critic): every generated point (or
  every real) picks a partner on its own; reals may go without partner or share one.
  `each_real` is then the intended share per real, not a constraint.

Subclasses implement `_pair` and may keep state (potentials, critic weights, warm-start
prices) as module buffers and parameters, which then travel in the checkpoint; per-real
state is keyed by the reals' training-set indices (`real_ids`). `__call__` checks the
inputs, times the solve and computes the diagnostics, so every matcher reports the same
figures.

What a run needs to know of a matcher, the matcher answers itself:
- `check_run(mode, distributed)`: whether it runs in that mode, and under DDP;
- constructor arguments named `data_shape` or `n_reals` are bound from the data by
  `train.build` (the shape of one point, the size of the training set);
- `bind(train_set)`: called once before training with the whole training set;
- `targets(y, ids, z)`: the reals it matches a round's generated points against (the
  round's reals, for `semidiscrete` the whole training set, for `flow_teacher` a flow's
  endpoints of the round's latents).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ot_gen.matching.costs import Cost
from ot_gen.errors import NonFiniteError, all_finite, check, check_positive_int

MODES = ("minibatch", "oversampled", "flow")


@dataclass
class Matching:
    """Index pairs (gen_idx[i], real_idx[i]) and the figures logged for every round."""

    gen_idx: torch.Tensor
    real_idx: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.gen_idx)


def identity_pairs(m: int, n: int, each_real: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairing that ignores the points: generated i goes to real i mod n.

    It is a feasible assignment of the same problem, so an optimal matcher's cost is
    never above its cost; logged next to the matched cost as the "unmatched" baseline.
    """
    gen = torch.arange(each_real * n, device=device)
    return gen, gen % n


class Matcher(nn.Module):
    """Turns two point clouds into index pairs plus diagnostics."""

    name = "matcher"
    bijective = True  # each real gets exactly `each_real` distinct partners
    modes = MODES  # the training modes this matcher makes sense in
    ddp_refusal: str | None = None  # why it cannot run under DDP, when it cannot

    @classmethod
    def check_run(cls, mode: str, distributed: bool) -> None:
        """A config error (key `matcher`) when this matcher cannot run in `mode`, or under
        DDP when `distributed`."""
        check(mode in cls.modes, "matcher", cls.name,
              f"a matcher for mode={mode}; {cls.name} runs in mode={' or mode='.join(cls.modes)}")
        check(not (distributed and cls.ddp_refusal), "matcher", cls.name,
              f"a matcher that runs under trainer=ddp ({cls.ddp_refusal})")

    def round_bytes(self, m: int, n: int, point_size: int) -> float:
        """What one solve of m generated points against n reals (of `point_size` numbers
        each) allocates: the float64 cost matrix, about twice over, unless a matcher says
        otherwise."""
        return 16.0 * m * n

    def bind(self, train_set: torch.Tensor) -> None:
        """Called once before training with the whole training set (on the CPU)."""

    def targets(self, y: torch.Tensor, ids: torch.Tensor | None, z: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The reals (and their training-set indices) that a round's generated points are
        matched against, given the round's reals `y` with indices `ids` and the latents
        `z` the generated points came from (a flow teacher's targets are its endpoints)."""
        return y, ids

    def forward(self, x: torch.Tensor, y: torch.Tensor, cost: Cost, each_real: int = 1,
                real_ids: torch.Tensor | None = None, diagnostics: bool = True) -> Matching:
        """Pairs of generated points `x` and reals `y` (with training-set indices
        `real_ids`, when known: per-real state such as warm-start prices is kept by them).
        `diagnostics=False` skips the figures that every matcher reports (matched and
        identity cost, partner counts): rounds whose figures are not logged."""
        m, n = len(x), len(y)
        check_positive_int("each_real", each_real)
        if x.shape[1:] != y.shape[1:]:
            raise ValueError(f"generated points have shape {tuple(x.shape[1:])}, reals {tuple(y.shape[1:])}")
        if m == 0 or n == 0:
            raise ValueError(f"matcher {self.name}: nothing to match ({m} generated points, {n} reals)")
        if self.bijective and m < each_real * n:
            raise ValueError(
                f"{m} generated points cannot give each of {n} reals {each_real} distinct partners"
            )
        for what, t in (("generated points", x), ("real points", y)):
            if not all_finite(t):
                raise NonFiniteError(f"matcher {self.name}: {what} contain NaN or Inf")
        with torch.no_grad():
            start = time.perf_counter()
            pairs = self._pair(x.detach(), y.detach(), cost, each_real, real_ids)
            gen_idx, real_idx, extra = self._split_stats(pairs)
            solve_s = time.perf_counter() - start
            stats = self._diagnostics(x, y, cost, each_real, gen_idx, real_idx) if diagnostics else {}
        stats.update(extra, solve_s=solve_s)
        return Matching(gen_idx, real_idx, stats)

    def _pair(self, x, y, cost: Cost, each_real: int, real_ids: torch.Tensor | None):
        """Return (gen_idx, real_idx) or (gen_idx, real_idx, extra_stats)."""
        raise NotImplementedError

    def cost_matrix(self, x: torch.Tensor, y: torch.Tensor, cost: Cost) -> torch.Tensor:
        """`cost.pairwise(x, y)`, checked finite: a cost can overflow on finite points."""
        C = cost.pairwise(x, y)
        if not all_finite(C):
            raise NonFiniteError(f"matcher {self.name}: the cost matrix contains NaN or Inf")
        return C

    @staticmethod
    def _split_stats(result):
        return result if len(result) == 3 else (*result, {})

    @staticmethod
    def _diagnostics(x, y, cost, each_real, gen_idx, real_idx) -> dict[str, float]:
        m, n = len(x), len(y)
        counts = torch.bincount(real_idx, minlength=n).float()
        gen_counts = torch.bincount(gen_idx, minlength=m)
        stats = {
            "matched_cost": cost.paired(x[gen_idx], y[real_idx]).mean().item(),
            "dropped": int((counts == 0).sum().item()),
            "partner_spread": counts.std(unbiased=False).item() if n > 1 else 0.0,
            "generated_used": int((gen_counts > 0).sum().item()) / m,
            "reals_sharing": int((gen_counts[gen_idx] > 1).sum().item()),
        }
        if m >= each_real * n:
            ident_gen, ident_real = identity_pairs(m, n, each_real, x.device)
            stats["identity_cost"] = cost.paired(x[ident_gen], y[ident_real]).mean().item()
        return stats

    def extra_repr(self) -> str:
        return self.name


# Figures of per-class solves that add up (the rest are averaged, weighted by pairs).
SUMMED = ("dropped", "reals_sharing", "solve_s")


def match_by_class(matcher: Matcher, x: torch.Tensor, y: torch.Tensor, cost: Cost, each_real: int,
                   real_ids: torch.Tensor | None, gen_labels: torch.Tensor, real_labels: torch.Tensor,
                   diagnostics: bool = True) -> Matching:
    """A class-conditional round: one solve of `matcher` per class, between the generated
    points and the reals of that class, so no pair crosses classes. Per-class problems are
    smaller than one whole problem with a prohibitive cross-class cost, and every matcher
    (and its per-real state, kept by `real_ids`) works unchanged. Reals of a class without
    generated points (label -1: an outlier) get no partner. The figures: counts and solve
    times summed over the classes, the rest averaged weighted by each class's pairs;
    `classes_solved` says how many solves the round made."""
    gen_parts, real_parts, weighted, summed, pairs = [], [], {}, {}, 0
    for c in torch.unique(real_labels).tolist():
        g = torch.nonzero(gen_labels == c).squeeze(1)
        r = torch.nonzero(real_labels == c).squeeze(1)
        if not len(g) or not len(r):
            continue
        part = matcher(x[g], y[r], cost, each_real, real_ids=None if real_ids is None else real_ids[r],
                       diagnostics=diagnostics)
        gen_parts.append(g[part.gen_idx])
        real_parts.append(r[part.real_idx])
        for key, value in part.stats.items():
            if key in SUMMED:
                summed[key] = summed.get(key, 0.0) + float(value)
            else:
                weighted[key] = weighted.get(key, 0.0) + float(value) * len(part)
        pairs += len(part)
    if not gen_parts:
        raise ValueError(f"matcher {matcher.name}: no class has both generated points and reals")
    stats = {k: v / max(pairs, 1) for k, v in weighted.items()}
    stats.update(summed, classes_solved=float(len(gen_parts)))
    return Matching(torch.cat(gen_parts), torch.cat(real_parts), stats)
