"""run(cfg): build everything from the composed config, fit, write metrics.json, return
the metric named by `optimized_metric` so Hydra sweepers can optimise it."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from ot_gen import checkpoints, run_record
from ot_gen.costs import Cost
from ot_gen.config_checks import (
    LIBRARY_GROUPS, check_all_types, check_finite_numbers, check_resume_config, check_top_level, instantiate_group,
)
from ot_gen.errors import ConfigError, OTGenError, check
from ot_gen.matching import Matcher
from ot_gen.metrics import unseen_sample_distances, w1_k_to_1
from ot_gen.modes import Mode
from ot_gen.module import OTGenerator
from ot_gen.pictures import unseen_sample_pictures
from ot_gen.preemption import Preemption, stops_on_sigterm
from ot_gen.progress import StepProgressBar

log = logging.getLogger(__name__)

# -- building objects from config groups, with errors that name the key ---------------------
def _instantiate_all(group: str, nodes: DictConfig | None, **kwargs_by_name: dict[str, Any]) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger)."""
    return [instantiate_group(f"{group}.{name}", node, **kwargs_by_name.get(name, {}))
            for name, node in (nodes or {}).items() if node is not None]  # name=null: left out


def _resumed_wandb_run(cfg: DictConfig, record: run_record.Record | None) -> dict[str, dict[str, Any]]:
    """When resuming from a checkpoint written by a W&B run, continue that run."""
    if record is None or not record.wandb_run_id or "wandb" not in (cfg.get("logger") or {}):
        return {}
    return {"wandb": {"id": record.wandb_run_id, "resume": "allow"}}


