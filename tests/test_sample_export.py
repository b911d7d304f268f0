"""`python -m ot_gen.sample`: N samples from a checkpoint, streamed into a .npy file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, python_env
from ot_gen.sample import main, write_samples
from ot_gen.train import run

TINY = ["trainer.max_steps=10", "mode.val_every_rounds=5", "eval.n_generated=0"]


def test_export_from_a_2d_run_via_the_command(config, tmp_path):
    cfg = config(*TINY)
    run(cfg)
    ckpt = ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt"
    out, png = tmp_path / "s.npy", tmp_path / "s.png"
    cmd = [sys.executable, "-m", "ot_gen.sample", f"ckpt_path={ckpt}", "n=2500", "batch=1000", f"out={out}",
           f"png={png}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    x = np.load(out)
    assert x.shape == (2500, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert png.stat().st_size > 0
    again = write_samples(ckpt, 2500, tmp_path / "t.npy", batch=1000)
    np.testing.assert_array_equal(np.asarray(again), x)  # same seed and batch: the same samples
    other = write_samples(ckpt, 2500, tmp_path / "u.npy", batch=1000, seed=1)
    assert not np.array_equal(np.asarray(other), x)


def test_export_of_images_is_in_the_data_value_range(config, tmp_path):
    cfg = config("data=clock", "network=conv28", "data.n_train=256", "data.n_val=64", "val_samples=64",
                 "mode.batch_size=32", "callbacks.image_grids.n_samples=4", *TINY)
    run(cfg)
    ckpt = ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt"
    x = write_samples(ckpt, 300, tmp_path / "img.npy", batch=128, png=tmp_path / "grid.png")
    assert x.shape == (300, 1, 28, 28)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert (tmp_path / "grid.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["n=10"], "ckpt_path=None is not allowed"),
    (["ckpt_path=/no/file.ckpt"], "ckpt_path='/no/file.ckpt' is not allowed: an existing checkpoint file"),
    (["ckpt_path=x", "n=0"], "n=0 is not allowed: an integer >= 1"),
    (["ckpt=x"], "argument='ckpt=x' is not allowed: key=value with a key of ckpt_path"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
