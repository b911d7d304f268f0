"""What every checkpoint says about the run that wrote it: the resolved config, what the
generator needs to know of the data, the W&B run to continue, and the global random
streams. One callback writes it; `read` gives it back to a resume (`train.py`) or to
`python -m ot_gen.sample`, which rebuilds the module from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from ot_gen import rng
from ot_gen.run import parts
from ot_gen.run.checkpoints import CheckpointError

KEY = "ot_gen"


@dataclass(frozen=True)
class DataInfo:
    """What the parts of a run need to know of its data: the shape of one point, the size
    of the training set (per-real matcher state), the pixel range of images (None for
    other data) and, when it has labels, how many training points each class has (a
    class-conditional run's prior draws classes by these counts). A code-space run's
    points are codes: `decoded_shape` is the shape of the images they decode to, and
    `value_range` those images' range (None for any other run)."""

    shape: tuple[int, ...]
    n_train: int
    value_range: tuple[float, float] | None = None
    class_counts: tuple[int, ...] | None = None
    decoded_shape: tuple[int, ...] | None = None

    @classmethod
    def of(cls, data) -> "DataInfo":
        """From a data module that has been set up."""
        shown = data.eval_data  # the images of a code-space run, else the data itself
        value_range = None if shown.value_range is None else tuple(float(v) for v in shown.value_range)
        labels = getattr(data, "train_labels", None)
        counts = None if labels is None or not bool((labels >= 0).any()) \
            else tuple(int(c) for c in torch.bincount(labels[labels >= 0]))  # -1: an outlier, no class
        decoded = None if shown is data else tuple(shown.data_shape)
        return cls(tuple(data.data_shape), len(data.train_set), value_range, counts, decoded)

    def difference(self, other: "DataInfo") -> tuple[str, Any, Any] | None:
        """The first of shape, n_train, value_range, decoded_shape in which two data
        descriptions differ, with both values; None when they describe the same data
        (what a checkpoint's weights and matcher state are shaped by)."""
        for what in ("shape", "n_train", "value_range", "decoded_shape"):
            if getattr(self, what) != getattr(other, what):
                return what, getattr(self, what), getattr(other, what)
        return None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample as written and shown: the decoded image's, or the point's."""
        return self.decoded_shape or self.shape

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataInfo":
        """From a run record; a value no data set has (a negative size, a shape of 0 or 5
        dimensions, a range that is not two finite numbers low < high) is a ValueError."""
        value_range, counts = d.get("value_range"), d.get("class_counts")
        shape, n_train = tuple(d["shape"]), d["n_train"]
        if not (1 <= len(shape) <= 3 and all(_count(s, 1) for s in shape) and _count(n_train, 1)):
            raise ValueError(f"shape {list(shape)}, n_train {n_train!r}: 1-3 positive sizes and a positive count")
        decoded = d.get("decoded_shape")
        if decoded is not None:
            decoded = tuple(decoded)
            if not (len(decoded) == 3 and all(_count(s, 1) for s in decoded) and value_range is not None):
                raise ValueError(f"decoded_shape {list(decoded)}: an image shape (C, H, W) with a value_range")
        if value_range is not None:
            value_range = tuple(value_range)
            if not (len(value_range) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                  for v in value_range) and value_range[0] < value_range[1]):
                raise ValueError(f"value_range {list(value_range)}: two finite numbers, low < high")
        if counts is not None and not (len(counts) >= 1 and all(_count(c, 0) for c in counts)):
            raise ValueError(f"class_counts {counts!r}: counts >= 0")
        return cls(shape, int(n_train), value_range, None if counts is None else tuple(int(c) for c in counts), decoded)


def _count(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


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


# Keys that make Hydra call or build something other than the slot's own class.
_META = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
_DATA = (str, int, float, bool, type(None))


def _refuse(path: str | Path, key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: its run record's {key}={value!r} is not allowed: {why}; "
                           "nothing was built (a checkpoint's config is data)")


MAX_DEPTH = 16  # the installed conf/ nests 4 deep; a record nested deeper is no run's


def data_only(node: Any, key: str, path: str | Path, depth: int = 0) -> Any:
    """`node` as plain data (numbers, strings, booleans, null, lists and mappings) with
    every `_target_` where a part may stand checked against `parts.registered`: a
    `_target_` elsewhere, `_args_`/`_recursive_`/`_convert_` anywhere, `_partial_` where
    the slot builds no partial, an interpolation (`${...}`) or any other object is
    refused, naming its key. Old module paths (`MOVED_MODULES`) read as today's."""
    if depth > MAX_DEPTH and isinstance(node, (dict, list, tuple)):
        raise _refuse(path, key, type(node).__name__, f"a value nested at most {MAX_DEPTH} levels deep")
    if isinstance(node, dict):
        out = {}
        slot = parts.slot_of(key) if key else None
        for k, v in node.items():
            sub = f"{key}.{k}" if key else str(k)
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise _refuse(path, key or "<root>", k, "a mapping key that is not a string")
            if k in _META:
                out[k] = _meta(slot, key, str(k), v, path)
            else:
                out[k] = data_only(v, sub, path, depth + 1)
        return out
    if isinstance(node, (list, tuple)):
        return [data_only(v, f"{key}.{i}", path, depth + 1) for i, v in enumerate(node)]
    if not isinstance(node, _DATA):
        raise _refuse(path, key, type(node).__name__, "numbers, strings, booleans, null, lists and mappings only")
    if isinstance(node, str) and "${" in node:
        raise _refuse(path, key, node, "a plain string; an interpolation is resolved when read (configs are saved "
                                       "resolved)")
    return node


def _meta(slot: parts.Slot | None, key: str, name: str, value: Any, path: str | Path) -> Any:
    where = f"{key}.{name}" if key else name
    if name == "_target_":
        if slot is None:
            raise _refuse(path, where, value, "a _target_ stands only at the root of a part (prior, network, "
                                              "matcher, ...); below it everything is plain data")
        target = current_target(value) if isinstance(value, str) else value
        if target not in parts.registered(slot.pattern):
            raise _refuse(path, where, value, f"one of the classes registered for {slot.pattern} "
                                              f"({_shown(parts.names(slot.pattern))})")
        return target
    if name == "_partial_" and slot is not None and slot.partial and value is True:
        return value
    raise _refuse(path, where, value, f"{name} is not part of a saved run config"
                                      + (f" at {key or 'the root'}" if name == "_partial_" else ""))


def _shown(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def read(checkpoint: dict[str, Any], path: str | Path) -> Record:
    """The record of a loaded checkpoint, its config checked to be data (`data_only`)
    before anything reads it: an error naming the file when it has no record, or naming
    the key of anything in it that could choose code."""
    record = checkpoint.get(KEY)
    if not isinstance(record, dict) or "config" not in record or "data" not in record:
        raise CheckpointError(f"checkpoint {path} was not written by ot_gen training (no run record)")
    if not isinstance(record["config"], dict):
        raise _refuse(path, "config", type(record["config"]).__name__, "a mapping")
    config = data_only(record["config"], "", path)
    try:
        data = DataInfo.from_dict(data_only(record["data"], "data", path))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: its run record's data description is damaged ({e!r})") from None
    wandb_id = record.get("wandb_run_id")
    if wandb_id is not None and not isinstance(wandb_id, str):
        raise _refuse(path, "wandb_run_id", wandb_id, "a string")
    return Record(config, data, wandb_id)
