"""From a composed config to the objects of a run: every value checked before any long
work starts, a resume resolved once, the module built the same way for training and for
`python -m ot_gen.sample`."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ot_gen.errors import ConfigError, check
from ot_gen.latent.codes import CodeDataModule
from ot_gen.run.autoencoder_stage import build_network, config_identity
from ot_gen.memory import check_fits
from ot_gen.matching import Matcher
from ot_gen.matching.costs import Cost
from ot_gen.model.modes import Mode
from ot_gen.model.module import OTGenerator
from ot_gen.model.priors import ClassConditionalPrior, Prior
from ot_gen.run import checkpoints, run_record
from ot_gen.run.config_checks import (
    LIBRARY_GROUPS, check_all_types, check_finite_numbers, check_missing, check_resume_config, check_top_level,
    differences, instantiate_group, target_of,
)
from ot_gen.run.preemption import Preemption
from ot_gen.run.progress import StepProgressBar, ValidationClock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """A run's checkpoint to continue from, read once: its path, its contents, its record."""

    path: Path
    checkpoint: dict[str, Any]
    record: run_record.Record


class Run(NamedTuple):
    module: OTGenerator
    data: L.LightningDataModule
    trainer: L.Trainer
    resume: Resume | None


def resume_of(ckpt_path: str | None, runs_dir: Path) -> Resume | None:
    """`ckpt_path` (a file or `last`) resolved and read: a missing or damaged file, or one
    that ot_gen did not write, fails here, before the data is loaded."""
    path = checkpoints.resolve_ckpt_path(ckpt_path, runs_dir)
    if path is None:
        return None
    if ckpt_path == "last":
        log.info("ckpt_path=last: resuming from %s", path)
    checkpoint = checkpoints.load(path)
    record = run_record.read(checkpoint, path)
    checkpoints.check_callback_files(checkpoint, path)
    return Resume(path, checkpoint, record)