def build(cfg: DictConfig) -> tuple[OTGenerator, L.LightningDataModule, L.Trainer]:
    """Every object of a run, each value checked before any long work starts; the global
    random streams seeded from `seed` before any object draws from them."""
    check_top_level(cfg)
    check_all_types(cfg)
    check_finite_numbers(OmegaConf.to_container(cfg, resolve=True), only=LIBRARY_GROUPS)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    _check_sweep_direction(cfg)
    # `last` -> the newest last.ckpt of this task; a bad file fails now
    ckpt_path, ckpt = checkpoints.resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.output_dir).parent)
    record = None if ckpt is None else run_record.read(ckpt, ckpt_path)
    with open_dict(cfg):
        cfg.ckpt_path = ckpt_path
    if record is not None:
        check_resume_config(record.config, OmegaConf.to_container(cfg, resolve=True), ckpt_path)
    mode = instantiate_group("mode", cfg.mode)
    data = instantiate_group("data", cfg.data, batch_size=mode.reals_per_round)
    data.setup("fit")  # the data's shape and size decide the network's and the matcher's
    mode.check_data(len(data.train_set), cfg.data.get("name", cfg.data.get("source")))
    config = OmegaConf.to_container(cfg, resolve=True)
    module = build_module(cfg, mode, run_record.DataInfo.of(data))
    check_finite_numbers(config)  # what the parts built so far did not check (optimizer.lr=inf)
    callbacks = [run_record.RunRecord(config), ValidationClock(), Preemption(),
                 *_instantiate_all("callbacks", cfg.get("callbacks"))]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    loggers = _instantiate_all("logger", cfg.get("logger"), **_resumed_wandb_run(cfg, record))
    trainer = instantiate_group("trainer", cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(config)
    return module, data, trainer


class ValidationClock(L.Callback):
    """Seconds spent in validations (metrics, pictures, checkpoints) during `fit`, so
    metrics.json can tell training time from validation time."""

    def __init__(self):
        self.seconds, self._start = 0.0, 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.seconds += time.perf_counter() - self._start


def build_module(cfg: DictConfig, mode: Mode, data: run_record.DataInfo) -> OTGenerator:
    """The LightningModule of a run config, for data of that description: training builds
    it from the loaded data, `python -m ot_gen.sample` from a checkpoint's run record."""
    prior = instantiate_group("prior", cfg.prior)
    in_dim = cfg.network.get("in_dim", prior.dim)
    check(in_dim == prior.dim, "network.in_dim", in_dim, f"the prior's dimension (prior.dim={prior.dim})")
    generator = instantiate_group("network", cfg.network, out_shape=data.shape)
    cost, match_cost = _costs(cfg)
    matcher = _matcher(cfg, mode, data)
    optimizer = instantiate_group("optimizer", cfg.optimizer)
    try:
        optimizer(generator.parameters())  # torch checks lr, betas, ... here
    except (ValueError, TypeError) as e:
        raise ConfigError("optimizer", OmegaConf.to_container(cfg.optimizer), str(e)) from None
    scheduler = instantiate_group("scheduler", cfg.scheduler) if cfg.get("scheduler") else None
    return OTGenerator(prior, generator, matcher, cost, mode, optimizer, scheduler, match_cost=match_cost)


def _check_sweep_direction(cfg: DictConfig) -> None:
    """A sweeper that optimises (Optuna) must minimise: every val/* metric is a distance."""
    if not HydraConfig.initialized():
        return
    direction = HydraConfig.get().sweeper.get("direction")
    if direction is not None:
        directions = list(direction) if OmegaConf.is_list(direction) else [direction]
        check(all(str(d).lower() == "minimize" for d in directions), "hydra.sweeper.direction", direction,
              f"minimize: optimized_metric={cfg.optimized_metric} is a distance")


def _costs(cfg: DictConfig) -> tuple[Cost, Cost | None]:
    cost = instantiate_group("cost", cfg.cost)
    check(not cost.matches_only, "cost", cost.name,
          f"a regression cost; {cost.name} only matches: cost@match_cost={cost.name} with cost=ssim or sqeuclidean")
    match_cost = instantiate_group("match_cost", cfg.match_cost) if cfg.get("match_cost") else None
    return cost, match_cost


def _matcher(cfg: DictConfig, mode: Mode, data: run_record.DataInfo) -> Matcher:
    """The matcher, after it agreed to the mode and the strategy, given what it asks of
    the data (constructor arguments `data_shape`, `n_reals`)."""
    target = hydra.utils.get_object(cfg.matcher._target_)
    target.check_run(mode.name, distributed=str(cfg.trainer.get("strategy", "auto")).startswith("ddp"))
    known = {"data_shape": data.shape, "n_reals": data.n_train}
    params = inspect.signature(target).parameters
    return instantiate_group("matcher", cfg.matcher, **{k: v for k, v in known.items() if k in params})


# -- one run ----------------------------------------------------------------------------
def run(cfg: DictConfig) -> float:
    start = time.perf_counter()
    log.info("run dir %s", cfg.paths.output_dir)
    module, data, trainer = build(cfg)
    try:
        fit_start = time.perf_counter()
        trainer.fit(module, datamodule=data, ckpt_path=cfg.get("ckpt_path"))
        fit_s = time.perf_counter() - fit_start
        val_s = next(cb.seconds for cb in trainer.callbacks if isinstance(cb, ValidationClock))
        train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        with stops_on_sigterm(trainer, "the final evaluation", "checkpoints/last.ckpt holds the final state; "
                              "metrics.json is not written: run again with ckpt_path=<that file> to evaluate it"):
            checkpoints.save_last(trainer)  # ModelCheckpoint saves at validations: make last.ckpt the final state
            val_metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
            unseen = {**_unseen_sample_metrics(cfg.eval, module, data, trainer), **_w1_to_train(cfg.eval, module, data)}
        metrics = {
            **train_metrics,
            **val_metrics,
            **unseen,
            "steps": trainer.global_step,
            "rounds": int(module.rounds),
            "s_per_round": fit_s / max(int(module.rounds), 1),
            "val_s": val_s,  # of fit_s, in validations
            "train_s_per_step": (fit_s - val_s) / max(trainer.global_step, 1),
            "wall_s": time.perf_counter() - start,
        }
        if trainer.is_global_zero:
            _report(metrics, Path(cfg.paths.output_dir), trainer)
        return metrics[cfg.optimized_metric]
    finally:
        _finish_wandb()


def _unseen_sample_metrics(cfg: DictConfig, module: OTGenerator, data, trainer: L.Trainer) -> dict[str, float]:
    """How well generated points approximate held-out ones (pixel scale [0, 1] for images),
    with the histogram and closest-image pictures."""
    if not cfg.n_generated:
        return {}
    heldout = data.to_unit(data.val_set[: cfg.n_heldout].to(module.device))
    train = data.to_unit(data.train_set.to(module.device))
    sample = lambda n: data.to_unit(module.sample(n))  # noqa: E731
    figures, details = unseen_sample_distances(heldout, train, sample, cfg.n_generated, cfg.chunk)
    if trainer.is_global_zero:
        unseen_sample_pictures(trainer.loggers, Path(trainer.default_root_dir), heldout, details, trainer.global_step)
    return figures


def _w1_to_train(cfg: DictConfig, module: OTGenerator, data) -> dict[str, float]:
    """The OT-GAN paper's figure: W1 (exact OT, Euclidean cost, in the data's own scale)
    between `eval.w1_reals` training points and `eval.w1_k` times as many generated ones."""
    if not cfg.w1_k or not cfg.w1_reals:
        return {}
    reals = data.train_set[: cfg.w1_reals].to(module.device)
    start = time.perf_counter()
    w1 = w1_k_to_1(module.sample(cfg.w1_k * len(reals)), reals)
    log.info("eval/w1_train %.4f (%d training points, %d× as many generated; %.1f s)",
             w1, len(reals), cfg.w1_k, time.perf_counter() - start)
    return {"eval/w1_train": w1}


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
    log.info(
        "val/w2 %.4f (floor %.4f, ratio %.2f), val/energy %.4f, %d steps in %.1f s; run dir %s",
        metrics["val/w2"], metrics["val/w2_floor"], metrics["val/w2_ratio"], metrics["val/energy"],
        metrics["steps"], metrics["wall_s"], out_dir,
    )


def _finish_wandb() -> None:
    """Close the W&B run, so every multirun job gets its own (even after an error)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


# -- the Hydra task: user mistakes and numerical faults as one-line errors ----------------
def quiet_libraries() -> None:
    """Keep the console to what helps: no device report or advertising tip from Lightning
    (its INFO lines), no deprecation notice that Lightning's own code triggers in torch."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # The data module restores its position in the data order itself (`rounds_served` in its
    # state_dict, tested): Lightning's warning that a mid-epoch resume is unreliable is wrong here.
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")


def task(cfg: DictConfig) -> float:
    quiet_libraries()
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    sweeping = bool(hydra_cfg) and hydra_cfg.mode == RunMode.MULTIRUN
    try:
        return run(cfg)
    except Exception as e:
        full = os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(hydra_cfg and hydra_cfg.verbose)
        mistake = isinstance(e, OTGenError)  # a user mistake or a numerical fault: one line
        if not sweeping:
            if full or not mistake:
                raise  # a bug, or HYDRA_FULL_ERROR=1: the traceback, printed by Hydra
            log.error("%s: %s", type(e).__name__, e)
            sys.exit(2 if isinstance(e, ConfigError) else 1)
        # In a sweep, one failed job (a bad value, a divergence, a crash) is a `failed` row
        # of the summary with its reason (a crash's traceback in the job's log); the other
        # jobs run, and the sweeper sees inf.
        (log.error if mistake and not full else log.exception)("%s: %s", type(e).__name__, e)
        _record_failure(Path(cfg.paths.output_dir), f"{type(e).__name__}: {e}")
        return float("inf")


def _record_failure(out_dir: Path, reason: str) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "failed.txt").write_text(reason.splitlines()[0] + "\n")
    except OSError:
        log.warning("could not write %s", out_dir / "failed.txt")
