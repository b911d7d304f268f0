"""Every config value checked before any long work starts, each mistake one `ConfigError`
that names the key: the values' types against the targets' signatures, non-finite
numbers anywhere, the top-level keys, and a resumed checkpoint's config against this one."""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from typing import Any, Iterator

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from ot_gen.errors import ConfigError, check, check_positive_int
from ot_gen.run import parts

VAL_METRICS = ("val/w2", "val/w2_ratio", "val/energy", "val/sliced_w2")

# Keys a resumed run may change: how long it runs and how it reports, not what is trained.
# Everything else must equal the checkpoint's config (its weights, optimizer state, data
# order and matcher state were made with those values).
RESUME_MAY_CHANGE = (
    "trainer.", "logger", "callbacks", "ema", "paths.", "eval.", "hydra", "ckpt_path", "task_name", "overwrite",
    "autoencoder.ckpt", "autoencoder.cache",
    "matcher.storage",  # where the exact solve keeps its costs: the same optimum either way
    "optimized_metric", "val_samples", "mode.val_every_rounds", "scheduler.T_max",
    "data.root", "data.cache_dir", "data.download", "data.num_workers", "data.n_val", "data.on_bad_file",
)
# Keys added to the config after checkpoints were written: their value in those runs.
ADDED_SINCE = {"conditional": False, "data.outliers": 0.0, "prior.adapt_weights": False, "prior.adapt_sigma": False,
               "prior.respawn_below": 0.0, "prior.adapt_rate": 0.1, "prior.sigma_bounds.0": 0.1,
               "prior.sigma_bounds.1": 10.0}
