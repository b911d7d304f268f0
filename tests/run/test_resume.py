"""Resume: the same W&B run continues, and the RNG streams pick up where they stopped."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT
from ot_gen.run.train import run

MINI = ["trainer.max_steps=14", "mode.val_every_rounds=7", "scheduler=none", "eval.n_generated=0"]


def test_resumed_run_continues_the_same_wandb_run(config, tmp_path):
    first = config("logger=wandb", *MINI)
    run(first)
    ckpt = ROOT / first.paths.output_dir / "checkpoints" / "last.ckpt"
    run_id = torch.load(ckpt, map_location="cpu", weights_only=False)["ot_gen"]["wandb_run_id"]
    second = config("logger=wandb", *MINI, "trainer.max_steps=28", f"ckpt_path={ckpt}")
    run(second)
    (resumed,) = (ROOT / second.paths.output_dir / "wandb").glob("offline-run-*")
    assert resumed.name.endswith(run_id), "`wandb sync` uploads it into the first run"


ADAPTIVE = ["prior=gmm_adaptive", "prior.respawn_below=0.1", "mode.ratio=2"]
FLOW = ["mode=flow", "network=flow_mlp", "network.width=32", "network.steps=4"]


@pytest.mark.parametrize("prior", [[], ADAPTIVE, FLOW], ids=["default", "adaptive mixture", "flow"])
def test_resume_at_an_epoch_boundary_reproduces_the_uninterrupted_run(config, tmp_path, prior):
    """2000 reals in batches of 256 is 7 rounds per epoch: stop after 14, resume to 28. An
    adaptive prior's weights, sigmas and respawned centres go on bit for bit too."""
    straight = config(*MINI, *prior, "trainer.max_steps=28")
    run(straight)
    first = config(*MINI, *prior)
    run(first)
    ckpt = ROOT / first.paths.output_dir / "checkpoints" / "last.ckpt"
    resumed = config(*MINI, *prior, "trainer.max_steps=28", f"ckpt_path={ckpt}")
    run(resumed)
    a = json.loads((ROOT / straight.paths.output_dir / "metrics.json").read_text())
    b = json.loads((ROOT / resumed.paths.output_dir / "metrics.json").read_text())
    for key in ("val/w2", "val/energy", "train/matched_cost", "train/loss"):
        assert a[key] == b[key], key
    state_a = torch.load(ROOT / straight.paths.output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    state_b = torch.load(ROOT / resumed.paths.output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    for name, value in state_a["state_dict"].items():
        other = state_b["state_dict"][name]
        if isinstance(value, dict):  # a module's extra state: the exact matcher's warm-start prices
            assert value.keys() == other.keys(), name
            for key in value:
                same = torch.equal(value[key], other[key]) if torch.is_tensor(value[key]) else value[key] == other[key]
                assert same, f"{name}.{key}"
        else:
            assert torch.equal(value, other), name
    assert torch.equal(state_a["ot_gen"]["rng_states"]["torch"], state_b["ot_gen"]["rng_states"]["torch"])
    if prior == ADAPTIVE:  # the prior did adapt: the comparison above covered a moving state
        weights = state_a["state_dict"]["prior.weights"]
        assert not torch.allclose(weights, torch.full_like(weights, 1 / len(weights)))
        assert int(state_a["state_dict"]["prior.respawned"]) > 0
    assert state_a["ToyDataModule"] == state_b["ToyDataModule"] == {"rounds_served": 28}
