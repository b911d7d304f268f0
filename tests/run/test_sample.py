"""`python -m ot_gen.sample`: N samples from a checkpoint, streamed into a .npy file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

from conftest import CONF, ROOT, python_env
from ot_gen.run.sample import sample, write_samples
from ot_gen.run.train import run

TINY = ["trainer.max_steps=10", "mode.val_every_rounds=5", "eval.n_generated=0"]


@pytest.mark.e2e
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


def sample_config(*overrides: str):
    """conf/sample.yaml composed as `python -m ot_gen.sample <overrides>` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("sample", overrides=list(overrides))


@pytest.mark.parametrize("args,message", [
    (["n=10"], "ckpt_path=None is not allowed"),
    (["ckpt_path=/no/file.ckpt"], "ckpt_path='/no/file.ckpt' is not allowed: an existing checkpoint file"),
    ([f"ckpt_path={__file__}", "n=0"], "n=0 is not allowed: an integer >= 1"),
    ([f"ckpt_path={__file__}", "device=tpu"], "device='tpu' is not allowed: one of auto, cpu, cuda"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert sample(sample_config(*args)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.e2e
def test_an_unknown_argument_is_refused_by_hydra_as_in_train_py():
    with pytest.raises(ConfigCompositionException, match="Could not override 'ckpt'"):
        sample_config("ckpt=x")
    proc = subprocess.run([sys.executable, "-m", "ot_gen.sample", "ckpt=x"], cwd=ROOT, env=python_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Key 'ckpt' is not in struct" in proc.stderr
    assert not (ROOT / "outputs" / "sample").exists() and not (ROOT / "sample.log").exists()


def test_a_checkpoint_without_a_run_record_is_named(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    assert sample(sample_config(f"ckpt_path={tmp_path / 'other.ckpt'}", f"out={tmp_path / 'x.npy'}")) == 1
    assert f"checkpoint {tmp_path / 'other.ckpt'} was not written by ot_gen training" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    from conftest import make_config

    out = tmp_path_factory.mktemp("run")
    run(make_config(*TINY, "logger=none", out_dir=out))
    return out / "checkpoints" / "last.ckpt"


def test_outputs_never_replace_the_checkpoint_or_a_folder_and_are_checked_first(trained_checkpoint, tmp_path, capsys):
    ckpt = trained_checkpoint
    before = ckpt.read_bytes()
    cases = [
        ([f"out={ckpt}"], f"out='{ckpt}' is not allowed: a file name ending in .npy"),
        ([f"out={tmp_path / 'x.npy'}", f"png={ckpt}"], f"png='{ckpt}' is not allowed: a file name ending in .png"),
        ([f"out={tmp_path}"], "not allowed: a file name ending in .npy"),
        ([f"out={tmp_path / 'x.npy'}", f"png={tmp_path / 'x.gif'}"],
         f"png='{tmp_path / 'x.gif'}' is not allowed: a file name ending in .png"),
        ([f"out={tmp_path / 'x.npy'}", "seed=1.5"], "seed=1.5 is not allowed: an integer >= 0"),
    ]
    if not torch.cuda.is_available():
        cases.append(([f"out={tmp_path / 'x.npy'}", "device=cuda"], "device='cuda' is not allowed: auto or cpu"))
    for args, message in cases:
        assert sample(sample_config(f"ckpt_path={ckpt}", *args)) == 2, args
        assert message in capsys.readouterr().err, args
    assert ckpt.read_bytes() == before
    assert not list(tmp_path.iterdir()), "nothing written before the arguments were checked"


def test_a_failed_write_leaves_the_previous_output_whole_and_no_partial_file(trained_checkpoint, tmp_path, capsys,
                                                                            monkeypatch):
    out = tmp_path / "s.npy"
    assert sample(sample_config(f"ckpt_path={trained_checkpoint}", "n=300", f"out={out}")) == 0
    previous = out.read_bytes()

    def disk_full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", disk_full)
    assert sample(sample_config(f"ckpt_path={trained_checkpoint}", "n=5000", f"out={out}")) == 1
    assert f"could not write out={out}" in capsys.readouterr().err
    assert out.read_bytes() == previous and np.load(out).shape == (300, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"], "no .partial file left"


@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_mid_export_is_one_line_and_leaves_no_partial_file(trained_checkpoint, tmp_path, capsys,
                                                                    monkeypatch, signal_name, code):
    """SIGTERM used to kill the export and leave its (pre-allocated) .partial file behind;
    Ctrl-C ended in a traceback. Both: one line, no partial file, the old output intact."""
    import os
    import signal

    from ot_gen.model.module import OTGenerator

    out = tmp_path / "s.npy"
    assert sample(sample_config(f"ckpt_path={trained_checkpoint}", "n=300", f"out={out}")) == 0
    previous = out.read_bytes()
    real_render, calls = OTGenerator.render, []

    def signalled_at_the_second_batch(self, z):
        calls.append(len(z))
        if len(calls) == 2:
            os.kill(os.getpid(), getattr(signal, signal_name))
        return real_render(self, z)

    monkeypatch.setattr(OTGenerator, "render", signalled_at_the_second_batch)
    # As at a terminal: a shell starts a background job (CI under nohup ... &) with SIGINT ignored.
    interactive = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert sample(sample_config(f"ckpt_path={trained_checkpoint}", "n=5000", "batch=1000", f"out={out}")) == code
    finally:
        signal.signal(signal.SIGINT, interactive)
    err = capsys.readouterr().err
    assert err.strip() == f"stopped by {signal_name}: out={out} was not written (nor replaced)"
    assert len(calls) == 2 and out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"], "no .partial file left"


def test_a_picture_that_cannot_be_written_is_told_apart_from_the_samples(trained_checkpoint, tmp_path, capsys,
                                                                        monkeypatch):
    out, png = tmp_path / "s.npy", tmp_path / "s.png"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ot_gen.run.sample._picture", disk_full)
    assert sample(sample_config(f"ckpt_path={trained_checkpoint}", "n=300", f"out={out}", f"png={png}")) == 1
    assert capsys.readouterr().err.strip() == f"wrote out={out}; could not write png={png}: No space left on device"
    assert np.load(out).shape == (300, 2) and sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]
