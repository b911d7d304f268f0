"""Latent priors: the simple distributions a generator maps to data.

Each prior is an `nn.Module` so its state (the mixture's centres) lives in the
checkpoint; `sample(n)` draws from torch's global RNG, which `seed` fixes for a run. Every
prior is a uniform mixture of isotropic Gaussians (one component for `gaussian`) and says
so: `centres` (components, dim) and `noise_std`. The latent pictures need nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from ot_gen.errors import check, check_positive, check_positive_int
from ot_gen.memory import check_fits


class Prior(nn.Module):
    """A distribution over R^dim with `sample(n) -> (n, dim)`: a uniform mixture of
    Gaussians N(c, noise_std² I) over the rows c of the tensor `centres`."""

    centres: torch.Tensor
    noise_std: float

    def __init__(self, dim: int):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        # A buffer only to know the device: priors follow the module they live in.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError


class GaussianPrior(Prior):
    """N(0, std² I) in `dim` dimensions."""

    def __init__(self, dim: int, std: float = 1.0):
        super().__init__(dim)
        self.std = self.noise_std = check_positive("std", std)
        self.register_buffer("centres", torch.zeros(1, dim), persistent=False)

    def sample(self, n: int) -> torch.Tensor:
        return self.std * torch.randn(n, self.dim, device=self._anchor.device)


class GaussianMixturePrior(Prior):
    """Uniform mixture of `n_components` Gaussians N(c_i, sigma² I).

    The centres c_i ~ N(0, I) are drawn once from `seed` and kept as a buffer, so they are
    saved with the checkpoint and a resumed or reloaded run samples the same mixture.
    """

    def __init__(self, dim: int, n_components: int, sigma: float, seed: int = 0):
        super().__init__(dim)
        self.n_components = check_positive_int("n_components", n_components)
        self.sigma = self.noise_std = check_positive("sigma", sigma)
        check_fits("n_components", n_components, 4.0 * n_components * dim, f"{n_components} centres in {dim} dimensions",
                   "use fewer components")
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("centres", torch.randn(n_components, dim, generator=gen))

    def sample(self, n: int) -> torch.Tensor:
        k = torch.randint(self.n_components, (n,), device=self.centres.device)
        noise = torch.randn(n, self.dim, device=self.centres.device)
        return self.centres[k] + self.sigma * noise


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
