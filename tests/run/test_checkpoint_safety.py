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


def _run(tmp_path, *overrides):
    from conftest import make_config
    from ot_gen.run.train import run

    return run(make_config("network.width=16", "eval.n_generated=0", "callbacks.point_cloud_plots=null",
                           "mode.val_every_rounds=5", *overrides, out_dir=tmp_path / "run"))


@pytest.mark.parametrize("field", ["best_k_models", "last_model_path"])
def test_a_checkpoint_whose_callback_state_names_files_outside_its_folder_is_refused(tmp_path, field):
    """Lightning's ModelCheckpoint reloads best_k_models and last_model_path from the
    checkpoint when resumed in its own folder, and removes the worst of them (the previous
    last) later; it keeps removals inside its folder by testing `dirpath in path.parents`,
    which `checkpoints/../../thesis.tex` passes. A resume must never delete a file."""
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work")
    _run(tmp_path, "trainer.max_steps=10")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    outside = str(tmp_path / "run" / "checkpoints" / ".." / ".." / "thesis.tex")
    for key, state in ckpt["callbacks"].items():
        if key.startswith("ModelCheckpoint") and state.get("dirpath"):
            if field == "best_k_models":
                state.update(best_k_models={outside: torch.tensor(float("inf"))}, kth_best_model_path=outside,
                             kth_value=torch.tensor(float("inf")), best_model_score=torch.tensor(float("inf")))
            else:
                state["last_model_path"] = outside
    torch.save(ckpt, last)
    with pytest.raises(CheckpointError, match=r"its callback state's ModelCheckpoint.*names a file outside its "
                                              r"checkpoints folder .*thesis.tex'; a resume would remove it"):
        _run(tmp_path, "trainer.max_steps=20", f"ckpt_path={last}")
    assert victim.read_text() == "years of work"


def _checkpoint_for_huge_images(tmp_path):
    """A tiny 2-D run's last.ckpt whose record says its data are 3 × 100,000 × 100,000 images."""
    _run(tmp_path, "trainer.max_steps=10")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["ot_gen"]["data"]["shape"] = [3, 100000, 100000]
    torch.save(ckpt, last)
    return last


def test_a_checkpoint_whose_record_describes_other_data_is_refused_on_resume(tmp_path):
    """The record's data description was only read by sample; a resume trained on with a
    record that said images of 3 × 100,000 × 100,000 (and its weights for 2-D points)."""
    from ot_gen.errors import ConfigError

    last = _checkpoint_for_huge_images(tmp_path)
    with pytest.raises(ConfigError, match=r"ckpt_path='.*last.ckpt' is not allowed: a checkpoint of this data: it was "
                                          r"written for data of shape \(3, 100000, 100000\), this data has shape \(2,\)"):
        _run(tmp_path, "trainer.max_steps=20", f"ckpt_path={last}")


def test_a_record_nested_thousands_deep_is_refused_in_one_line_not_a_recursion_error():
    """A run record nested 5000 levels deep (loadable with weights_only once the writer
    raised its recursion limit) ended sample and resume in a RecursionError traceback."""
    from ot_gen.run.run_record import data_only

    deep: object = 1.0
    for _ in range(5000):
        deep = {"x": deep}
    with pytest.raises(CheckpointError, match=r"its run record's prior\.sigma(\.x){15}='dict' is not allowed: a value "
                                              r"nested at most 16 levels deep"):
        data_only({"prior": {"sigma": deep}}, "", "c.ckpt")


def test_a_record_whose_sizes_do_not_fit_is_refused_naming_the_checkpoint_when_sampled(tmp_path):
    """A record that describes 3 × 100,000 × 100,000 images asks for a generator of 5e11
    weights: refused before allocating, and the message says the value is the
    checkpoint's (it named `network.width=16` as if the user had typed it)."""
    last = _checkpoint_for_huge_images(tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint .*last.ckpt: its run record's network.width=16 is not "
                                              r"allowed: a generator of 510,000,000,592 parameters"):
        write_samples(last, 10, tmp_path / "s.npy")
    assert not (tmp_path / "s.npy").exists()
