"""A checkpoint's config is data at every depth (issue 33): run records edited as an
attacker would, with a `_target_` at a random depth naming any callable reachable by
walking attributes from the packages a run config names (`ot_gen.run.checkpoints.shutil
.copyfile` is `shutil.copyfile`), each with arguments that would do visible damage: none
is ever called, and each is refused in one line that names its key.

The fast tier draws a bounded number of examples from a fixed seed; the e2e tier draws
many more, and drives the resume path (`train.py ckpt_path=`) as well as sampling."""

from __future__ import annotations

import builtins
import importlib
import pkgutil
import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import ROOT
from ot_gen.run import parts
from ot_gen.run.checkpoints import CheckpointError
from ot_gen.run.build import resume_of
from ot_gen.run.sample import load_module, sample

FIXTURE = ROOT / "tests" / "fixtures" / "premove_2d.ckpt"
BASE = torch.load(FIXTURE, map_location="cpu", weights_only=True)

# The packages a run config names parts from (what the old prefix check allowed).
ROOTS = ("ot_gen", "torch.optim", "lightning.pytorch.callbacks", "lightning.pytorch.loggers")
# Callables that would end or stall the test process if a regression called them; the
# others (writers, removers, runners of commands) show a call by what they leave behind.
NOT_DRAWN = {"_exit", "abort", "kill", "killpg", "fork", "forkpty", "sleep", "exit", "pause", "wait", "waitpid",
             "wait3", "wait4", "waitid", "input", "breakpoint", "interact", "set_trace", "setsid", "setpgrp",
             "chdir", "fchdir", "chroot", "setuid", "setgid", "seteuid", "setegid", "nice", "sched_setaffinity",
             "register_at_fork", "set_num_threads", "set_num_interop_threads", "manual_seed", "seed",
             "set_default_dtype", "set_default_device", "set_default_tensor_type", "setrecursionlimit",
             "settrace", "setprofile", "addaudithook", "disable", "enable"}


def _modules_under(root: str) -> list[types.ModuleType]:
    package = importlib.import_module(root)
    found = [package]
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), f"{root}."):
        try:
            found.append(importlib.import_module(info.name))
        except Exception:
            continue
    return found


def reachable_callables() -> list[str]:
    """Dotted names `<module of ROOTS>.<module it imported>[.<module>].<callable>`: every
    callable an attribute walk reaches from the roots, through one or two modules that
    a module of the roots has imported (`ot_gen.run.checkpoints.os.path.exists`), plus
    the roots' own non-class callables. Sorted, so a fixed seed draws the same ones."""
    names: set[str] = set()
    for root in ROOTS:
        for module in _modules_under(root):
            for attr, value in vars(module).items():
                if isinstance(value, types.ModuleType):
                    for name, f in vars(value).items():
                        if callable(f) and not name.startswith("__") and name not in NOT_DRAWN:
                            names.add(f"{module.__name__}.{attr}.{name}")
                        elif isinstance(f, types.ModuleType) and name in ("path", "Path"):
                            names.update(f"{module.__name__}.{attr}.{name}.{g}" for g, h in vars(f).items()
                                         if callable(h) and not g.startswith("__") and g not in NOT_DRAWN)
                elif (callable(value) and not isinstance(value, type) and not attr.startswith("__")
                      and attr not in NOT_DRAWN):
                    names.add(f"{module.__name__}.{attr}")
    # and the ones an attacker would try first, however they are reached
    names.update(("builtins.exec", "builtins.eval", "builtins.open", "os.system", "subprocess.run",
                  "shutil.copyfile", "shutil.rmtree", "torch.save", "pathlib.Path.write_text", "os.remove"))
    registered = {n for slot in parts.SLOTS for n in parts.registered(slot.pattern)}
    return sorted(names - registered)  # a registered part is no attack (ot_gen.data.datamodule.ToyDataModule)


CALLABLES = reachable_callables()


def payloads(victim: Path, sentinel: Path) -> list[dict]:
    """Arguments that make the usual callables leave a trace: the victim truncated,
    replaced or removed, or the sentinel file created."""
    return [
        {"src": "/dev/null", "dst": str(victim)},                        # shutil.copyfile, copy, move
        {"_args_": [str(victim), "w"]},                                  # open, Path.open, os.remove(victim)
        {"_args_": [f"touch {sentinel}"], "shell": True},                # os.system, subprocess.*
        {"_args_": [f"open({str(sentinel)!r}, 'w').close()"]},           # exec, eval
        {"_args_": [{"x": 1}, str(sentinel)]},                           # torch.save(obj, f)
        {"_args_": [str(sentinel)], "exist_ok": True},                   # os.makedirs, Path.mkdir
        {"path": str(victim), "data": "owned"},                          # Path.write_text-alikes
        {"_args_": [str(victim)], "_partial_": False, "_recursive_": True, "_convert_": "all"},
    ]


