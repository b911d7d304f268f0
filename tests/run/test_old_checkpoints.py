"""A checkpoint written before the package was grouped into folders still resumes and
samples: its run record names the old module paths (ot_gen.priors, ot_gen.networks, ...)."""

from __future__ import annotations

import pytest

import shutil
import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT, python_env
from ot_gen.run.build import build
from ot_gen.run.run_record import current_target, read
from ot_gen.run.sample import write_samples

FIXTURE = ROOT / "tests" / "fixtures" / "premove_2d.ckpt"  # train.py prior=gmm network.width=16, 20 steps, at f011d9f


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "_target_"] + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def test_the_fixture_names_the_old_paths_and_the_record_reads_them_as_the_new_ones():
    stored = torch.load(FIXTURE, map_location="cpu", weights_only=True)["ot_gen"]["config"]
    assert stored["prior"]["_target_"] == "ot_gen.priors.GaussianMixturePrior"
    record = read(torch.load(FIXTURE, map_location="cpu", weights_only=True), FIXTURE)
    assert record.config["prior"]["_target_"] == "ot_gen.model.priors.GaussianMixturePrior"
    assert record.config["network"]["_target_"] == "ot_gen.model.networks.MLP"
    assert not [t for t in _targets(record.config) if t.startswith("ot_gen.") and current_target(t) != t]


def test_an_old_checkpoint_samples(tmp_path):
    out = tmp_path / "samples.npy"
    array = write_samples(FIXTURE, 300, out, batch=100)
    assert array.shape == (300, 2) and np.isfinite(array).all()


def test_an_old_checkpoint_resumes_to_the_new_length(config, tmp_path):
    ckpt = tmp_path / "old.ckpt"
    shutil.copy(FIXTURE, ckpt)
    cfg = config("prior=gmm", "network.width=16", "data.n_train=10000", "trainer.max_steps=30",
                 "mode.val_every_rounds=10", "val_samples=200", "eval.n_generated=0", "eval.w1_k=0", f"ckpt_path={ckpt}")
    module, data, trainer, resume = build(cfg)
    assert resume.path == ckpt and resume.record.config["mode"]["_target_"] == "ot_gen.model.modes.Minibatch"
    trainer.fit(module, datamodule=data, ckpt_path=resume.path)
    assert trainer.global_step == 30 and int(module.rounds) == 30


@pytest.mark.e2e
def test_python_m_ot_gen_sample_reads_an_old_checkpoint(tmp_path):
    out = tmp_path / "s.npy"
    proc = subprocess.run([sys.executable, "-m", "ot_gen.sample", f"ckpt_path={FIXTURE}", "n=50", f"out={out}"],
                          cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.load(out).shape == (50, 2)
