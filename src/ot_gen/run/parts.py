"""The parts a run config may build, slot by slot: the one list of which classes each
config group's `_target_` may name.

A *slot* is a place in the config where a `_target_` stands: the root of a group
(`prior`, `matcher`, `trainer`, each entry of `callbacks` and `logger`), or one of the
two nested places the installed conf/ uses (`trainer.plugins.<i>`,
`callbacks.<name>.train_time_interval`). Each slot builds one kind of part (a `Prior`, a
Lightning `Callback`, ...), and the classes registered for it are those of that kind that
the project's own modules and the libraries' public namespaces listed here export (and
factory functions annotated to return one: `ot_gen.run.loggers.wandb_logger`).

A checkpoint's run record names its parts by strings; `registered(slot)` is a dictionary
from the exact names under which those classes are exported to the class objects, built
from the modules imported here. A stored string is looked up in it and nothing else:
it is never imported, and never resolved by walking attributes through modules (where
`ot_gen.run.checkpoints.shutil.copyfile` would be `shutil.copyfile`).
`tests/run/test_parts.py` checks that every `_target_` of the installed conf/ is
registered for its slot, so the list cannot drift from conf/.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Slot:
    """Where a `_target_` may stand, the kind of part built there, the modules whose
    exports of that kind are registered for it, and whether `_partial_: true` may stand
    beside the `_target_` (an optimizer or a schedule is built later, given its arguments)."""

    pattern: str
    kind: str  # "module:qualname" of the base class
    namespaces: tuple[str, ...]
    partial: bool = False
    excludes: tuple[str, ...] = ()  # kinds of other slots' parts that are of this kind too (a matcher is a Module)


SLOTS = (
    Slot("mode", "ot_gen.model.modes:Mode", ("ot_gen.model.modes", "ot_gen.flow")),
    Slot("prior", "ot_gen.model.priors:Prior", ("ot_gen.model.priors",)),
    Slot("network", "torch.nn:Module", ("ot_gen.model.networks", "ot_gen.flow"), excludes=("ot_gen.matching.base:Matcher",)),
    Slot("cost", "ot_gen.matching.costs:Cost", ("ot_gen.matching.costs",)),
    Slot("match_cost", "ot_gen.matching.costs:Cost", ("ot_gen.matching.costs",)),
    Slot("matcher", "ot_gen.matching.base:Matcher", ("ot_gen.matching", "ot_gen.flow")),
    Slot("data", "lightning.pytorch:LightningDataModule", ("ot_gen.data",)),
    Slot("optimizer", "torch.optim:Optimizer", ("torch.optim",), partial=True),
    Slot("scheduler", "torch.optim.lr_scheduler:LRScheduler", ("torch.optim.lr_scheduler",), partial=True),
    Slot("ema", "lightning.pytorch:Callback", ("ot_gen.model.ema",)),
    Slot("trainer", "lightning.pytorch:Trainer", ("lightning.pytorch",)),
    Slot("trainer.plugins.*", "lightning.fabric.plugins.io.checkpoint_io:CheckpointIO", ("ot_gen.run.checkpoints",)),
    Slot("callbacks.*", "lightning.pytorch:Callback",
         ("ot_gen.run.checkpoints", "ot_gen.model.ema", "ot_gen.evaluation.pictures", "ot_gen.evaluation.frechet",
          "ot_gen.evaluation.memorization", "ot_gen.latent.pictures", "lightning.pytorch.callbacks")),
    Slot("callbacks.*.train_time_interval", "datetime:timedelta", ("datetime",)),
    Slot("autoencoder", "ot_gen.run.autoencoder_stage:Stage", ("ot_gen.run.autoencoder_stage",)),
    Slot("autoencoder.network", "torch.nn:Module", ("ot_gen.latent",), partial=True),
    Slot("autoencoder.loss", "ot_gen.matching.costs:Cost", ("ot_gen.matching.costs",)),
    Slot("logger.*", "lightning.pytorch.loggers:Logger", ("ot_gen.run.loggers", "lightning.pytorch.loggers")),
)

# The groups `build_module` builds: a checkpoint's own values of these make the module
# that `python -m ot_gen.sample` and the notebook load.
MODULE_GROUPS = ("mode", "prior", "network", "cost", "match_cost", "matcher", "optimizer", "scheduler")


def slot_of(key: str) -> Slot | None:
    """The slot whose pattern matches the dotted `key` (`callbacks.model_checkpoint`),
    None when no `_target_` may stand there."""
    for slot in SLOTS:
        if fnmatch.fnmatchcase(key, slot.pattern) and key.count(".") == slot.pattern.count("."):
            return slot
    return None


def kind(slot: Slot) -> type:
    return _class(slot.kind)


def _class(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@cache
def registered(pattern: str) -> dict[str, Any]:
    """Name -> class (or factory) of every part registered for the slot `pattern`: each
    under the name its namespace exports it by (`ot_gen.data.ToyDataModule`) and under
    its defining module's (`ot_gen.data.datamodule.ToyDataModule`)."""
    slot = next(s for s in SLOTS if s.pattern == pattern)
    base = kind(slot)
    excluded = tuple(_class(spec) for spec in slot.excludes)
    found: dict[str, Any] = {}
    for namespace in slot.namespaces:
        for attr, obj in vars(importlib.import_module(namespace)).items():
            if attr.startswith("_") or not _builds(obj, base) or (obj is base and base.__module__.startswith("ot_gen")):
                continue  # the project's base classes (Prior, Mode, ...) are no parts
            if excluded and isinstance(obj, type) and issubclass(obj, excluded):
                continue
            found[f"{namespace}.{attr}"] = obj
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


def _builds(obj: Any, base: type) -> bool:
    """Whether `obj` is a class of kind `base`, or a function annotated to return one."""
    if isinstance(obj, type):
        return issubclass(obj, base) and not inspect.isabstract(obj)
    if inspect.isfunction(obj):
        try:
            returns = typing.get_type_hints(obj).get("return")
        except Exception:
            return False
        return isinstance(returns, type) and issubclass(returns, base)
    return False


def names(pattern: str) -> list[str]:
    """The registered names of a slot, shortest spelling of each part (for messages)."""
    by_part: dict[int, str] = {}
    for name, obj in registered(pattern).items():
        if id(obj) not in by_part or len(name) < len(by_part[id(obj)]):
            by_part[id(obj)] = name
    return sorted(by_part.values())

