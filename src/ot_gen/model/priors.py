"""Latent priors: the simple distributions a generator maps to data.

Each prior is an `nn.Module` so its state (the mixture's centres, an adaptive mixture's
weights and spreads) lives in the checkpoint; `sample(n)` draws from torch's global RNG,
which `seed` fixes for a run. Every prior is a mixture of isotropic Gaussians (one
component for `gaussian`) and says so: `centres` (components, dim) and `noise_std`. The
latent pictures need nothing else.

A prior that `adaptive` says it is re-estimates itself between rounds from what the
round's matching did with its points (`round_statistics`, summed over the ranks, then
`adapt`): see `GaussianMixturePrior`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ot_gen.errors import check, check_positive, check_positive_int
from ot_gen.memory import check_fits

log = logging.getLogger(__name__)


class Prior(nn.Module):
    """A distribution over R^dim with `sample(n) -> (n, dim)`: a uniform mixture of
    Gaussians N(c, noise_std² I) over the rows c of the tensor `centres`."""

    centres: torch.Tensor
    noise_std: float

    def __init__(self, dim: int):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        check_fits("dim", dim, 8.0 * dim, f"a latent of {dim:,} numbers", "use fewer dimensions")
        # A buffer only to know the device: priors follow the module they live in.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    adaptive = False  # re-estimated between rounds (`round_statistics`, `adapt`)

    def sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def round_statistics(self, z: torch.Tensor, drawn: slice, paired: torch.Tensor, x: torch.Tensor,
                         y: torch.Tensor) -> dict[str, torch.Tensor]:
        """An adaptive prior's sums over one round on this rank: of the round's latents `z`,
        those this rank drew (`z[drawn]`) and its pairs (latents `z[paired]`, their
        generated points `x` and partners `y`, one row per pair). Sums, so that the ranks'
        statistics add up (the module all-reduces them)."""
        raise NotImplementedError(f"{type(self).__name__} does not adapt")

    def adapt(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """Re-estimate from one round's (all ranks') statistics; returns figures to log."""
        raise NotImplementedError(f"{type(self).__name__} does not adapt")


class GaussianPrior(Prior):
    """N(0, std² I) in `dim` dimensions."""

    def __init__(self, dim: int, std: float = 1.0):
        super().__init__(dim)
        self.std = self.noise_std = check_positive("std", std)
        self.register_buffer("centres", torch.zeros(1, dim), persistent=False)

    def sample(self, n: int) -> torch.Tensor:
        return self.std * torch.randn(n, self.dim, device=self._anchor.device)


class GaussianMixturePrior(Prior):
    """Mixture of `n_components` Gaussians N(c_i, sigma_i² I), uniform with one sigma
    unless it adapts.

    The centres c_i ~ N(0, I) are drawn once from `seed` and kept as a buffer, so they are
    saved with the checkpoint and a resumed or reloaded run samples the same mixture.

    Adaptive (any of the options below; buffers `weights`, `sigmas`, `respawned`, in the
    checkpoint, so a resume goes on bit for bit). After every round, from the round's
    pairs, each latent counted in the component that most probably drew it, and with
    `adapt_rate` as the step (an exponential moving average):

    - `adapt_weights`: a component's weight moves towards its share of the matched points,
      weights · match rate, normalised (match rate: the round's partners of the
      component's points per point drawn). A component whose points the matching leaves
      out (minibatch mode with `ratio` > 1, `matcher=nearest`/`partial`/`unbalanced`)
      loses weight; one whose points are taken many times gains. A round that matches
      every drawn point exactly once (the oversampled mode with a balanced matcher)
      carries no such signal: the weights stay, and the run warns once.
    - `adapt_sigma`: a component's sigma moves towards the one at which its generated
      points spread as widely as their partners do: sigma · sqrt(partner spread /
      generated spread) (exact for a locally linear generator), for components with at
      least two pairs, kept within `sigma_bounds` times the configured `sigma`. The
      generator can rescale itself as sigma moves, so the rule may push sigma to a bound
      (measured in the README: it does in the minibatch mode; with one component per
      image it widens the islands and ends the copying).
    - `respawn_below` (needs `adapt_weights`): a component whose weight falls below
      `respawn_below / n_components` is moved next to the heaviest component (its centre
      plus that component's sigma times a normal draw from the prior's own generator,
      seeded by `seed` and the number respawned so far) and takes half its weight: the
      mixture's centres follow the data's demand, and no component is left dead.
    """

    def __init__(self, dim: int, n_components: int, sigma: float, seed: int = 0, adapt_weights: bool = False,
                 adapt_sigma: bool = False, respawn_below: float = 0.0, adapt_rate: float = 0.1,
                 sigma_bounds: tuple[float, float] = (0.1, 10.0)):
        super().__init__(dim)
        self.n_components = check_positive_int("n_components", n_components)
        self.sigma = self.noise_std = check_positive("sigma", sigma)
        # centres (float32); an adaptive mixture's weights (float64) and sigmas, and the
        # per-component terms of `components_of` (its chunks of distances: at most 64 MiB)
        adaptive = adapt_weights is True or adapt_sigma is True
        tables = n_components * (4.0 * dim + (24 if adaptive else 0)) + (2**26 if adaptive else 0)
        check_fits("n_components", n_components, tables, f"a mixture of {n_components:,} components in {dim} "
                   "dimensions", "use fewer components")
        self.seed = int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.register_buffer("centres", torch.randn(n_components, dim, generator=gen))
        for key, value in (("adapt_weights", adapt_weights), ("adapt_sigma", adapt_sigma)):
            check(isinstance(value, bool), key, value, "true or false")
        check(isinstance(respawn_below, (int, float)) and 0 <= respawn_below < 1, "respawn_below", respawn_below,
              "a fraction in [0, 1) of the uniform weight 1/n_components (0: never respawn)")
        check(not (respawn_below and not adapt_weights), "respawn_below", respawn_below,
              "0 unless prior.adapt_weights=true (fixed weights never fall)")
        check(isinstance(adapt_rate, (int, float)) and 0 < adapt_rate <= 1, "adapt_rate", adapt_rate,
              "a step in (0, 1]")
        bounds = tuple(sigma_bounds)
        check(len(bounds) == 2 and 0 < bounds[0] <= 1 <= bounds[1], "sigma_bounds", list(bounds),
              "[low, high] with 0 < low <= 1 <= high: factors of prior.sigma")
        self.adapt_weights, self.adapt_sigma = adapt_weights, adapt_sigma
        self.respawn_below, self.adapt_rate, self.sigma_bounds = float(respawn_below), float(adapt_rate), bounds
        self.adaptive = adapt_weights or adapt_sigma
        self._warned = False
        if self.adaptive:  # a fixed mixture keeps the state (and the samples) it always had
            self.register_buffer("weights", torch.full((n_components,), 1.0 / n_components, dtype=torch.float64))
            self.register_buffer("sigmas", torch.full((n_components,), float(sigma)))
            self.register_buffer("respawned", torch.zeros((), dtype=torch.long))

    def sample(self, n: int) -> torch.Tensor:
        noise_shape = (n, self.dim)
        if not self.adaptive:
            k = torch.randint(self.n_components, (n,), device=self.centres.device)
            return self.centres[k] + self.sigma * torch.randn(noise_shape, device=self.centres.device)
        k = torch.multinomial(self.weights, n, replacement=True) if n else self.weights.new_zeros(0, dtype=torch.long)
        return self.centres[k] + self.sigmas[k, None] * torch.randn(noise_shape, device=self.centres.device)

    @torch.no_grad()
    def components_of(self, z: torch.Tensor) -> torch.Tensor:
        """The component most likely to have drawn each latent (the largest posterior
        responsibility under the current weights and sigmas), in chunks."""
        sigmas = self.sigmas if self.adaptive else self.centres.new_full((self.n_components,), self.sigma)
        weights = self.weights if self.adaptive else torch.ones(self.n_components, dtype=torch.float64,
                                                                device=sigmas.device)
        c2 = (self.centres ** 2).sum(1)
        prior_term = weights.float().log() - self.dim * sigmas.log()
        chunk = max(1, 2**24 // self.n_components)
        out = []
        for part in z.split(chunk):
            d2 = (part ** 2).sum(1, keepdim=True) - 2 * part @ self.centres.T + c2
            out.append((prior_term - d2 / (2 * sigmas ** 2)).argmax(1))
        return torch.cat(out) if out else z.new_zeros(0, dtype=torch.long)

    @torch.no_grad()
    def round_statistics(self, z, drawn, paired, x, y):
        K = self.n_components
        count = lambda k: torch.bincount(k, minlength=K).double()  # noqa: E731
        every = self.components_of(z)  # once: the pairs' latents are among the round's
        comp = every[paired]
        stats = {"drawn": count(every[drawn]), "matched": count(comp)}
        if self.adapt_sigma:
            for name, points in (("generated", x), ("partner", y)):
                flat = points.detach().flatten(1).double()
                stats[f"{name}_sum"] = flat.new_zeros(K, flat.shape[1]).index_add_(0, comp, flat)
                stats[f"{name}_sumsq"] = flat.new_zeros(K).index_add_(0, comp, (flat ** 2).sum(1))
        return stats

    @torch.no_grad()
    def adapt(self, stats):
        rate, K = self.adapt_rate, self.n_components
        drawn, matched = stats["drawn"], stats["matched"]
        if self.adapt_weights:
            if not self._warned and torch.equal(drawn, matched):
                self._warned = True
                log.warning("prior.adapt_weights: this round matched every drawn point exactly once (the oversampled "
                            "mode with a balanced matcher), which says nothing about the weights: they stay as they "
                            "are. Weights adapt in mode=minibatch with mode.ratio > 1, or with matcher=nearest, "
                            "partial or unbalanced.")
            overall = matched.sum() / drawn.sum().clamp_min(1)
            match_rate = torch.where(drawn > 0, matched / drawn.clamp_min(1), overall)
            target = self.weights * match_rate
            if target.sum() > 0:
                self.weights.mul_(1 - rate).add_(rate * target / target.sum())
        if self.adapt_sigma:
            spread = {}
            for name in ("generated", "partner"):
                n = matched.clamp_min(1)
                spread[name] = (stats[f"{name}_sumsq"] - (stats[f"{name}_sum"] ** 2).sum(1) / n) / n
            ok = (matched >= 2) & (spread["generated"] > 1e-12)
            ratio = (spread["partner"] / spread["generated"].clamp_min(1e-12)).clamp(1e-6, 1e6)
            step = torch.where(ok, 0.5 * rate * ratio.log(), torch.zeros_like(ratio)).float()
            low, high = self.sigma * self.sigma_bounds[0], self.sigma * self.sigma_bounds[1]
            self.sigmas.copy_((self.sigmas.log() + step).exp().clamp(low, high))
        if self.respawn_below:
            self._respawn()
        w = self.weights
        return {"prior_effective_components": float(torch.exp(-(w * w.clamp_min(1e-300).log()).sum())),
                "prior_weight_max": float(w.max() * K), "prior_sigma_median": float(self.sigmas.median()),
                "prior_respawned": float(self.respawned), "prior_points": float(drawn.sum())}

    def _respawn(self) -> None:
        dead = torch.nonzero(self.weights < self.respawn_below / self.n_components).squeeze(1)
        if not len(dead):
            return
        alive = self.n_components - len(dead)
        dead = dead[:alive]  # each donor gives once
        donors = torch.topk(self.weights, len(dead)).indices
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.respawned))
        jitter = torch.randn(len(dead), self.dim, generator=gen).to(self.centres.device)
        self.centres[dead] = self.centres[donors] + self.sigmas[donors, None] * jitter
        self.sigmas[dead] = self.sigmas[donors]
        self.weights[donors] /= 2
        self.weights[dead] = self.weights[donors]
        self.weights /= self.weights.sum()
        self.respawned += len(dead)


class MixedPrior(Prior):
    """Varga's mixed prior: N(0, std² I) in `dim` dims, of which the last `bool_dims`
    are shifted by independent fair 0/1 coin flips (2^bool_dims discrete modes; `centres`
    lists the first `MAX_LISTED_CENTRES` of them)."""

    MAX_LISTED_CENTRES = 4096

    def __init__(self, dim: int, bool_dims: int, std: float = 1.0):
        super().__init__(dim)
        self.std = self.noise_std = check_positive("std", std)
        check(
            isinstance(bool_dims, int) and 0 <= bool_dims <= dim,
            "bool_dims", bool_dims, f"an integer in [0, dim={dim}]",
        )
        self.bool_dims = bool_dims
        count = min(2**bool_dims, self.MAX_LISTED_CENTRES)
        centres = torch.zeros(count, dim)
        bits = (torch.arange(count)[:, None] >> torch.arange(bool_dims)) & 1
        centres[:, dim - bool_dims :] = bits.float()
        self.register_buffer("centres", centres, persistent=False)

    def sample(self, n: int) -> torch.Tensor:
        z = self.std * torch.randn(n, self.dim, device=self._anchor.device)
        if self.bool_dims:
            coins = torch.randint(0, 2, (n, self.bool_dims), device=z.device)
            z[:, self.dim - self.bool_dims :] += coins.to(z.dtype)
        return z


class ClassConditionalPrior(Prior):
    """A class code beside another prior's latent: z = (z_base, one-hot(class)), so the
    generator, a network of `base.dim + n_classes` inputs, is told which class to make.

    `sample(n)` draws the classes by the training set's class frequencies (`class_probs`,
    a buffer, so a checkpoint samples as training did): the unconditional samples that the
    validation figures score. `sample(n, labels)` makes the given classes; `labels_of(z)`
    reads them back. `centres` and `noise_std` are the base prior's, with the code of
    class 0: the latent pictures need a point of the space, not every class."""

    def __init__(self, base: Prior, class_probs: torch.Tensor):
        n_classes = len(class_probs)
        super().__init__(base.dim + check_positive_int("n_classes", n_classes))
        check(bool((class_probs >= 0).all()) and float(class_probs.sum()) > 0, "class_probs", class_probs.tolist(),
              "non-negative class frequencies")
        self.base, self.n_classes = base, n_classes
        self.register_buffer("class_probs", class_probs.double() / class_probs.sum())
        self.noise_std = base.noise_std

    @property
    def centres(self) -> torch.Tensor:
        return torch.cat([self.base.centres, self.code(torch.zeros(len(self.base.centres), dtype=torch.long))], 1)

    def code(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels.to(self._anchor.device), self.n_classes).float()

    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.multinomial(self.class_probs, n, replacement=True)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} latents")
        return torch.cat([self.base.sample(n), self.code(labels)], 1)

    def labels_of(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, self.base.dim:].argmax(1)

    @property
    def adaptive(self) -> bool:
        return self.base.adaptive

    def round_statistics(self, z, drawn, paired, x, y):
        """The base prior's, on the base part of the latents."""
        return self.base.round_statistics(z[:, :self.base.dim], drawn, paired, x, y)

    def adapt(self, stats):
        return self.base.adapt(stats)
