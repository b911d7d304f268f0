"""Lightning DDP with 2 CPU processes (gloo): one global assignment in the oversampled mode."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FAST, ROOT, python_env

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *FAST, "eval.n_generated=1000", "callbacks=none"]


def train(tmp_path, *overrides):
    cmd = [sys.executable, "train.py", *DDP, *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.timeout(450)
def test_oversampled_ddp_solves_one_global_assignment_with_k_per_real(tmp_path):
    metrics = train(tmp_path, "mode=oversampled", "mode.pool_size=100", "mode.k=3", "trainer.max_steps=12",
                    "mode.val_every_rounds=2")
    assert metrics["train/reals_in_solve"] == 200, "both ranks' pools in one solve"
    assert metrics["train/dropped"] == 0 and metrics["train/partner_spread"] == 0, "every real exactly k partners"
    assert metrics["train/generated_used"] == 1.0
    assert metrics["steps"] == 12
    runs = [p for p in tmp_path.iterdir()]
    assert runs == [tmp_path / "run"], "one Hydra run dir for both ranks"
    assert not (tmp_path / "run" / "metrics.json.tmp").exists()


@pytest.mark.timeout(450)
def test_minibatch_ddp_matches_per_rank_and_trains(tmp_path):
    metrics = train(tmp_path, "trainer.max_steps=20", "mode.val_every_rounds=10")
    assert metrics["train/reals_in_solve"] == 256, "the minibatch mode matches each rank's batch on its own"
    assert metrics["steps"] == 20 and metrics["val/w2"] < 5