def build(cfg: DictConfig) -> Run:
    """Every object of a run, each value checked before any long work starts; the global
    random streams seeded from `seed` before any object draws from them."""
    check_missing(cfg)
    check_top_level(cfg)
    check_all_types(cfg)
    check_finite_numbers(OmegaConf.to_container(cfg, resolve=True), only=LIBRARY_GROUPS)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    _check_sweep_direction(cfg)
    resume = resume_of(cfg.get("ckpt_path"), Path(cfg.paths.output_dir).parent)
    if resume is not None:
        check_resume_config(resume.record.config, OmegaConf.to_container(cfg, resolve=True), str(resume.path))
    mode = instantiate_group("mode", cfg.mode)
    data = instantiate_group("data", cfg.data, batch_size=mode.reals_per_round)
    data.setup("fit")  # the data's shape and size decide the network's and the matcher's
    data_name = cfg.data.get("name", cfg.data.get("source"))
    decoder = None
    if cfg.get("autoencoder") is not None:  # a code-space run: the generator's data are the images' codes
        data = _code_space(cfg, data, data_name, mode, resume)
        decoder = data.autoencoder.decoder
    if cfg.eval.n_generated and cfg.eval.n_heldout > len(data.val_set):
        log.warning("eval.n_heldout=%d is more than the %d held-out points of data=%s: the final evaluation "
                    "uses those %d", cfg.eval.n_heldout, len(data.val_set), data_name, len(data.val_set))
    config = OmegaConf.to_container(cfg, resolve=True)
    info = run_record.DataInfo.of(data)
    if resume is not None:
        _check_resumed_data(resume, info)
    module = build_module(cfg, mode, info, decoder=decoder)
    mode.check_data(len(data.train_set), data_name, data.train_set[0].numel(), module.matcher)
    _check_costs(module, mode, tuple(data.train_set[0].shape), data_name)
    check_finite_numbers(config)  # what the parts built so far did not check (optimizer.lr=inf)
    callbacks = [run_record.RunRecord(config), ValidationClock(), Preemption(),
                 *_instantiate_all("callbacks", cfg.get("callbacks"))]
    if cfg.get("ema") is not None:  # part of the result: on whatever `callbacks=` says
        callbacks.append(instantiate_group("ema", cfg.ema))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    loggers = _instantiate_all("logger", cfg.get("logger"), **_resumed_wandb_run(cfg, resume))
    trainer = instantiate_group("trainer", cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if resume is not None and isinstance(trainer.strategy.checkpoint_io, checkpoints.AtomicCheckpointIO):
        trainer.strategy.checkpoint_io.hand_over(resume.path, resume.checkpoint)
    for lg in loggers:
        lg.log_hyperparams(config)
    return Run(module, data, trainer, resume)


def _code_space(cfg: DictConfig, images: L.LightningDataModule, data_name: str, mode: Mode,
                resume: Resume | None) -> CodeDataModule:
    """The autoencoder stage (trained, reused from the cache or named), then the codes of
    the images, which the generator trains on."""
    check(images.train_set.dim() == 4, "autoencoder", target_of("autoencoder", cfg.autoencoder).__name__,
          f"null with data={data_name}: its points have shape {tuple(images.train_set.shape[1:])}, and an "
          "autoencoder stage encodes images (C, H, W)")
    stage = instantiate_group("autoencoder", cfg.autoencoder)
    autoencoder = stage.prepare(
        images, OmegaConf.to_container(cfg.data, resolve=True), OmegaConf.to_container(cfg.autoencoder, resolve=True),
        Path(cfg.paths.output_dir), None if resume is None else resume.path.parent.parent,
        accelerator=str(cfg.trainer.get("accelerator", "auto")))
    codes = CodeDataModule(images, autoencoder, batch_size=mode.reals_per_round,
                           num_workers=cfg.data.get("num_workers", 0))
    codes.setup("fit")
    return codes


def build_module(cfg: DictConfig, mode: Mode, data: run_record.DataInfo, recursive: bool = True,
                 decoder: torch.nn.Module | None = None) -> OTGenerator:
    """The LightningModule of a run config, for data of that description: training builds
    it from the loaded data, `python -m ot_gen.sample` from a checkpoint's run record
    (`recursive=False`: each part from its root `_target_` alone, nothing nested built).
    A code-space run's `decoder` is the trained autoencoder's; rebuilt from a checkpoint's
    record, it is an untrained one of the same network, which the state dict fills."""
    instantiate = functools.partial(instantiate_group, recursive=recursive)
    if decoder is None and cfg.get("autoencoder") is not None:
        decoder = build_network(cfg.autoencoder.network, data.decoded_shape, data.value_range, "the run record").decoder
    prior = instantiate("prior", cfg.prior)
    in_dim = cfg.network.get("in_dim", prior.dim)
    check(in_dim == prior.dim, "network.in_dim", in_dim, f"the prior's dimension (prior.dim={prior.dim})")
    if cfg.get("conditional", False):
        prior = _class_conditional(cfg, prior, data)
    classes = {}
    if isinstance(prior, ClassConditionalPrior) and getattr(target_of("network", cfg.network), "is_flow", False):
        classes = {"n_classes": prior.n_classes}  # a flow's class is an input of its velocity, not a start
    _check_network_fits(cfg, instantiate, data.shape, prior.dim, **classes)
    generator = instantiate("network", cfg.network, out_shape=data.shape, in_dim=prior.dim, **classes)
    mode.check_parts(prior, generator)
    cost, match_cost = _costs(cfg, instantiate)
    matcher = _matcher(cfg, mode, data, instantiate, recursive)
    optimizer = instantiate("optimizer", cfg.optimizer)
    try:
        optimizer(generator.parameters())  # torch checks lr, betas, ... here
    except (ValueError, TypeError) as e:
        raise ConfigError("optimizer", OmegaConf.to_container(cfg.optimizer), str(e)) from None
    scheduler = instantiate("scheduler", cfg.scheduler) if cfg.get("scheduler") else None
    eta_min, lr = cfg.get("scheduler", {}).get("eta_min"), cfg.optimizer.get("lr")
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (eta_min, lr)):
        check(eta_min <= lr, "scheduler.eta_min", eta_min,
              f"at most optimizer.lr={lr} (the cosine decays from the rate to eta_min; above it, it climbs)")
    return OTGenerator(prior, generator, matcher, cost, mode, optimizer, scheduler, match_cost=match_cost,
                       decoder=decoder)


