"""Distilling a flow into a one-step generator (rectified flow's distillation, Liu et al.
ICLR 2023): a "matcher" whose partner for each generated point g(z) is the teacher flow's
endpoint ODE(z) of the same latent, so that the one-step modes regress the generator onto
the flow's samples. The partners are new points, not training points: the student learns
the teacher's map, which a one-step generator can fit, where the transport map onto a
finite training set is piecewise constant.

`matcher=flow_teacher matcher.ckpt=PATH`: the teacher is a checkpoint of a `mode=flow`
run on the same data with the same prior, read as data and checked by `run.build`,
which hands it over as `teacher`.
"""

from __future__ import annotations

import torch
from torch import nn

from ot_gen.errors import check, check_positive_int
from ot_gen.matching.base import Matcher


class FlowTeacher(Matcher):
    """Pairs generated point i with the teacher's endpoint of latent i (every latent its
    own target; no solve). `chunk`: latents integrated at a time."""

    name = "flow_teacher"
    bijective = False  # one target per generated point, whatever each_real says
    modes = ("minibatch", "oversampled")
    ddp_refusal = None

    def __init__(self, ckpt: str | None = None, teacher: nn.Module | None = None, chunk: int = 8192):
        super().__init__()
        check(ckpt is not None, "ckpt", ckpt, "the checkpoint of a mode=flow run (its checkpoints/last.ckpt)")
        check(teacher is None or getattr(teacher, "is_flow", False), "ckpt", ckpt,
              "the checkpoint of a mode=flow run: this one's generator takes one step (nothing to distil)")
        self.ckpt, self.chunk = str(ckpt), check_positive_int("chunk", chunk)
        # In a tuple, not a submodule: the student's checkpoints hold the student, not the
        # teacher. Empty: built from a student's checkpoint to sample it (no round is run).
        self._teacher = () if teacher is None else (teacher.requires_grad_(False).eval(),)

    @torch.no_grad()
    def endpoints(self, z: torch.Tensor) -> torch.Tensor:
        """The teacher flow's samples of latents `z` (its ODE from z at t = 0 to t = 1)."""
        if not self._teacher:
            raise RuntimeError("matcher flow_teacher was built without its teacher (to sample a checkpoint)")
        teacher = self._teacher[0].to(z.device)
        return torch.cat([teacher(c) for c in z.split(self.chunk)])

    def targets(self, y, ids, z=None):
        check(z is not None, "matcher", self.name, "a matcher given the round's latents (the one-step modes give them)")
        return self.endpoints(z), None

    def _pair(self, x, y, cost, each_real, real_ids):
        if len(x) != len(y):
            raise ValueError(f"matcher {self.name}: {len(x)} generated points for {len(y)} teacher endpoints")
        idx = torch.arange(len(x), device=x.device)
        return idx, idx
