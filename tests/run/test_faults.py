"""Faults lose nothing: SIGTERM and SIGKILL sent to a real training process, then resumed;
torn and corrupt checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, ROOT, python_env
from ot_gen.run.checkpoints import AtomicCheckpointIO, CheckpointError, load

LONG = [*FAST, "trainer.max_steps=200", "mode.val_every_rounds=10", "eval.n_generated=1000", "logger=wandb",
        "callbacks.point_cloud_plots.n_points=100"]


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "train.py", *LONG, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # its own process group, as a batch job


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def finish(run_dir: Path, *overrides: str) -> dict:
    proc = start(run_dir, *overrides)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes_the_same_wandb_run(tmp_path):
    runs = tmp_path / "runs"
    proc = start(runs / "a")
    wait_for_checkpoint(proc, runs / "a" / "checkpoints" / "last.ckpt")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "resume with ckpt_path=" in out
    saved = load(runs / "a" / "checkpoints" / "last.ckpt")
    stopped_at = saved["global_step"]
    assert 10 <= stopped_at < 200
    metrics = finish(runs / "b", "ckpt_path=last")  # the newest last.ckpt under runs/
    assert metrics["steps"] == 200
    (first,) = (runs / "a" / "wandb").glob("offline-run-*")
    (second,) = (runs / "b" / "wandb").glob("offline-run-*")
    assert first.name.split("-")[-1] == second.name.split("-")[-1] == saved["ot_gen"]["wandb_run_id"]


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_sigkill_then_resume_ends_where_the_uninterrupted_run_ends(tmp_path):
    straight = finish(tmp_path / "straight")
    proc = start(tmp_path / "killed")
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    wait_for_checkpoint(proc, ckpt)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its children (the W&B service), as a scheduler does
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = load(ckpt)  # whatever the moment of the kill, last.ckpt is whole
    assert 10 <= saved["global_step"] < 200
    resumed = finish(tmp_path / "resumed", f"ckpt_path={ckpt}")
    for key in ("val/w2", "val/energy", "train/matched_cost", "train/loss", "eval/nn_generated_mean", "steps"):
        assert resumed[key] == straight[key], key


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint .*last.ckpt \(disk full\); the "
                       "previous last.ckpt is intact"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load(path)["global_step"] == 1
    assert not (tmp_path / "last.ckpt.tmp").exists(), "the half-written file is removed"


def test_a_truncated_checkpoint_is_an_error_naming_the_file(tmp_path, config):
    from ot_gen.run.build import build

    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, good)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=f"checkpoint {bad} is truncated or corrupt"):
        build(config(f"ckpt_path={bad}"))


def test_ckpt_path_last_without_any_run_is_a_config_error(config):
    from ot_gen.errors import ConfigError
    from ot_gen.run.build import build

    with pytest.raises(ConfigError, match="ckpt_path='last' is not allowed: a run with checkpoints/last.ckpt"):
        build(config("ckpt_path=last"))


def test_nan_mid_run_stops_with_the_step_and_keeps_the_last_good_checkpoint(config):
    import lightning as L

    from ot_gen.errors import NonFiniteError
    from ot_gen.run.build import build

    class Poison(L.Callback):  # a weight turns NaN after the checkpoint of step 10
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 15:
                with torch.no_grad():
                    next(module.generator.parameters()).view(-1)[0] = float("nan")

    cfg = config("trainer.max_steps=40", "mode.val_every_rounds=10", "eval.n_generated=0")
    module, data, trainer, _ = build(cfg)
    trainer.callbacks.append(Poison())
    with pytest.raises(NonFiniteError, match="generated points became NaN/Inf at step 15"):
        trainer.fit(module, datamodule=data)
    saved = load(ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 10
    bad = [k for k, t in saved["state_dict"].items() if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, bad


def test_sigterm_in_a_validation_stops_it_at_once_and_saves_the_training_weights(config):
    """One process: a SIGTERM inside a validation (an image run's can take minutes) stops
    it there rather than after it. The EMA's average is swapped in at that moment; the
    saved checkpoint still holds the training weights for a resume and the average as
    its state_dict."""
    import lightning as L

    from ot_gen.model.ema import GeneratorEMA
    from ot_gen.run.build import build

    class SigtermInSecondValidation(L.Callback):
        def __init__(self):
            self.finished_validations = 0

        def on_validation_epoch_start(self, trainer, pl_module):
            if trainer.global_step == 20:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends

        def on_validation_epoch_end(self, trainer, pl_module):
            self.finished_validations += 1

    cfg = config("trainer.max_steps=40", "mode.val_every_rounds=10", "eval.n_generated=0")
    run = build(cfg)
    probe = SigtermInSecondValidation()
    run.trainer.callbacks.append(probe)  # after the EMA: the average is in when the signal comes
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException
        run.trainer.fit(run.module, datamodule=run.data)
    assert probe.finished_validations == 1  # the first one; the second stopped at the signal
    ema = next(cb for cb in run.trainer.callbacks if isinstance(cb, GeneratorEMA))
    ckpt = load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 20
    for name, weights in ema._average_model.module.state_dict().items():  # the training weights, swapped out
        assert torch.equal(ckpt["current_model_state"][f"generator.{name}"], weights), name
    for name, average in run.module.generator.state_dict().items():
        assert torch.equal(ckpt["state_dict"][f"generator.{name}"], average), name