def _check_resumed_data(resume: Resume, info: run_record.DataInfo) -> None:
    """The data a checkpoint was written for is the data it resumes on: its weights are
    shaped by it, and its matcher's state is indexed by training point."""
    differs = resume.record.data.difference(info)
    if differs:
        what, was, now = differs
        raise ConfigError("ckpt_path", str(resume.path),
                          f"a checkpoint of this data: it was written for data of {what} {was}, this data has {what} {now}")


def _check_network_fits(cfg: DictConfig, instantiate, shape: tuple[int, ...], in_dim: int, **more) -> None:
    """The generator built first on the meta device (no memory), its parameters counted:
    weights, gradients, Adam's two moments and the EMA copy must fit, before anything
    is allocated (`network.width=100000` is 40 GB a layer: a kernel kill when it was
    initialised; a checkpoint's record may say anything)."""
    with torch.device("meta"):
        probe = instantiate("network", cfg.network, out_shape=shape, in_dim=in_dim, **more)
    params = list(probe.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in params)
    key = "network.width" if "width" in cfg.network else "network"
    check_fits(key, cfg.network.get("width", cfg.network.get("_target_")), 5.0 * nbytes,
               f"a generator of {sum(p.numel() for p in params):,} parameters for points of shape {list(shape)} (weights, gradients, "
               "the optimizer's moments, the EMA)", "use a smaller network")


def _class_conditional(cfg: DictConfig, prior: Prior, data: run_record.DataInfo) -> ClassConditionalPrior:
    """`conditional=true`: the class code beside the prior's latent (the network takes
    prior.dim + classes inputs), classes drawn by the training set's counts."""
    check(data.class_counts is not None, "conditional", True,
          "false for data without class labels; a class-conditional run needs labelled data "
          "(data=mnist, fashion_mnist, cifar10, or image_folder with class subfolders)")
    matcher = target_of("matcher", cfg.matcher)
    check(matcher.targets is Matcher.targets, "conditional", True,
          f"false with matcher={matcher.name} (it matches against the whole training set, not per class)")
    return ClassConditionalPrior(prior, torch.tensor(data.class_counts, dtype=torch.float64))


