"""What every checkpoint says about the run that wrote it: the resolved config, what the
generator needs to know of the data, the W&B run to continue, and the global random
streams. One callback writes it; `read` gives it back to a resume (`train.py`) or to
`python -m ot_gen.sample`, which rebuilds the module from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from ot_gen import rng
from ot_gen.run.checkpoints import CheckpointError

KEY = "ot_gen"


@dataclass(frozen=True)
class DataInfo:
    """What the parts of a run need to know of its data: the shape of one point, the size
    of the training set (per-real matcher state), the pixel range of images (None for
    other data) and, when it has labels, how many training points each class has (a
    class-conditional run's prior draws classes by these counts)."""

    shape: tuple[int, ...]
    n_train: int
    value_range: tuple[float, float] | None = None
    class_counts: tuple[int, ...] | None = None

    @classmethod
    def of(cls, data) -> "DataInfo":
        """From a data module that has been set up."""
        value_range = None if data.value_range is None else tuple(float(v) for v in data.value_range)
        labels = getattr(data, "train_labels", None)
        counts = None if labels is None or not bool((labels >= 0).any()) \
            else tuple(int(c) for c in torch.bincount(labels[labels >= 0]))  # -1: an outlier, no class
        return cls(tuple(data.data_shape), len(data.train_set), value_range, counts)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataInfo":
        value_range, counts = d.get("value_range"), d.get("class_counts")
        return cls(tuple(d["shape"]), int(d["n_train"]), None if value_range is None else tuple(value_range),
                   None if counts is None else tuple(int(c) for c in counts))


@dataclass(frozen=True)
class Record:
    config: dict[str, Any]
    data: DataInfo
    wandb_run_id: str | None


class RunRecord(L.Callback):
    """Writes the run's record into every checkpoint and, on resume, puts the global
    random streams back where they were (latents, shuffling, the random matcher), so a
    resumed run draws what the uninterrupted run would have drawn. `train.run` always
    adds it, whatever `callbacks=` says."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        wandb_ids = [lg.experiment.id for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        checkpoint[KEY] = {
            "config": self.config,
            "data": asdict(DataInfo.of(trainer.datamodule)),
            "wandb_run_id": wandb_ids[0] if wandb_ids else None,
            "rng_states": rng.global_state(),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(KEY, {}).get("rng_states")
        if states:
            rng.set_global_state(states)


# Where the package's modules lived before they were grouped into folders (2026-12): a
# run record written then names its parts by these paths.
MOVED_MODULES = {
    "ot_gen.module": "ot_gen.model.module", "ot_gen.modes": "ot_gen.model.modes",
    "ot_gen.priors": "ot_gen.model.priors", "ot_gen.networks": "ot_gen.model.networks",
    "ot_gen.ema": "ot_gen.model.ema", "ot_gen.costs": "ot_gen.matching.costs",
    "ot_gen.metrics": "ot_gen.evaluation.metrics", "ot_gen.frechet": "ot_gen.evaluation.frechet",
    "ot_gen.pictures": "ot_gen.evaluation.pictures", "ot_gen.checkpoints": "ot_gen.run.checkpoints",
    "ot_gen.loggers": "ot_gen.run.loggers", "ot_gen.run_dirs": "ot_gen.launch.run_dirs",
    "ot_gen.search_space": "ot_gen.launch.search_space", "ot_gen.sweep_summary": "ot_gen.launch.sweep_summary",
}


def current_target(target: str) -> str:
    """A `_target_` as the package names it now (a record may predate the folders)."""
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def _current_targets(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: current_target(v) if k == "_target_" and isinstance(v, str) else _current_targets(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_current_targets(v) for v in node]
    return node


# What a `_target_` read back from a checkpoint may name: the project's own parts and the
# library classes its conf/ builds. `python -m ot_gen.sample` builds the module from a run
# record, so any other callable (shutil.copyfile, ...) is refused before anything is built.
ALLOWED_TARGETS = ("ot_gen.", "torch.optim.", "lightning.pytorch.Trainer", "lightning.pytorch.callbacks.",
                   "lightning.pytorch.loggers.", "datetime.timedelta")


def _targets(node: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        found = [(f"{key}{k}", v) for k, v in node.items() if k == "_target_"]
        return found + [t for k, v in node.items() if k != "_target_" for t in _targets(v, f"{key}{k}.")]
    if isinstance(node, list):
        return [t for i, v in enumerate(node) for t in _targets(v, f"{key}{i}.")]
    return []


def read(checkpoint: dict[str, Any], path: str | Path) -> Record:
    """The record of a loaded checkpoint, its `_target_`s as the package names them now;
    an error naming the file when it has none, or naming the key of a `_target_` outside
    `ALLOWED_TARGETS`."""
    record = checkpoint.get(KEY)
    if not isinstance(record, dict) or "config" not in record or "data" not in record:
        raise CheckpointError(f"checkpoint {path} was not written by ot_gen training (no run record)")
    config = _current_targets(record["config"])
    for key, target in _targets(config):
        if not (isinstance(target, str) and target.startswith(ALLOWED_TARGETS)):
            raise CheckpointError(f"checkpoint {path}: its run record's {key}={target!r} is not one of ot_gen's "
                                  f"parts or the libraries it builds ({', '.join(ALLOWED_TARGETS)}); nothing was built")
    return Record(config, DataInfo.from_dict(record["data"]), record.get("wandb_run_id"))
