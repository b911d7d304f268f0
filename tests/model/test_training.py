"""Real tiny training runs through the real configs: both modes, both priors, outputs,
checkpoint resume, reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, python_env
from ot_gen.evaluation.metrics import w2
from ot_gen.errors import ConfigError
from ot_gen.run.build import build
from ot_gen.run.train import run

# A round of each mode that trains in a few seconds on 2 cores.
MODES = {
    "minibatch": ["mode=minibatch", "trainer.max_steps=400", "mode.val_every_rounds=200"],
    "oversampled": [
        "mode=oversampled", "mode.pool_size=200", "mode.k=5", "mode.fit_epochs=1",
        "mode.fit_batch_size=250", "trainer.max_steps=400", "mode.val_every_rounds=40",
    ],
}
REQUIRED = {"val/w2", "val/w2_floor", "val/energy", "train/matched_cost", "steps", "wall_s"}


def untrained_w2(cfg) -> float:
    torch.manual_seed(cfg.seed)
    module, data, _, _ = build(cfg)
    data.setup()
    return w2(module.sample(len(data.val_set)), data.val_set)


@pytest.mark.parametrize("prior", ["gaussian", "gmm"])
@pytest.mark.parametrize("mode", list(MODES))
def test_both_modes_and_priors_learn_a_2d_set(config, mode, prior):
    cfg = config(*MODES[mode], f"prior={prior}", "data=eight_gaussians")
    before = untrained_w2(cfg)
    after = run(cfg)
    metrics = json.loads((ROOT / cfg.paths.output_dir / "metrics.json").read_text())
    assert after == metrics["val/w2"]
    assert after < 0.35 * before, f"val/w2 went from {before:.3f} to {after:.3f}"
    assert metrics["val/w2"] < 3 * metrics["val/w2_floor"]
    assert abs(metrics["val/energy"]) < 0.1
    assert metrics["train/matched_cost"] <= metrics["train/identity_cost"]
    assert metrics["steps"] >= 400
    assert "eval/w1_train" not in metrics  # the OT-GAN figure: only where an experiment asks for it


def test_a_run_writes_metrics_checkpoint_and_pictures(config):
    cfg = config(*MODES["minibatch"], "trainer.max_steps=200", "mode.val_every_rounds=100", "eval.w1_k=10")
    run(cfg)
    out = ROOT / cfg.paths.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED | {"eval/w1_train", "eval/w2", "eval/w2_floor", "eval/w2_ratio"} <= set(metrics)
    # the headline W2 is a mean over fixed draws: they differ, and the first is validation's own
    assert metrics["eval/w2_spread"] > 0 and metrics["eval/w2_floor_spread"] > 0
    assert abs(metrics["eval/w2"] - metrics["val/w2"]) < 4 * metrics["eval/w2_spread"]
    assert metrics["steps"] == 200
    assert (out / "checkpoints" / "last.ckpt").is_file()
    for kind in ("samples", "pairs"):
        assert (out / "plots" / f"{kind}_step0000100.png").is_file()
        assert (out / "plots" / f"{kind}_step0000200.png").is_file()


def test_ratio_above_one_trains_on_best_distinct_partners(config):
    cfg = config(*MODES["minibatch"], "mode.ratio=3", "trainer.max_steps=100")
    run(cfg)
    metrics = json.loads((ROOT / cfg.paths.output_dir / "metrics.json").read_text())
    assert metrics["train/generated_used"] == pytest.approx(1 / 3)
    assert metrics["train/dropped"] == 0


def test_oversampled_sqrt_schedule_grows_k(config):
    cfg = config(*MODES["oversampled"], "mode.k_schedule=sqrt", "mode.k_start=1",
                 "mode.k_ramp_rounds=4", "trainer.max_steps=150", "matcher=hungarian")
    run(cfg)
    metrics = json.loads((ROOT / cfg.paths.output_dir / "metrics.json").read_text())
    assert metrics["train/k"] == 5 and metrics["rounds"] >= 5


def test_k_schedules_ramp_from_k_start_to_k():
    from ot_gen.model.modes import Oversampled

    ks = {name: [Oversampled(k=26, k_start=2, k_ramp_rounds=12, k_schedule=name).k_at(r) for r in (0, 3, 6, 12, 50)]
          for name in ("constant", "sqrt", "linear")}
    assert ks["constant"] == [26] * 5
    assert ks["linear"] == [2, 8, 14, 26, 26]  # the OT-GAN code's growing number of latent batches
    assert ks["sqrt"] == [2, 14, 19, 26, 26]


def test_same_seed_same_metrics(config):
    def metrics_of(cfg):
        run(cfg)
        m = json.loads((ROOT / cfg.paths.output_dir / "metrics.json").read_text())
        return {k: v for k, v in m.items() if k not in ("wall_s", "s_per_round", "train/solve_s", "val_s", "train_s_per_step")}  # timings

    overrides = (*MODES["oversampled"], "prior=gmm", "trainer.max_steps=60")
    assert metrics_of(config(*overrides)) == metrics_of(config(*overrides))
    assert metrics_of(config(*overrides)) != metrics_of(config(*overrides, "seed=1"))


def test_resume_from_checkpoint_continues_the_run(config):
    first = config(*MODES["oversampled"], "prior=gmm", "trainer.max_steps=80")
    run(first)
    ckpt = ROOT / first.paths.output_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["ot_gen"]["config"]["prior"]["_target_"].endswith("GaussianMixturePrior")
    other_seed = config(*MODES["oversampled"], "prior=gmm", "trainer.max_steps=160", f"ckpt_path={ckpt}", "seed=5")
    with pytest.raises(ConfigError, match="seed: 0 in the checkpoint, 5 now"):  # another data split, other centres
        build(other_seed)
    resumed = config(*MODES["oversampled"], "prior=gmm", "trainer.max_steps=160", f"ckpt_path={ckpt}")
    module, data, trainer, _ = build(resumed)
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt))
    assert trainer.global_step == 160
    assert int(module.rounds) == 2 * int(state["state_dict"]["rounds"])
    assert torch.equal(module.prior.centres, state["state_dict"]["prior.centres"])


def test_generator_ema_is_what_validation_checkpoints_and_resume_see(config):
    """The EMA of the generator (and of it alone) is swapped in for validation, held by the
    checkpoint's state_dict and by the module after training; a resume goes on from the
    training weights and their average."""
    from ot_gen.run.sample import load_module

    ema = ("ema.decay=0.9", "ema.start_step=20")
    first = config(*MODES["oversampled"], *ema, "trainer.max_steps=80")
    module, data, trainer, _ = build(first)
    trainer.fit(module, datamodule=data)
    averaged = {k: v.clone() for k, v in module.state_dict().items()}
    path = ROOT / first.paths.output_dir / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    weights, stored = ckpt["current_model_state"], ckpt["state_dict"]
    assert int(ckpt["averaging_state"]["n_averaged"]) == 15  # one per round of 4 steps, rounds ending at step 24..80
    generator_keys = [k for k in stored if k.startswith("generator.")]
    assert all(torch.equal(stored[k], averaged[k]) for k in stored)
    assert any(not torch.equal(stored[k], weights[k]) for k in generator_keys if stored[k].is_floating_point())
    assert all(torch.equal(stored[k], weights[k]) for k in stored if not k.startswith("generator."))
    trainer.validate(module, datamodule=data)  # after training: the average, not swapped back
    assert all(torch.equal(module.state_dict()[k], averaged[k]) for k in generator_keys)
    loaded, _ = load_module(path)
    assert all(torch.equal(loaded.state_dict()[k], averaged[k]) for k in generator_keys)

    without = config(*MODES["oversampled"], "ema=null", "trainer.max_steps=80", f"ckpt_path={path}")
    module, data, trainer, _ = build(without)
    trainer.fit(module, datamodule=data, ckpt_path=str(path))  # nothing left to train: restores only
    assert all(torch.equal(module.state_dict()[k], weights[k]) for k in generator_keys)

    resumed = config(*MODES["oversampled"], *ema, "trainer.max_steps=160", f"ckpt_path={path}")
    module, data, trainer, _ = build(resumed)
    ema_cb = next(cb for cb in trainer.callbacks if cb.__class__.__name__ == "GeneratorEMA")
    trainer.fit(module, datamodule=data, ckpt_path=str(path))
    assert trainer.global_step == 160 and int(ema_cb._average_model.n_averaged) == 35


def test_validation_solves_w2_beside_the_pictures_and_logs_each_validations_own(config, monkeypatch):
    """val/w2 is solved in a thread while the callbacks draw, and logged at
    the end of the validation: what the logger, the summary figure's curves and the final
    evaluation see is that validation's value, not the one before."""
    import csv
    import threading

    from ot_gen.matching.auction import threads_can_solve
    from ot_gen.model import module as module_py

    threads = []
    solve = module_py.w2
    monkeypatch.setattr(module_py, "w2", lambda x, y: threads.append(threading.current_thread()) or solve(x, y))
    cfg = config("logger=csv", "trainer.max_steps=60", "mode.val_every_rounds=20", "eval.n_generated=0")
    module, data, trainer, _ = build(cfg)
    trainer.fit(module, datamodule=data)
    assert len(threads) == 3 + 1, "three validations and the noise floor once"
    assert threads[0] is threading.main_thread(), "the floor, at the first validation"
    if threads_can_solve():
        assert threading.main_thread() not in threads[1:]
    with open(trainer.loggers[0].experiment.metrics_file_path) as f:
        logged = {int(row["step"]): float(row["val/w2"]) for row in csv.DictReader(f) if row.get("val/w2")}
    summary = next(cb for cb in trainer.callbacks if cb.__class__.__name__ == "SummaryFigure")
    in_order = [logged[step] for step in sorted(logged)]
    assert [h["step"] for h in summary.history] == [20, 40, 60] and len(set(in_order)) == 3
    assert [h["val/w2"] for h in summary.history] == pytest.approx(in_order)
    assert module.scored == (60, pytest.approx(in_order[-1]))


