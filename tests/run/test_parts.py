"""The registry of parts (`ot_gen.run.parts`) cannot drift from conf/: every option of
every group writes a run record that reads back as data, every `_target_` in it at a
registered slot and named as registered."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import CONF
from ot_gen.run import parts, run_record
from ot_gen.run.checkpoints import CheckpointError
from ot_gen.run.config_checks import leaves

GROUPS = ["prior", "network", "matcher", "cost", "mode", "data", "trainer", "logger", "callbacks", "scheduler",
          "experiment", "debug"]
OPTIONS = [f"{g}={p.stem}" for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
OPTIONS += [f"cost@match_cost={p.stem}" for p in sorted((CONF / "cost").glob("*.yaml"))]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_writes_a_record_that_reads_back_as_data(config, option):
    saved = OmegaConf.to_container(config(option, "data.root=/some/folder" if option.endswith("image_folder")
                                          else "seed=0"), resolve=True)
    targets = {k: v for k, v in leaves(saved) if k.endswith("._target_")}
    assert targets
    for key, name in targets.items():
        slot = parts.slot_of(key.removesuffix("._target_"))
        assert slot is not None, f"{option}: {key} is at no registered slot"
        assert name in parts.registered(slot.pattern), f"{option}: {key}={name} is not registered for {slot.pattern}"
    assert run_record.data_only(saved, "", "ckpt") == saved  # what a checkpoint of this config reads back as


def test_each_slot_registers_its_kind_only_and_no_base_class_of_the_project():
    for slot in parts.SLOTS:
        found = parts.registered(slot.pattern)
        assert found, slot.pattern
        base = parts.kind(slot)
        for name, obj in found.items():
            assert isinstance(obj, type) and issubclass(obj, base) or callable(obj), name
            assert not (obj is base and base.__module__.startswith("ot_gen")), name


@pytest.mark.parametrize("key, target, refused", [
    ("prior", "ot_gen.model.priors.GaussianPrior", False),
    ("prior", "ot_gen.priors.GaussianPrior", False),                  # a record from before the folders
    ("prior", "ot_gen.model.priors.torch.save", True),                # an attribute walk through a module
    ("prior", "ot_gen.model.networks.MLP", True),                     # a part of another slot
    ("callbacks.early_stopping", "lightning.pytorch.callbacks.EarlyStopping", False),
    ("callbacks.x.train_time_interval", "datetime.timedelta", False),
    ("prior.std", "ot_gen.model.priors.GaussianPrior", True),         # a part below a part's root
    ("trainer.plugins.0", "ot_gen.run.checkpoints.AtomicCheckpointIO", False),
    ("trainer.plugins.0.x", "ot_gen.run.checkpoints.AtomicCheckpointIO", True),
])
def test_a_target_is_accepted_only_at_its_slot_and_by_its_exact_registered_name(key, target, refused):
    config: dict = {}
    node = config
    for part in key.split("."):
        node = node.setdefault(int(part) if part.isdigit() else part, {})
    node["_target_"] = target
    config = _lists(config)
    if refused:
        with pytest.raises(CheckpointError, match=rf"run record's {key}\._target_="):
            run_record.data_only(config, "", "ckpt")
    else:
        run_record.data_only(config, "", "ckpt")


def _lists(node):
    """{0: x} -> [x] (a plugins list)."""
    if isinstance(node, dict):
        if node and all(isinstance(k, int) for k in node):
            return [_lists(node[k]) for k in sorted(node)]
        return {k: _lists(v) for k, v in node.items()}
    return node


@pytest.mark.parametrize("value, why", [
    ({"prior": {"_target_": "ot_gen.model.priors.GaussianPrior", "_args_": [1]}}, "_args_"),
    ({"prior": {"_target_": "ot_gen.model.priors.GaussianPrior", "_partial_": True}}, "_partial_"),
    ({"optimizer": {"_target_": "torch.optim.Adam", "_recursive_": True}}, "_recursive_"),
    ({"seed": "${oc.env:HOME}"}, "interpolation"),
    ({"prior": {"dim": 2.0j}}, "numbers, strings"),
])
def test_meta_keys_interpolations_and_objects_are_refused(value, why):
    with pytest.raises(CheckpointError, match=why):
        run_record.data_only(value, "", "ckpt")
