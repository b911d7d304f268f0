"""Lightning DDP with 2 CPU processes (gloo): one global assignment in the oversampled mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST, ROOT, SHARED, needs_shared, python_env, reaped
from ot_gen.run.checkpoints import load

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *FAST, "eval.n_generated=1000", "callbacks=none"]


def train(tmp_path, *overrides):
    cmd = [sys.executable, "train.py", *DDP, *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.e2e
@pytest.mark.timeout(450)
def test_oversampled_ddp_solves_one_global_assignment_with_k_per_real(tmp_path):
    metrics = train(tmp_path, "mode=oversampled", "mode.pool_size=100", "mode.k=3", "trainer.max_steps=12",
                    "mode.val_every_rounds=2", "prior=gmm_adaptive")
    assert metrics["train/reals_in_solve"] == 200, "both ranks' pools in one solve"
    assert metrics["train/dropped"] == 0 and metrics["train/partner_spread"] == 0, "every real exactly k partners"
    assert metrics["train/generated_used"] == 1.0
    assert metrics["steps"] == 12
    assert metrics["train/prior_points"] == 2 * 3 * 100, "each rank counts its own block of the gathered latents"
    runs = [p for p in tmp_path.iterdir()]
    assert runs == [tmp_path / "run"], "one Hydra run dir for both ranks"
    assert not (tmp_path / "run" / "metrics.json.tmp").exists()


@pytest.mark.e2e
@pytest.mark.timeout(450)
@needs_shared
def test_a_conditional_ddp_run_solves_one_assignment_per_class(tmp_path):
    metrics = train(tmp_path, f"paths.data_dir={SHARED}", "data=mnist", "data.download=false", "conditional=true",
                    "mode=oversampled", "mode.pool_size=100", "mode.k=2", "trainer.max_steps=4",
                    "mode.val_every_rounds=2")
    assert metrics["train/reals_in_solve"] == 200 and metrics["train/classes_solved"] == 10
    assert metrics["train/dropped"] == 0 and metrics["steps"] == 4


@pytest.mark.e2e
@pytest.mark.timeout(450)
def test_minibatch_ddp_matches_per_rank_and_trains(tmp_path):
    metrics = train(tmp_path, "trainer.max_steps=20", "mode.val_every_rounds=10", "prior=gmm_adaptive", "mode.ratio=2")
    assert metrics["train/reals_in_solve"] == 256, "the minibatch mode matches each rank's batch on its own"
    assert metrics["steps"] == 20 and metrics["val/w2"] < 5
    assert metrics["train/prior_points"] == 2 * 2 * 256, "the adaptive prior learns from both ranks' rounds"


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("target, sig, code", [("process group", signal.SIGTERM, 0), ("rank 1", signal.SIGTERM, 0),
                                               ("process group", signal.SIGINT, 130)],
                         ids=["SIGTERM to the process group", "SIGTERM to rank 1", "Ctrl-C to the process group"])
def test_a_signal_under_ddp_saves_once_and_every_rank_exits_in_seconds(tmp_path, target, sig, code):
    """Lightning's own SIGTERM handler broadcasts from inside the handler: with the signal
    sent to the process group, both ranks used to wait forever after `Received SIGTERM`.
    Ctrl-C (SIGINT, which a terminal sends to the process group) raised KeyboardInterrupt
    on each rank at a different point: no exit 120 s later in 2 of 3 tries."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", *DDP[:-1], "trainer.max_steps=100000", "mode.val_every_rounds=5",
           "callbacks.point_cloud_plots.n_points=100", f"hydra.run.dir={run_dir}"]
    # As from a terminal: a background job (CI under nohup ... &) starts with SIGINT ignored.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    with reaped(proc):
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        deadline = time.time() + 180
        while not ckpt.exists():
            assert proc.poll() is None and time.time() < deadline, "no checkpoint"
            time.sleep(0.05)
        time.sleep(1.0)  # mid-training, past the first checkpoint
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if target == "process group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(int(children[0]), sig)
        out, _ = proc.communicate(timeout=120)  # a rank that waits forever fails here
    assert proc.returncode == code, out[-3000:]
    assert out.count("resume with ckpt_path=") == 1, out[-3000:]
    assert f"{sig.name} at step" in out, out[-3000:]
    saved = load(ckpt)
    assert saved["global_step"] >= 5 and not list(run_dir.glob("checkpoints/*.tmp"))
    assert subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True).returncode == 1, "a rank is left"


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_ddp_checkpoint_taken_mid_pass_resumes_under_ddp(tmp_path):
    """A pre-empted multi-GPU job continues: its last.ckpt, taken mid-pass over the data
    (10 rounds; a pass is 3 rounds of 2 × 256 of the 2000 points), resumed under DDP, runs
    on to the new end; it used to fail at its first batch (IndexError in Lightning's
    distributed sampler wrapper)."""
    with_checkpoints = [o for o in DDP if o != "callbacks=none"] + ["callbacks.point_cloud_plots=null",
                                                                     "callbacks.summary_figure=null"]

    def ddp_train(*overrides):
        cmd = [sys.executable, "train.py", *with_checkpoints, *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=280)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads((tmp_path / "run" / "metrics.json").read_text())

    assert ddp_train("trainer.max_steps=10", "mode.val_every_rounds=5")["steps"] == 10
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert load(ckpt)["global_step"] == 10
    resumed = ddp_train("trainer.max_steps=16", "mode.val_every_rounds=5", f"ckpt_path={ckpt}")
    assert resumed["steps"] == 16 and resumed["rounds"] == 16


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("killed", ["rank 1", "rank 0"])
def test_a_dead_rank_is_named_in_one_line_with_the_checkpoint_that_resumes(tmp_path, killed):
    """SIGKILL of one rank left the other exiting with gloo's "Connection reset by peer"
    traceback, saying nothing of what died or how to go on."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", *DDP[:-1], "trainer.max_steps=100000", "mode.val_every_rounds=5",
           "callbacks.point_cloud_plots.n_points=100", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    with reaped(proc):
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        deadline = time.time() + 180
        while not ckpt.exists():
            assert proc.poll() is None and time.time() < deadline, "no checkpoint"
            time.sleep(0.05)
        time.sleep(1.0)
        rank1 = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0])
        victim = rank1 if killed == "rank 1" else proc.pid
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 60
        while subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True).returncode == 0:
            assert time.time() < deadline, "a rank is left running"
            time.sleep(0.2)
        out = proc.stdout.read()
    said = [line for line in out.splitlines() if "distributed run:" in line]
    assert len(said) == 1, out[-3000:]
    assert f"{killed} (process {victim}" in said[0] and "died" in said[0], said[0]
    step = load(ckpt)["global_step"]
    assert f"checkpoints/last.ckpt (step {step}) resumes the run: ckpt_path={ckpt}" in said[0]
    assert "Traceback" not in out and "GLHF" not in out, out[-3000:]