def _instantiate_all(group: str, nodes: DictConfig | None, **kwargs_by_name: dict[str, Any]) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger)."""
    return [instantiate_group(f"{group}.{name}", node, **kwargs_by_name.get(name, {}))
            for name, node in (nodes or {}).items() if node is not None]  # name=null: left out


def _resumed_wandb_run(cfg: DictConfig, resume: Resume | None) -> dict[str, dict[str, Any]]:
    """When resuming from a checkpoint written by a W&B run, continue that run."""
    if resume is None or not resume.record.wandb_run_id or "wandb" not in (cfg.get("logger") or {}):
        return {}
    return {"wandb": {"id": resume.record.wandb_run_id, "resume": "allow"}}


def _check_sweep_direction(cfg: DictConfig) -> None:
    """A sweeper that optimises (Optuna) must minimise: every val/* metric is a distance."""
    if not HydraConfig.initialized():
        return
    direction = HydraConfig.get().sweeper.get("direction")
    if direction is not None:
        directions = list(direction) if OmegaConf.is_list(direction) else [direction]
        check(all(str(d).lower() == "minimize" for d in directions), "hydra.sweeper.direction", direction,
              f"minimize: optimized_metric={cfg.optimized_metric} is a distance")


def _costs(cfg: DictConfig, instantiate=instantiate_group) -> tuple[Cost, Cost | None]:
    cost = instantiate("cost", cfg.cost)
    check(not cost.matches_only, "cost", cost.name,
          f"a regression cost; {cost.name} only matches: cost@match_cost={cost.name} with cost=ssim or sqeuclidean")
    match_cost = instantiate("match_cost", cfg.match_cost) if cfg.get("match_cost") else None
    return cost, match_cost


def _check_costs(module: OTGenerator, mode: Mode, shape: tuple[int, ...], data_name: str) -> None:
    """Costs that cannot take the data's points are refused; a matching cost whose matrix
    would take minutes a round (SSIM on a whole training set) is said up front, with the fix."""
    module.cost.check_data("cost", shape, data_name)
    matching = module.match_cost
    key = "cost" if matching is module.cost else "match_cost"
    matching.check_data(key, shape, data_name)
    m, n, size = mode.generated_per_round(), mode.reals_per_round, math.prod(shape)
    work = m * n * matching.work_per_pair(shape)
    if work > _SLOW_MATCHING and work > 4 * m * n * size:
        log.warning("%s=%s matches %s × %s points a round: about %.0e multiply-adds, %.0f× the squared-Euclidean "
                    "matrix (minutes or more a round on a CPU); cost@match_cost=sqeuclidean matches in L2 and keeps "
                    "%s as the regression loss", key, matching.name, f"{m:,}", f"{n:,}", work, work / (m * n * size),
                    module.cost.name)


_SLOW_MATCHING = 1e11  # multiply-adds of one round's cost matrix: about a minute on 2 CPU cores


def _matcher(cfg: DictConfig, mode: Mode, data: run_record.DataInfo, instantiate=instantiate_group,
             recursive: bool = True) -> Matcher:
    """The matcher, after it agreed to the mode and the strategy, given what it asks of
    the data (constructor arguments `data_shape`, `n_reals`) and, for training (not for a
    checkpoint rebuilt to sample), a flow teacher (`teacher`)."""
    target = target_of("matcher", cfg.matcher)
    target.check_run(mode.name, distributed=str(cfg.trainer.get("strategy", "auto")).startswith("ddp"))
    params = inspect.signature(target).parameters
    known = {"data_shape": data.shape, "n_reals": data.n_train}
    if "teacher" in params and recursive:
        known["teacher"] = _teacher(cfg, data)
    return instantiate("matcher", cfg.matcher, **{k: v for k, v in known.items() if k in params})


def _teacher(cfg: DictConfig, data: run_record.DataInfo) -> torch.nn.Module:
    """The generator of `matcher.ckpt` (a flow), read as data, when it was trained on this
    run's data with this run's prior: its endpoints are the student's targets, latent by latent."""
    path = cfg.matcher.get("ckpt")
    check(isinstance(path, str) and Path(path).is_file(), "matcher.ckpt", path,
          "an existing checkpoint of a mode=flow run (its checkpoints/last.ckpt)")
    teacher, record = module_of_checkpoint(path)
    differs = record.data.difference(data)
    if differs:
        what, was, now = differs
        raise ConfigError("matcher.ckpt", path, f"a flow of this run's data: it was trained on data of {what} {was}, "
                                                f"this run's has {what} {now}")
    for node in ("data", "prior"):
        theirs = config_identity(record.config.get(node) or {})
        mine = config_identity(OmegaConf.to_container(cfg[node], resolve=True) if cfg.get(node) else {})
        shown = differences(node, theirs, mine)
        check(not shown, "matcher.ckpt", path, f"a flow of this run's {node} (the student's latents are the teacher's): "
              + shown)
    return teacher.generator


def module_of_checkpoint(path: str | Path, device: str = "cpu") -> tuple[OTGenerator, run_record.Record]:
    """(the trained module of a checkpoint in eval mode, its run record): rebuilt from the
    record (read as data) by `build_module`, each part from its registered class, and
    loaded whole. What `python -m ot_gen.sample`, the notebook and a flow teacher load."""
    ckpt = checkpoints.load(path)
    record = run_record.read(ckpt, path)
    cfg = OmegaConf.create(record.config)
    try:
        module = build_module(cfg, instantiate_group("mode", cfg.mode, recursive=False), record.data, recursive=False)
    except ConfigError as e:  # a value of the record, not of the user's command line
        raise checkpoints.CheckpointError(f"checkpoint {path}: its run record's {e}") from None
    module.load_state_dict(ckpt["state_dict"])
    return module.to(device).eval(), record