RESUME_MUST_KEEP = ("trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "trainer.precision")


def instantiate_group(group: str, node: DictConfig, recursive: bool = True, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(node, **kwargs)`, where an unknown key, a value of the wrong
    type, or a value the target rejects becomes a `ConfigError` naming `group.key` (or the
    group, with the target's own message, when the target does not say which key).
    `recursive=False` (a checkpoint's parts): nothing below the group's root is built."""
    target = target_of(group, node)
    params = inspect.signature(target).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [p for p in params if p not in kwargs and p != "self"]
        for key in node:
            if not str(key).startswith("_") and key not in params:
                raise ConfigError(f"{group}.{key}", node[key], f"a key of {group}: {', '.join(allowed)}")
    check_types(group, target, node)
    try:
        return hydra.utils.instantiate(node, _recursive_=recursive, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause.under(group) from None
        if _is_value_complaint(cause):  # the library's own check of a value, e.g. Lightning's Trainer
            message = str(cause).strip().splitlines()[0]
            key = _named_key(node, message)
            if key is None:
                raise ConfigError(group, node._target_, message) from None
            raise ConfigError(f"{group}.{key}", node[key], message) from None
        raise


def target_of(group: str, node: DictConfig) -> Any:
    """The class that `group._target_` names, when it can be imported and builds the kind
    of part the group is for: anything else (a function, a string constant, another
    group's class) is a `ConfigError` naming the key, not an AttributeError deep in a run."""
    name = node._target_
    try:
        target = hydra.utils.get_object(name)
    except Exception as e:
        raise ConfigError(f"{group}._target_", name, f"an importable class ({str(e).splitlines()[0]})") from None
    slot = parts.slot_of(group)
    kind = None if slot is None else parts.kind(slot)
    builds = target if isinstance(target, type) else _returns(target)
    if kind is not None and not (isinstance(builds, type) and issubclass(builds, kind)):
        what = f"a {type(target).__name__}" if not isinstance(target, type) else f"the class {target.__qualname__}"
        raise ConfigError(f"{group}._target_", name, f"a subclass of {kind.__module__}.{kind.__qualname__} "
                                                     f"(it names {what}); the options are in conf/{group.split('.')[0]}/")
    return target


def _returns(factory: Any) -> Any:
    """The class a factory function says it returns (`def wandb_logger(...) -> WandbLogger`)."""
    if not inspect.isfunction(factory):
        return None
    try:
        return typing.get_type_hints(factory).get("return")
    except Exception:
        return None


def _is_value_complaint(e: BaseException | None) -> bool:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(e, (ValueError, TypeError, ImportError, MisconfigurationException))


def _named_key(node: DictConfig, message: str) -> str | None:
    """The key of `node` that a library's error message names first (Lightning writes
    "`max_steps` must be ...", "Precision '64x' is invalid")."""
    found = [(m.start(), str(k)) for k in node if not str(k).startswith("_")
             for m in [re.search(rf"\b{re.escape(str(k))}\b", message, re.IGNORECASE)] if m]
    return min(found)[1] if found else None


# -- types, from the target's annotations ----------------------------------------------------
_SIMPLE = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def check_types(group: str, target: Any, node: DictConfig) -> None:
    """A plain value (number, string, bool, null) given for a parameter annotated with
    types it cannot be: `trainer.max_steps=abc` or `=1.5` (an int), `optimizer.lr=abc`.
    Only for library classes (Lightning, torch): ot_gen's own classes check their values
    themselves, saying more than the type ("an integer >= 1")."""
    if str(getattr(target, "__module__", "")).split(".")[0] == "ot_gen":
        return
    hints = _hints(target)
    for key in node:
        if str(key).startswith("_") or key not in hints or OmegaConf.is_config(node[key]):
            continue
        members = _members(hints[key])
        if members is None:
            continue
        value = node[key]
        if not any(_accepts(m, value) for m in members):
            names = [_SIMPLE[m] for m in members if m in _SIMPLE]
            if names:
                raise ConfigError(f"{group}.{key}", value, " or ".join(dict.fromkeys(names)))


def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable forward references: no type check, the target still checks
        return {}


def _members(hint: Any) -> list[Any] | None:
    """The members of a Union/Optional (or the hint itself); None when any of them can
    hold anything (Any, an unparameterised object)."""
    if hint is typing.Any or hint is object:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        out = []
        for arg in typing.get_args(hint):
            inner = _members(arg)
            if inner is None:
                return None
            out += inner
        return out
    return [hint]


def _accepts(member: Any, value: Any) -> bool:
    import torch

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if member is float or member is torch.Tensor:  # a tensor parameter (torch's lr) given in a config is a number
        return number
    if member is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if member in _SIMPLE:
        return isinstance(value, member)
    return True  # a richer type (a Path, a list, an Accelerator...): the target checks it


# -- the whole config ---------------------------------------------------------------------------
def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every plain value of a resolved container."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


def check_all_types(cfg: DictConfig) -> None:
    """`check_types` for every group built from a `_target_`, before any is built: the
    trainer first, so `trainer.max_steps=abc` is named as such and not as the scheduler's
    T_max, which is interpolated from it."""
    groups = ["trainer", *(k for k in cfg if k != "trainer")]
    for group in groups:
        node = cfg.get(group)
        if OmegaConf.is_dict(node) and "_target_" in node:
            check_types(group, target_of(group, node), node)


LIBRARY_GROUPS = ("trainer", "optimizer", "scheduler")  # built by Lightning's or torch's classes


def check_finite_numbers(config: dict[str, Any], only: tuple[str, ...] = ()) -> None:
    """No key takes inf or nan (`optimizer.lr=inf` trains nothing): refused, naming the
    key; only under the groups `only`, when given. `build` checks the library groups
    first, and everything else once the data, mode and module are built, so that a
    part's own, more precise check ("a number > 0 (finite)") speaks first."""
    for key, value in leaves({k: v for k, v in config.items() if not only or k in only}):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, value, "a finite number")


MAX_STEPS = 10**9  # days of training at a million steps an hour; more is a typo


def check_missing(cfg: DictConfig) -> None:
    """A mandatory value left as `???` (data=image_folder without data.root), named."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "???", f"a value; this config needs {missing[0]}=... on the command line")


def check_top_level(cfg: DictConfig) -> None:
    """The keys of conf/train.yaml itself (no config group checks them), and the run's length."""
    steps = cfg.trainer.get("max_steps")
    if isinstance(steps, int) and not isinstance(steps, bool):
        check(steps <= MAX_STEPS, "trainer.max_steps", steps, f"at most {MAX_STEPS:,} (a longer run resumes "
              "from its checkpoint with a larger max_steps)")
    check(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and 0 <= cfg.seed < 2**32, "seed", cfg.seed,
          "an integer in [0, 2**32)")
    check(cfg.optimized_metric in VAL_METRICS, "optimized_metric", cfg.optimized_metric,
          f"one of {', '.join(VAL_METRICS)}")
    check_positive_int("val_samples", cfg.val_samples, minimum=2)
    for key, minimum in (("w2_draws", 0), ("n_heldout", 1), ("n_generated", 0), ("chunk", 1), ("w1_k", 0),
                         ("w1_reals", 0)):
        check_positive_int(f"eval.{key}", cfg.eval[key], minimum)
    check(isinstance(cfg.get("overwrite", False), bool), "overwrite", cfg.get("overwrite"), "true or false")
    check(isinstance(cfg.get("conditional", False), bool), "conditional", cfg.get("conditional"), "true or false")


def check_resume_config(saved: dict[str, Any], now: dict[str, Any], ckpt_path: str) -> None:
    """A checkpoint continues only the run it was written by: every key that decides what
    is trained (data, prior, network, matcher, cost, mode, optimizer, scheduler, seed)
    must equal the checkpoint's. Names every key that differs, with both values."""
    old, new = dict(leaves(_comparable(saved))), dict(leaves(_comparable(now)))
    # a checkpoint from before a key of this config existed ran as its default does
    old = {**{k: v for k, v in ADDED_SINCE.items() if k in new}, **old}
    differ = [k for k in sorted(old.keys() | new.keys()) if old.get(k, "<unset>") != new.get(k, "<unset>")
              and (k.startswith(RESUME_MUST_KEEP) or not k.startswith(RESUME_MAY_CHANGE))]
    if differ:
        shown = "; ".join(f"{k}: {old.get(k, '<unset>')!r} in the checkpoint, {new.get(k, '<unset>')!r} now"
                          for k in differ[:8])
        more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
        raise ConfigError(
            "ckpt_path", ckpt_path,
            f"a checkpoint of this config; it was written with different values of {shown}{more}. "
            "Resume with the checkpoint's values, or start a new run without ckpt_path",
        )


def differences(prefix: str, there: dict[str, Any], here: dict[str, Any], skip: tuple[str, ...] = (),
                most: int = 6) -> str:
    """The keys of two flat configs whose values differ, as `prefix.key: A there, B here; ...`
    (at most `most` of them, `skip`ped keys left out); "" when none differs."""
    differ = [k for k in sorted(there.keys() | here.keys()) if k not in skip and there.get(k) != here.get(k)]
    return "; ".join(f"{prefix}.{k}: {there.get(k, '<unset>')!r} there, {here.get(k, '<unset>')!r} here"
                     for k in differ[:most])


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "hydra"}