@pytest.mark.e2e
def test_train_py_as_a_user_runs_it(tmp_path):
    """`python train.py prior=gmm matcher=exact` (shortened) writes metrics.json in its run dir."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "prior=gmm", "matcher=exact", "logger=csv", "trainer.max_steps=50",
           "mode.val_every_rounds=25", "val_samples=300", "trainer.enable_progress_bar=false",
           "eval.w1_reals=500", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(metrics) and metrics["steps"] == 50
    assert (out / "checkpoints" / "last.ckpt").is_file()
    csv = (out / "csv" / "metrics.csv").read_text()
    assert "train/matched_cost" in csv and "val/w2" in csv


def test_wandb_by_default_runs_offline_and_records_scalars_pictures_config(config, monkeypatch, tmp_path):
    from wandb_offline import OfflineRun

    from ot_gen.run.loggers import wandb_logged_in

    monkeypatch.delenv("WANDB_MODE")  # let the logger decide by itself: no key, no netrc
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_logged_in()
    cfg = config(*MODES["minibatch"], "logger=wandb", "trainer.max_steps=60", "mode.val_every_rounds=30")
    run(cfg)
    (run_dir,) = (ROOT / cfg.paths.output_dir / "wandb").glob("offline-run-*")
    logged = OfflineRun.read(run_dir)
    assert logged.exit_code == 0
    assert {"train/matched_cost", "train/identity_cost", "train/solve_s", "train/dropped",
            "train/partner_spread", "train/lr", "val/w2", "val/energy"} <= logged.logged_keys()
    assert {"plots/samples/_type", "plots/pairs/_type", "plots/density/_type", "eval/nn_histogram/_type",
            "summary/_type"} <= logged.logged_keys()
    assert {"eval/nn_generated_mean", "eval/nn_train_mean"} <= set(logged.summary)
    assert logged.summary["steps"] == 60 and "val/w2" in logged.summary
    assert logged.config["mode"]["_target_"] == "ot_gen.model.modes.Minibatch"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logged_in()


def test_pictures_never_change_a_runs_results(config):
    """The callbacks (pictures, checkpoints, classifier and memorization figures) draw from
    their own random streams, so a run with them and a run with `callbacks=none` train on
    the same latents and data order; the EMA, part of the result, stays on in both."""
    tiny = ("trainer.max_steps=30", "mode.val_every_rounds=10", "eval.n_generated=0")
    with_pictures = config(*tiny)
    without = config(*tiny, "callbacks=none")
    assert without.ema is not None and not without.callbacks
    a, b = run(with_pictures), run(without)
    assert a == b
    ma = json.loads((ROOT / with_pictures.paths.output_dir / "metrics.json").read_text())
    mb = json.loads((ROOT / without.paths.output_dir / "metrics.json").read_text())
    for key in ("val/w2", "val/energy", "train/matched_cost", "train/loss"):
        assert ma[key] == mb[key], key
    assert list((ROOT / with_pictures.paths.output_dir / "plots").glob("density_step*.png"))


@pytest.mark.e2e
def test_the_console_shows_what_helps_and_nothing_else(tmp_path):
    """A default run's console: the run dir, one progress bar in steps toward max_steps,
    the final line and the W&B sync command; no Lightning device lines or tip, no W&B
    warning, no deprecation notice, no per-epoch bar."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "trainer.max_steps=40", "mode.val_every_rounds=20", "val_samples=300",
           "eval.n_generated=1000", "eval.n_heldout=300", f"hydra.run.dir={out}"]
    env = {**python_env(), "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for unwanted in ("Tip", "GPU available", "anonymous", "LeafSpec", "Epoch", "Warning", "WARNING",
                     "log_every_n_steps"):
        assert unwanted not in console, f"{unwanted!r} on the console:\n{console[-3000:]}"
    assert f"run dir {out}" in console
    assert "training: 100%" in console and "40/40" in console and "matched cost" in console
    assert "wandb sync " + str(out / "wandb") in console


@pytest.mark.parametrize("steps, validated", [(20, 2), (25, 3)])
def test_the_final_state_is_validated_once_and_summarised(config, steps, validated):
    """A fit whose last validation scored its final step is not validated again (the same
    weights, the same draws: the same figures at the cost of a validation); a fit that ends
    between validations gets one more. Either way metrics.json holds that validation's
    val/* and plots/summary shows the final state, once."""
    cfg = config(f"trainer.max_steps={steps}", "mode.val_every_rounds=10", "logger=csv", "eval.n_generated=0")
    run(cfg)
    out = ROOT / cfg.paths.output_dir
    rows = (out / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    w2_col = header.index("val/w2")
    val_rows = [r.split(",") for r in rows[1:] if r.split(",")[w2_col]]
    assert len(val_rows) == validated  # at steps 10 and 20 (and 25)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val/w2"] == pytest.approx(float(val_rows[-1][w2_col]), rel=1e-6)
    assert sorted(p.name for p in (out / "plots").glob("summary_step*.png")) == [f"summary_step{steps:07d}.png"]
