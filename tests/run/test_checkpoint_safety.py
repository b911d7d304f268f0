"""A checkpoint is data, never code: a pickle that would run something is refused before it
runs, and a run record naming a callable outside ot_gen's parts is refused before anything
is built (issue 26)."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT
from ot_gen.run.build import build
from ot_gen.run.checkpoints import CheckpointError, load
from ot_gen.run.sample import sample, write_samples

FIXTURE = ROOT / "tests" / "fixtures" / "premove_2d.ckpt"


class RunsACommand:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_a_command_is_refused_before_it_runs(tmp_path):
    marker, bad = tmp_path / "ran", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsACommand(marker)}, bad)
    with pytest.raises(CheckpointError, match="holds code or objects other than data"):
        load(bad)
    assert not marker.exists()


def test_a_payload_hidden_in_a_valid_ot_gen_checkpoint_is_refused_by_sample_and_resume(tmp_path, config, capsys):
    marker, bad = tmp_path / "ran", tmp_path / "hidden.ckpt"
    ckpt = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    ckpt["ot_gen"]["extra"] = RunsACommand(marker)
    torch.save(ckpt, bad)
    code = sample(OmegaConf.create({"ckpt_path": str(bad), "n": 10, "out": str(tmp_path / "s.npy"), "png": None,
                                    "batch": 10, "device": "cpu", "seed": 0}))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "holds code or objects other than data" in err
    with pytest.raises(CheckpointError, match="holds code"):
        build(config("prior=gmm", "network.width=16", "data.n_train=10000", f"ckpt_path={bad}"))
    assert not marker.exists()


def test_a_foreign_target_in_the_run_record_is_refused_naming_the_key(tmp_path):
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work")
    ckpt = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    ckpt["ot_gen"]["config"]["prior"] = {"_target_": "shutil.copyfile", "src": "/dev/null", "dst": str(victim)}
    bad = tmp_path / "foreign.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"prior\._target_='shutil.copyfile' is not allowed: one of the classes "
                                              r"registered for prior \(.*GaussianMixturePrior.*nothing was built"):
        write_samples(bad, 10, tmp_path / "s.npy")
    assert victim.read_text() == "years of work"


def test_a_project_class_in_the_wrong_group_is_refused_in_one_line(tmp_path, capsys):
    """An allowed `_target_` that builds the wrong part (a network as the prior) used to end
    in "AttributeError: 'str' object has no attribute 'dim'" deep in sampling."""
    ckpt = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    ckpt["ot_gen"]["config"]["prior"]["_target_"] = "ot_gen.model.networks.MLP"
    bad = tmp_path / "wrong_part.ckpt"
    torch.save(ckpt, bad)
    code = sample(OmegaConf.create({"ckpt_path": str(bad), "n": 10, "out": str(tmp_path / "s.npy"), "png": None,
                                    "batch": 10, "device": "cpu", "seed": 0}))
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1, err
    assert "prior._target_='ot_gen.model.networks.MLP' is not allowed: one of the classes registered for prior" in err
    assert not (tmp_path / "s.npy").exists()
