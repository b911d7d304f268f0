"""run(cfg): build everything from the composed config, fit, evaluate, write metrics.json,
return the metric named by `optimized_metric` so Hydra sweepers can optimise it; `task`
wraps it for the Hydra entry point (user mistakes as one-line errors)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from ot_gen.errors import ConfigError, Interrupted, OTGenError
from ot_gen.evaluation.final import final_metrics
from ot_gen.run import checkpoints
from ot_gen.run.build import build
from ot_gen.run import peer_loss, preemption
from ot_gen.run.preemption import stops_on_sigterm
from ot_gen.run.progress import ValidationClock

log = logging.getLogger(__name__)


# -- one run ----------------------------------------------------------------------------
def run(cfg: DictConfig) -> float:
    start = time.perf_counter()
    log.info("run dir %s", cfg.paths.output_dir)
    module, data, trainer, resume = build(cfg)
    # A resume times only this session's work: the steps and rounds it starts from.
    steps_before = int(resume.checkpoint.get("global_step", 0)) if resume else 0
    rounds_before = int(resume.checkpoint.get("state_dict", {}).get("rounds", 0)) if resume else 0
    parent = os.getppid()  # a DDP rank > 0: its parent is rank 0
    try:
        fit_start = time.perf_counter()
        try:
            trainer.fit(module, datamodule=data, ckpt_path=None if resume is None else resume.path)
        except RuntimeError as e:
            if peer_loss.lost_peer(e):
                raise peer_loss.PeerLost(peer_loss.message(trainer, parent, e)) from None
            raise
        fit_s = time.perf_counter() - fit_start
        clock = next(cb for cb in trainer.callbacks if isinstance(cb, ValidationClock))
        train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        with stops_on_sigterm(trainer, "the final evaluation", "checkpoints/last.ckpt holds the final state; "
                              "metrics.json is not written: run again with ckpt_path=<that file> to evaluate it"):
            checkpoints.save_last(trainer)  # ModelCheckpoint saves at validations: make last.ckpt the final state
            if clock.last_step == trainer.global_step:  # fit validated this very state last
                val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            else:
                val_metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
            unseen = final_metrics(cfg.eval, module, data, trainer)
        metrics = {
            **train_metrics,
            **val_metrics,
            **unseen,
            "steps": trainer.global_step,
            "rounds": int(module.rounds),
            "s_per_round": fit_s / max(int(module.rounds) - rounds_before, 1),
            "val_s": clock.seconds,  # of fit_s, in validations
            "train_s_per_step": (fit_s - clock.seconds) / max(trainer.global_step - steps_before, 1),
            "wall_s": time.perf_counter() - start,
        }
        if trainer.is_global_zero:
            _report(metrics, Path(cfg.paths.output_dir), trainer)
        return metrics[cfg.optimized_metric]
    finally:
        _finish_wandb()


def _report(metrics: dict[str, float], out_dir: Path, trainer: L.Trainer) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    tmp.replace(out_dir / "metrics.json")
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update(metrics)
            run_files = Path(lg.experiment.dir).parent
            if run_files.name.startswith("offline-run"):
                log.info("W&B run saved offline; upload it with: wandb sync %s", run_files)
    if "eval/w2" in metrics:  # the headline: the mean over several draws, with its spread
        w2 = (f"W2 {metrics['eval/w2']:.4f} ± {metrics['eval/w2_spread']:.4f} (floor {metrics['eval/w2_floor']:.4f} "
              f"± {metrics['eval/w2_floor_spread']:.4f}, ratio {metrics['eval/w2_ratio']:.2f})")
    else:
        w2 = f"val/w2 {metrics['val/w2']:.4f} (floor {metrics['val/w2_floor']:.4f}, ratio {metrics['val/w2_ratio']:.2f})"
    log.info("%s, val/energy %.4f, %d steps in %.1f s; run dir %s",
             w2, metrics["val/energy"], metrics["steps"], metrics["wall_s"], out_dir)


def _finish_wandb() -> None:
    """Close the W&B run, so every multirun job gets its own (even after an error), and have
    its files complete on disk when train() returns. wandb.finish() only tells W&B's service
    process that the run is over; the service writes the run's .wandb file out when it gets
    round to it (measured: a read right after finish() found only the file header in 3 of 24
    runs). wandb.teardown() waits for the service to close; a single run's exit closes it
    anyway, and the next run in the process starts a new one (~0.2 s)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
        wandb.teardown()


# -- the Hydra task: user mistakes and numerical faults as one-line errors ----------------
def quiet_libraries() -> None:
    """Keep the console to what helps: no device report or advertising tip from Lightning
    (its INFO lines), no deprecation notice that Lightning's own code triggers in torch."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # The data module restores its position in the data order itself (`rounds_served` in its
    # state_dict, tested): Lightning's warning that a mid-epoch resume is unreliable is wrong here.
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
    # Lightning writes step metrics every log_every_n_steps optimizer steps counted across
    # epochs, and an epoch here is whatever the sampler serves (39 rounds in the default
    # run): its warning that an epoch is shorter than the interval does not apply.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")


def task(cfg: DictConfig) -> float:
    quiet_libraries()
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    sweeping = bool(hydra_cfg) and hydra_cfg.mode == RunMode.MULTIRUN
    try:
        return run(cfg)
    except SIGTERMException:
        if not sweeping:  # saved and said so (checkpoints.SaveOnInterrupt, preemption.stops_on_sigterm)
            if preemption.stopped_by == "SIGINT":
                sys.exit(130)  # Ctrl-C under DDP, or after training: a shell's code for it
            raise
        # In a sweep: an `interrupted` row, and the sweep stops here (launch.sweep_summary).
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        reason = f"stopped by SIGTERM; resume with ckpt_path={last}" if last.exists() \
            else "stopped by SIGTERM before any checkpoint"
        _record(Path(cfg.paths.output_dir), "interrupted.txt", reason)
        raise Interrupted(reason) from None
    except Exception as e:
        full = os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(hydra_cfg and hydra_cfg.verbose)
        mistake = isinstance(e, OTGenError)  # a user mistake or a numerical fault: one line
        _record(Path(cfg.paths.output_dir), "failed.txt", f"{type(e).__name__}: {e}")
        if not sweeping:
            if full or not mistake:
                raise  # a bug, or HYDRA_FULL_ERROR=1: the traceback, printed by Hydra
            log.error("%s: %s", type(e).__name__, e)
            sys.exit(2 if isinstance(e, ConfigError) else 1)
        # In a sweep, one failed job (a bad value, a divergence, a crash) is a `failed` row
        # of the summary with its reason (a crash's traceback in the job's log); the other
        # jobs run, and the sweeper sees inf.
        (log.error if mistake and not full else log.exception)("%s: %s", type(e).__name__, e)
        return float("inf")


def _record(out_dir: Path, name: str, reason: str) -> None:
    """The first line of `reason` as `out_dir/name`: a sweep summary's `error` column."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_text(reason.splitlines()[0] + "\n")
    except OSError:
        log.warning("could not write %s", out_dir / name)