# Where a payload goes: under one of the record's groups (or the record's root), at a
# depth of 0 (it replaces the group's own `_target_`) to 3 (inside new mappings, or a list).
GROUPS = ["prior", "network", "matcher", "cost", "mode", "optimizer", "scheduler", "data", "trainer",
          "trainer.plugins.0", "callbacks.model_checkpoint", "callbacks.periodic_checkpoint.train_time_interval",
          "callbacks.ema", "eval", "paths", "", "logger"]


@st.composite
def attacks(draw):
    return (draw(st.sampled_from(CALLABLES)), draw(st.sampled_from(GROUPS)), draw(st.integers(0, 3)),
            draw(st.booleans()), draw(st.integers(0, 7)))


def _node_at(config: dict, dotted: str) -> dict:
    node = config
    for part in filter(None, dotted.split(".")):
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    return node


def forge(tmp_path: Path, attack, victim: Path, sentinel: Path) -> tuple[Path, str]:
    """A copy of the fixture with the attack put in; returns its file and the key of the
    `_target_` planted."""
    name, group, depth, in_list, payload = attack
    ckpt = {**BASE, "ot_gen": {**BASE["ot_gen"]}}
    config = ckpt["ot_gen"]["config"] = _deep_copy(BASE["ot_gen"]["config"])
    node, key = _node_at(config, group), group
    planted = {"_target_": name, **payloads(victim, sentinel)[payload]}
    if depth == 0 and group:
        node.update(planted)
    else:
        for level in range(max(depth, 1) - 1):
            node = node.setdefault(f"level{level}", {})
            key = f"{key}.level{level}" if key else f"level{level}"
        field = "std" if depth else "extra"
        if in_list:
            node[field] = [1.0, planted]
            key = f"{key}.{field}.1" if key else f"{field}.1"
        else:
            node[field] = planted
            key = f"{key}.{field}" if key else field
    path = tmp_path / "forged.ckpt"
    torch.save(ckpt, path)
    return path, key


def _deep_copy(node):
    if isinstance(node, dict):
        return {k: _deep_copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_deep_copy(v) for v in node]
    return node


def check_refused(tmp_path: Path, attack, drive: str, capsys) -> None:
    victim, sentinel = tmp_path / "thesis.tex", tmp_path / "owned"
    victim.write_text("years of work")
    sentinel.unlink(missing_ok=True)
    path, key = forge(tmp_path, attack, victim, sentinel)
    if drive == "sample":
        code = sample(OmegaConf.create({"ckpt_path": str(path), "n": 4, "out": str(tmp_path / "s.npy"), "png": None,
                                        "batch": 4, "device": "cpu", "seed": 0}))
        err = capsys.readouterr().err
        assert code == 1, (attack, err)
        assert err.count("\n") == 1 and err.startswith("CheckpointError: "), (attack, err)
    else:
        with pytest.raises(CheckpointError) as caught:
            resume_of(str(path), tmp_path) if drive == "resume" else load_module(path)
        err = str(caught.value)
        assert "\n" not in err
    assert f"run record's {key}." in err or f"run record's {key}=" in err, (attack, key, err)
    assert "nothing was built" in err
    assert not sentinel.exists(), f"{attack[0]} was called: it created {sentinel}"
    assert victim.exists() and victim.read_text() == "years of work", f"{attack[0]} was called: the victim changed"
    assert not (tmp_path / "s.npy").exists()


def test_the_callables_drawn_include_the_ones_that_got_through(tmp_path):
    """The ones issue 33 found (and what the old prefix check let through) are drawn."""
    for name in ("ot_gen.run.checkpoints.shutil.copyfile", "torch.optim.optimizer.torch.save",
                 "ot_gen.run.checkpoints.os.system", "ot_gen.run.checkpoints.shutil.rmtree"):
        assert name in CALLABLES
    assert len(CALLABLES) > 1000
    assert builtins.exec is importlib.import_module("builtins").exec


@seed(33)
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attack=attacks())
def test_no_string_in_a_sampled_checkpoint_chooses_code(tmp_path, capsys, attack):
    check_refused(tmp_path, attack, "sample", capsys)


@seed(34)
@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attack=attacks())
def test_no_string_in_a_resumed_or_notebook_checkpoint_chooses_code(tmp_path, capsys, attack):
    check_refused(tmp_path, attack, "resume", capsys)
    check_refused(tmp_path, attack, "notebook", capsys)


@pytest.mark.e2e
@pytest.mark.timeout(900)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attack=attacks(), drive=st.sampled_from(["sample", "resume", "notebook"]))
def test_no_string_in_any_checkpoint_chooses_code_long(tmp_path, capsys, attack, drive):
    check_refused(tmp_path, attack, drive, capsys)
