"""`mode=flow`: conditional flow matching on the pairs a matcher makes between prior
points and reals (OT-CFM: Tong et al., TMLR 2024; Pooladian et al., ICML 2023).

A round draws `k` prior points for each of `pool_size` reals, pairs them with the
configured matcher (exact: every real receives exactly k; `matcher=random`: plain
conditional flow matching, the baseline), and regresses the velocity field on the
straight paths between each pair: at a uniform time t, x_t = (1 − t)·z + t·y (+ σ·noise)
with target y − z, for `fit_epochs` passes in batches of `fit_batch_size`. With
`pool_size` the minibatch and k = 1 it is minibatch OT-CFM; with the whole training set
as the pool, whole-set pairing (`experiment=flow_*`). Under DDP the ranks' points form one
assignment, as in the oversampled mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ot_gen.errors import check, check_positive_int
from ot_gen.model.modes import Mode, regress_in_passes
from ot_gen.model.priors import ClassConditionalPrior, Prior


@dataclass
class Flow(Mode):
    """`pool_size` reals a round, `k` prior points each, paired by the matcher; the
    velocity regressed on the straight paths between the pairs at uniform times (with
    `sigma` noise around them) for `fit_epochs` passes in batches of `fit_batch_size`.
    Needs a network with `is_flow` (`FlowGenerator`) and a fixed, unconditional prior in
    the data's space (`check_parts`)."""

    pool_size: int = 256
    k: int = 1
    fit_epochs: int = 1
    fit_batch_size: int = 256
    sigma: float = 0.0
    val_every_rounds: int = 500

    name = "flow"
    reals_key = "pool_size"
    generated_key = "k"

    def __post_init__(self):
        for key in ("pool_size", "k", "fit_epochs", "fit_batch_size", "val_every_rounds"):
            check_positive_int(key, getattr(self, key))
        check(isinstance(self.sigma, (int, float)) and 0 <= self.sigma < float("inf"), "sigma", self.sigma,
              "a number >= 0 (finite): the noise around the straight paths")

    def generated_per_round(self) -> int:
        return self.k * self.pool_size

    def check_parts(self, prior: Prior, generator: nn.Module) -> None:
        check(getattr(generator, "is_flow", False), "network", type(generator).__name__,
              "a velocity network with a time input under mode=flow (network=flow_mlp; flow_unet for images)")
        classes = prior.n_classes if isinstance(prior, ClassConditionalPrior) else 0
        check(generator.n_classes == classes, "conditional", classes > 0,
              f"a flow built for it: this one's velocity takes {generator.n_classes} classes, the prior "
              f"{classes} (run.build gives a conditional run's flow its classes)")
        check(not prior.adaptive, "prior", type(prior).__name__,
              "a fixed prior under mode=flow (an adaptive mixture re-estimates itself from a one-step "
              "generator's outputs; set the prior's adapt_* keys off)")

    def round(self, module, y, ids, figures_due):
        flow = module.generator
        z = module.latents_for(ids, self.k)
        x0, _ = flow.split(z)  # the prior lives in the data's space (a conditional one's class after it)
        z, x0, y, match = module.match_across_ranks(z, x0, y, ids, each_real=self.k, diagnostics=figures_due)
        start, end = x0[match.gen_idx], y[match.real_idx]
        _, classes = flow.split(z[match.gen_idx])
        velocity = flow.velocity

        def path_loss(idx: torch.Tensor) -> torch.Tensor:
            a, b = start[idx], end[idx]
            t = torch.rand(len(idx), device=a.device, dtype=a.dtype)
            x_t = torch.lerp(a, b, t.view(-1, *[1] * (a.dim() - 1)))
            if self.sigma:
                x_t = x_t + self.sigma * torch.randn_like(x_t)
            return module.cost.paired(velocity(x_t, t, None if classes is None else classes[idx]), b - a).mean()

        loss = regress_in_passes(module, len(start), self.fit_epochs, self.fit_batch_size, start.device, path_loss)
        return {**match.stats, "loss": loss, "reals_in_solve": len(y), "nfe": module.generator.nfe}
