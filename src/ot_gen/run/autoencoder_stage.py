"""The autoencoder stage of a code-space run: train an autoencoder on the training
images, or reuse one, before the generator trains on its codes (the networks, the
module and the codes' data module are `ot_gen.latent`'s).

Where the autoencoder comes from, first match wins:

1. `autoencoder.ckpt=PATH`: that checkpoint;
2. a resumed run (`ckpt_path=...`): the autoencoder in that run's folder;
3. the cache: `autoencoder.cache_dir/<key>/autoencoder.ckpt`, where the key is a hash of
   everything that decides the autoencoder (the data's identity: source, split, subset,
   seed, size, range; and the autoencoder's config: network, loss, regularisers, steps),
   so a sweep over the generator's settings trains it once;
4. otherwise it is trained, in the cache entry's folder (`cache=false`: in the run's),
   checkpointed there every `val_every` steps: a SIGTERM saves it, and the same command
   continues it from there.

Whatever the source, the autoencoder's checkpoint is copied into the run's
`autoencoder/` folder. An autoencoder checkpoint is data, like every checkpoint: its
record is read by `run_record.data_only`, its network rebuilt from a registered class,
and one of other data (source, size, channels, subset, range) or another code dimension
is refused, naming the difference.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from ot_gen import rng
from ot_gen.errors import ConfigError, check, check_positive_int
from ot_gen.latent.autoencoder import RECORD_KEY, AutoencoderModule, unit_mse
from ot_gen.latent.networks import ConvAutoencoder
from ot_gen.matching.costs import Cost
from ot_gen.run import checkpoints, run_record
from ot_gen.run.checkpoints import CheckpointError
from ot_gen.run.config_checks import differences, instantiate_group

log = logging.getLogger(__name__)

FILE = "autoencoder.ckpt"
# Data keys that say where the files are or how they are read, not which images are used.
NOT_IDENTITY = ("_target_", "root", "download", "cache_dir", "num_workers", "batch_size", "on_bad_file")
# Autoencoder keys that say where it is kept, not what is trained.
NOT_TRAINING = ("_target_", "ckpt", "cache", "cache_dir")


class Stage:
    """A stage in front of the generator (the `autoencoder` config group's kind of part):
    `prepare` returns, for the run's image data, the network whose codes the generator
    learns and whose decoder turns its samples into images."""

    def prepare(self, images, data_cfg: dict[str, Any], ae_cfg: dict[str, Any], run_dir: Path,
                resumed_run: Path | None = None, accelerator: str = "auto") -> ConvAutoencoder:
        raise NotImplementedError


class AutoencoderStage(Stage):
    """The `autoencoder` config group: the network (a partial: the data gives its image
    shape and range), the reconstruction `loss` (a cost), the code regularisers
    (`code_penalty` β on ½‖code‖², `code_noise` σ, decoder `weight_decay`), Adam's `lr`,
    `max_steps` of `batch_size` images, a held-out check every `val_every` steps, and
    where it is kept (`ckpt`, `cache`, `cache_dir`)."""

    def __init__(self, network: Callable[..., ConvAutoencoder], loss: Cost, code_penalty: float = 1e-3,
                 code_noise: float = 0.0, weight_decay: float = 0.0, lr: float = 1e-3, max_steps: int = 3000,
                 batch_size: int = 128, val_every: int = 500, ckpt: str | None = None, cache: bool = True,
                 cache_dir: str | None = None):
        self.network, self.loss = network, loss
        for key, value in (("code_penalty", code_penalty), ("code_noise", code_noise), ("weight_decay", weight_decay)):
            check(isinstance(value, (int, float)) and 0 <= value < float("inf"), key, value, "a number >= 0")
        check(isinstance(lr, (int, float)) and 0 < lr < float("inf"), "lr", lr, "a number > 0")
        self.code_penalty, self.code_noise, self.weight_decay, self.lr = code_penalty, code_noise, weight_decay, lr
        self.max_steps = check_positive_int("max_steps", max_steps)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.val_every = check_positive_int("val_every", val_every)
        self.ckpt = None if ckpt is None else Path(ckpt).expanduser()
        check(self.ckpt is None or self.ckpt.is_file(), "ckpt", ckpt, "an existing autoencoder checkpoint file, or null")
        check(isinstance(cache, bool), "cache", cache, "true or false")
        self.cache = cache
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "ot_gen" / "autoencoders").expanduser()

    # -- the autoencoder of a run ---------------------------------------------------------
    def prepare(self, images, data_cfg: dict[str, Any], ae_cfg: dict[str, Any], run_dir: Path,
                resumed_run: Path | None = None, accelerator: str = "auto") -> ConvAutoencoder:
        """The trained autoencoder of the run (no gradients), its checkpoint copied to
        `run_dir/autoencoder/`. `images`: the image data module, set up;
        `data_cfg`, `ae_cfg`: the resolved `data` and `autoencoder` configs."""
        identity = data_identity(data_cfg, images)
        training = {k: v for k, v in ae_cfg.items() if k not in NOT_TRAINING}
        key = hashlib.sha256(json.dumps([identity, training], sort_keys=True).encode()).hexdigest()[:16]
        own = run_dir / "autoencoder" / FILE
        key_named = "autoencoder"  # the config key a mismatch is said of
        if self.ckpt is not None:
            source, where, key_named = self.ckpt, "autoencoder.ckpt", "autoencoder.ckpt"
        elif resumed_run is not None and (resumed_run / "autoencoder" / FILE).is_file():
            source, where = resumed_run / "autoencoder" / FILE, "the resumed run's autoencoder"
        else:
            entry = self.cache_dir / key if self.cache else run_dir / "autoencoder"
            with _locked(entry):  # two jobs of a parallel sweep: one trains, the other waits and reuses
                if not (entry / FILE).is_file():
                    # Its own random streams (seeded by the data's seed): the generator's run
                    # draws the same whether the autoencoder was trained here or reused.
                    streams = rng.global_state()
                    try:
                        torch.manual_seed(images.seed)
                        self._train(images, entry, {"config": ae_cfg, "data": identity}, accelerator)
                    finally:
                        rng.set_global_state(streams)
                else:
                    log.info("autoencoder: reusing %s (cache key %s)", entry / FILE, key)
            source, where = entry / FILE, "the cached autoencoder"
        net = load(source, identity, training["network"], key_named, where)
        if source.resolve() != own.resolve():
            own.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, own)
        return net.requires_grad_(False)  # no dropout or batch norm: train and eval modes agree

    def _train(self, images, entry: Path, record: dict[str, Any], accelerator: str) -> None:
        net = self.network(image_shape=tuple(images.data_shape), value_range=images.value_range)
        module = AutoencoderModule(net, self.loss, self.code_penalty, self.code_noise, self.weight_decay, self.lr)
        module.record = record
        partial = entry / "partial"
        resume = partial / "last.ckpt"
        saver = ModelCheckpoint(dirpath=partial, save_top_k=0, save_last=True, every_n_train_steps=self.val_every,
                                enable_version_counter=False)
        io = checkpoints.AtomicCheckpointIO()
        trainer = L.Trainer(
            max_steps=self.max_steps, accelerator=accelerator, devices=1, logger=False, enable_model_summary=False,
            callbacks=[saver, checkpoints.SaveOnInterrupt()], plugins=[io],
            val_check_interval=self.val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
            enable_progress_bar=False, default_root_dir=str(entry),
        )
        if resume.is_file():
            stopped = checkpoints.load(resume)
            checkpoints.check_callback_files(stopped, resume)
            io.hand_over(resume, stopped)  # read once: fit takes it from here
            log.info("autoencoder: continuing the stopped training from %s", resume)
        gen = torch.Generator().manual_seed(images.seed)
        train = DataLoader(TensorDataset(images.train_set), batch_size=min(self.batch_size, len(images.train_set)),
                           shuffle=True, drop_last=True, generator=gen)
        held = DataLoader(TensorDataset(images.val_set[:1000]), batch_size=1000)
        start = time.perf_counter()
        log.info("autoencoder: training %d steps on %d images into %s", self.max_steps, len(images.train_set), entry)
        try:
            trainer.fit(module, train, held, ckpt_path=str(resume) if resume.is_file() else None)
        except SIGTERMException:
            log.warning("SIGTERM in the autoencoder stage at step %d: saved %s; the same command continues it",
                        trainer.global_step, resume)
            raise
        trainer.save_checkpoint(entry / FILE, weights_only=True)
        shutil.rmtree(partial, ignore_errors=True)
        with torch.no_grad():
            mse = unit_mse(net.eval()(images.val_set[:1000]), images.val_set[:1000], net.value_range)
        log.info("autoencoder: %d steps in %.0f s, held-out MSE per pixel %.5f; saved %s",
                 trainer.global_step, time.perf_counter() - start, mse, entry / FILE)


def config_identity(node: dict[str, Any]) -> dict[str, Any]:
    """A data (or prior) config less where its files are and how they are read: what
    decides the data a network was trained on."""
    return {k: v for k, v in node.items() if k not in NOT_IDENTITY}


def data_identity(data_cfg: dict[str, Any], images) -> dict[str, Any]:
    """Which images an autoencoder was trained on: the data config less where its files
    are, and the shape and range of the images as loaded."""
    identity = config_identity(data_cfg)
    identity["shape"] = list(images.data_shape)
    identity["value_range"] = [float(v) for v in images.value_range]
    return identity


def load(path: Path, identity: dict[str, Any], network: dict[str, Any], key: str, where: str) -> ConvAutoencoder:
    """The autoencoder of a checkpoint, read as data, when its record says it was trained
    on the data of `identity` with the `network` config; a difference is a ConfigError of
    `key`, naming it and `where` the autoencoder came from."""
    ckpt = checkpoints.load(path)
    record = ckpt.get(RECORD_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or \
            not isinstance(record.get("data"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not an ot_gen autoencoder checkpoint (no autoencoder record)")
    config = run_record.data_only(record["config"], "autoencoder", path)
    data = run_record.data_only(record["data"], "autoencoder_data", path)
    for what, stored, now in (("data", data, identity), ("autoencoder.network", config.get("network", {}), network)):
        shown = differences(what, stored, now, skip=("_target_",))
        check(not shown, key, str(path), f"an autoencoder of this run's {what} ({where} differs: {shown})")
    net = build_network(config.get("network"), data.get("shape"), data.get("value_range"), path)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if isinstance(k, str) and k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its own network "
                              f"({str(e).splitlines()[0]})") from None
    return net


def build_network(node: Any, shape: Any, value_range: Any, path: Path | str) -> ConvAutoencoder:
    """The autoencoder network of a stored `autoencoder.network` node (data-checked), for
    images of `shape` in `value_range`, untrained; a checkpoint's value that no network
    takes is the checkpoint's error."""
    try:
        factory = instantiate_group("autoencoder.network", OmegaConf.create(node), recursive=False)
        return factory(image_shape=tuple(shape), value_range=tuple(value_range))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: its autoencoder network cannot be built ({e})") from None


@contextlib.contextmanager
def _locked(entry: Path) -> Iterator[None]:
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
