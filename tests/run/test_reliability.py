"""No hang, no lost file, one clear line for every mistake: run dirs, sweeps, search
spaces, resumes, the data cache, full disks, pre-emption in the final evaluation, W&B
without a network."""

from __future__ import annotations

import csv
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from conftest import CONF, FAST, ROOT, python_env, reaped
from ot_gen.run.checkpoints import CheckpointError, load
from ot_gen.data import ImageDataModule
from ot_gen.data.image_readers import DataFileError
from ot_gen.errors import ConfigError
from ot_gen.run.build import build
from ot_gen.run.train import run

TINY = ["logger=none", "trainer.enable_progress_bar=false", "data.n_train=2000", "val_samples=300",
        "eval.n_generated=0", "trainer.max_steps=10", "mode.val_every_rounds=5",
        "callbacks.point_cloud_plots.n_points=100"]


def train(*overrides: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env or python_env(), capture_output=True, text=True, timeout=timeout)


# -- run dirs ---------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_folder_holding_a_run_is_refused_untouched_unless_resumed_or_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    first = train(*TINY, f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    again = train(*TINY, "seed=1", f"hydra.run.dir={run_dir}")
    assert again.returncode == 2
    assert f"hydra.run.dir='{run_dir}' is not allowed: a folder without a run" in again.stderr
    assert "overwrite=true" in again.stderr and "Traceback" not in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before, "nothing of the old run changed"

    from ot_gen.launch.run_dirs import claim

    resume_here = _hydra_config(run_dir, f"ckpt_path={run_dir}/checkpoints/last.ckpt")
    assert claim(resume_here, "hydra.run.dir", ".hydra", exclusive_dir=True) == run_dir, "resuming it is allowed"

    (run_dir / "notes.txt").write_text("the user's own file")
    replace = _hydra_config(run_dir, "overwrite=true", "hydra.job.name=train")  # as train.py names its log
    assert claim(replace, "hydra.run.dir", ".hydra", exclusive_dir=True) == run_dir, "overwrite=true allows it"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "notes.txt"], "the old run's files are gone"


def test_overwriting_a_sweep_dir_removes_its_jobs_runs_too(tmp_path):
    """overwrite=true on a sweep dir: its tables and every job folder's run files go (a new
    sweep's summary would otherwise report the old jobs' metrics); a user's file stays."""
    from ot_gen.launch.run_dirs import claim

    sweep = tmp_path / "sweep"
    for name, text in {"multirun.yaml": "", "summary.csv": "job\n0\n", "summary.md": "", "train.log": "",
                       "0/.hydra/overrides.yaml": "[]", "0/metrics.json": "{}", "0/train.log": "",
                       "1/.hydra/overrides.yaml": "[]", "1/failed.txt": "ConfigError\n",
                       "2/metrics.json": "{}", "2/notes.txt": "the user's own file"}.items():
        (sweep / name).parent.mkdir(parents=True, exist_ok=True)
        (sweep / name).write_text(text)
    cfg = _hydra_config(tmp_path / "unused", "overwrite=true", "hydra.job.name=train", f"hydra.sweep.dir={sweep}")
    assert claim(cfg, "hydra.sweep.dir", "multirun.yaml", exclusive_dir=False) == sweep
    left = sorted(str(p.relative_to(sweep)) for p in sweep.rglob("*") if p.is_file())
    assert left == ["2/notes.txt", "multirun.yaml"]


def test_a_run_that_failed_before_saving_anything_is_no_run_to_protect(tmp_path):
    """Re-running a fixed hydra.run.dir after a config typo: the failed attempt left its
    .hydra/ and failed.txt and nothing else, and is replaced; a folder with a .hydra/ and
    no failed.txt may be a run in its first minutes, and stays refused."""
    from ot_gen.launch.run_dirs import claim

    failed, running = tmp_path / "failed", tmp_path / "running"
    for folder in (failed, running):
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (failed / "failed.txt").write_text("ConfigError: mode.k=0 is not allowed\n")
    (failed / "train.log").write_text("...")
    cfg = _hydra_config(failed, "hydra.job.name=train", f"hydra.run.dir={failed}")
    assert claim(cfg, "hydra.run.dir", ".hydra", exclusive_dir=True) == failed
    assert sorted(p.name for p in failed.rglob("*")) == [".hydra", "run.lock"], "the failed attempt's files are gone"
    with pytest.raises(SystemExit):
        claim(_hydra_config(running, f"hydra.run.dir={running}"), "hydra.run.dir", ".hydra", exclusive_dir=True)
    assert (running / ".hydra" / "config.yaml").exists()


def test_a_killed_run_that_saved_nothing_is_replaced_and_one_in_progress_is_named(tmp_path, caplog, capsys):
    """A run SIGKILLed before its first checkpoint left a folder that a rerun refused with
    "resume it with ckpt_path=<its checkpoints/last.ckpt>", a file that did not exist."""
    from ot_gen.launch.run_dirs import LOCK, claim

    killed, running = tmp_path / "killed", tmp_path / "running"
    for folder in (killed, running):
        (folder / ".hydra").mkdir(parents=True)
        (folder / LOCK).write_text("12345\n")  # what a run's process leaves; the kernel freed its lock
        (folder / "train.log").write_text("...")
        (folder / "wandb").mkdir()
    cfg = _hydra_config(killed, "hydra.job.name=train", f"hydra.run.dir={killed}")
    assert claim(cfg, "hydra.run.dir", ".hydra", exclusive_dir=True) == killed
    assert sorted(p.name for p in killed.rglob("*")) == [".hydra", "run.lock"], "the killed run's files are gone"
    assert "ended before saving anything" in caplog.text
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, time; f = open({str(running / LOCK)!r}); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    with reaped(holder):
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exit_:
            claim(_hydra_config(running, f"hydra.run.dir={running}"), "hydra.run.dir", ".hydra", exclusive_dir=True)
    assert exit_.value.code == 2 and (running / "train.log").exists()
    err = capsys.readouterr().err
    assert f"a run is in progress in it (process 12345). When that run is over, pass overwrite=true" in err
    assert "ckpt_path" not in err


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_rerunning_the_folder_of_a_run_killed_before_its_first_checkpoint_just_runs(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", *TINY, "trainer.max_steps=100000", "mode.val_every_rounds=100000",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    with reaped(proc):
        deadline = time.time() + 120
        while not (run_dir / ".hydra" / "config.yaml").exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # training, no checkpoint yet
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "checkpoints").exists()
    again = train(*TINY, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ended before saving anything" in again.stdout + again.stderr
    assert (run_dir / "metrics.json").exists()


def _hydra_config(run_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.run.dir = str(run_dir)  # as the default ${now:...} name, not a user override
    return cfg


@pytest.mark.e2e
def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    from ot_gen.launch.run_dirs import claim

    same_second = tmp_path / "2026-11-22_10-00-00"
    first = claim(_hydra_config(same_second), "hydra.run.dir", ".hydra", exclusive_dir=True)
    second = claim(_hydra_config(same_second), "hydra.run.dir", ".hydra", exclusive_dir=True)
    third = claim(_hydra_config(same_second), "hydra.run.dir", ".hydra", exclusive_dir=True)
    assert (first, second, third) == (same_second, same_second.with_name(same_second.name + "_2"),
                                      same_second.with_name(same_second.name + "_3"))
    assert all((d / ".hydra").is_dir() for d in (first, second, third))


def test_a_run_dir_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    from ot_gen.launch import run_dirs

    def read_only(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(SystemExit) as exit_:
        run_dirs.claim(_hydra_config(tmp_path / "ro"), "hydra.run.dir", ".hydra", exclusive_dir=True)
    assert exit_.value.code == 2
    assert f"hydra.run.dir='{tmp_path / 'ro'}' is not allowed: a folder this run can write to (Permission denied)" \
        in capsys.readouterr().err


# -- sweeps -------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_failing_job_is_a_failed_row_and_the_sweep_goes_on(tmp_path):
    """A bad job first (the good one used to never run) and last (the sweep used to end
    with exit code 2 and no summary)."""
    sweep = tmp_path / "sweep"
    proc = train("-m", "optimizer.lr=nan,0.001,inf", *TINY[:-1], "callbacks=none", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["optimizer.lr"]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    for bad in ("nan", "inf"):
        assert rows[bad]["status"] == "failed"
        assert rows[bad]["error"] == f"ConfigError: optimizer.lr={bad} is not allowed: a finite number"
    assert rows["0.001"]["status"] == "ok" and float(rows["0.001"]["val/w2"]) > 0


@pytest.mark.e2e
def test_an_optuna_search_space_with_bad_bounds_is_one_line(tmp_path):
    from ot_gen.launch.search_space import check_search_space

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    bad = {"optimizer.lr": ("tag(log, interval(0, 0.01))", "low` value must be larger than 0"),
           "prior.sigma": ("interval(0.5, 0.02)", "smaller than or equal to the `high`"),
           "prior.sigmaa": ("interval(0.02, 0.5)", "there is no prior.sigmaa"),
           "mode.k": ("choice(2, 5", "a search space Optuna accepts")}
    for key, (value, message) in bad.items():
        with open_dict(cfg):
            original = dict(cfg.hydra.sweeper.params)
            cfg.hydra.sweeper.params[key] = value
        with pytest.raises(ConfigError, match=message) as err:
            check_search_space(cfg)
        assert f"hydra.sweeper.params.{key}=" in str(err.value)
        with open_dict(cfg):
            cfg.hydra.sweeper.params = original
    check_search_space(cfg)  # the shipped search space is valid

    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    shipped = (CONF / "hparams_search" / "optuna.yaml").read_text()
    (conf / "bad.yaml").write_text(shipped.replace("interval(0.0001, 0.01)", "interval(0, 0.01)"))
    proc = train("--config-dir", str(tmp_path / "conf"), "hparams_search=bad", *TINY,
                 f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ConfigError: hydra.sweeper.params.optimizer.lr='tag(log, interval(0, 0.01))'" in proc.stderr


# -- resume ---------------------------------------------------------------------------------------------
def test_a_checkpoint_of_another_config_names_the_keys_that_differ(config):
    first = config("trainer.max_steps=5", "mode.val_every_rounds=5", "eval.n_generated=0",
                   "callbacks.point_cloud_plots.n_points=100")
    run(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as err:
        build(config("network.width=32", "optimizer.lr=0.01", f"ckpt_path={ckpt}"))
    message = str(err.value)
    assert "network.width: 256 in the checkpoint, 32 now" in message
    assert "optimizer.lr: 0.001 in the checkpoint, 0.01 now" in message
    with pytest.raises(ConfigError, match="prior._target_: 'ot_gen.model.priors.GaussianPrior' in the checkpoint"):
        build(config("prior=gmm", f"ckpt_path={ckpt}"))
    build(config("trainer.max_steps=50", "eval.n_generated=10", f"ckpt_path={ckpt}"))  # run length may change


def test_resuming_with_more_steps_stretches_the_cosine_to_the_new_end(config):
    first = config("trainer.max_steps=14", "mode.val_every_rounds=7", "eval.n_generated=0")
    run(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert load(ckpt)["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5)
    longer = config("trainer.max_steps=28", "mode.val_every_rounds=7", "eval.n_generated=0", f"ckpt_path={ckpt}")
    lrs = []

    import lightning as L

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    module, data, trainer, _ = build(longer)
    trainer.callbacks.append(Record())
    trainer.fit(module, datamodule=data, ckpt_path=longer.ckpt_path)
    cosine = lambda t: 1e-5 + (1e-3 - 1e-5) * (1 + np.cos(np.pi * t / 28)) / 2  # noqa: E731
    assert lrs == pytest.approx([cosine(t) for t in range(14, 28)], rel=1e-9), "the 28-step schedule from step 14"
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == 28
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-5), "ends at eta_min, not back at 1e-3"


# -- files ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")])
def test_a_full_disk_while_checkpointing_is_one_error_and_leaves_no_tmp(config, monkeypatch, error):
    """A full disk as Python says it, and as torch's zip writer does ("unexpected pos")."""
    from ot_gen.run import checkpoints

    real_save = torch.save
    cfg = config("trainer.max_steps=20", "mode.val_every_rounds=10", "eval.n_generated=0")
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"

    def save(obj, f):
        if obj["global_step"] >= 20:
            f.write(b"part of a checkpoint")
            raise error
        real_save(obj, f)

    monkeypatch.setattr(checkpoints.torch, "save", save)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint .*\.ckpt \(No space left on device"):
        run(cfg)
    assert not list(ckpt_dir.glob("*.tmp")), "no half-written file"
    assert load(ckpt_dir / "last.ckpt")["global_step"] == 10, "the previous checkpoint survives"


def test_an_unreadable_checkpoint_is_called_unreadable_not_corrupt(tmp_path, monkeypatch):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError, match=r"last.ckpt could not be read \(Permission denied\)$"):
        load(ckpt)


def write_idx(root: Path, value: int, n: int = 40) -> Path:
    root.mkdir(parents=True)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(np.array([0x00000803, n, 28, 28], ">i4").tobytes() + np.full((n, 28, 28), value, np.uint8).tobytes())
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([0x00000801, n], ">i4").tobytes() + bytes(n))
    return root


def mnist(root: Path, cache: Path) -> ImageDataModule:
    dm = ImageDataModule("mnist", root=str(root), cache_dir=str(cache), n_val=10, value_range=(0, 1))
    dm.setup()
    return dm


def test_the_data_cache_is_keyed_by_content_and_written_atomically(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    dark, bright = write_idx(tmp_path / "a", 10), write_idx(tmp_path / "b", 200)
    assert mnist(dark, cache).train_set.max() == pytest.approx(10 / 255)
    assert mnist(bright, cache).train_set.max() == pytest.approx(200 / 255), "same file names, other content"

    from ot_gen.data import image_readers

    other = write_idx(tmp_path / "c", 77)

    def killed(src, dst, length=0):
        dst.write(src.read(100))
        raise KeyboardInterrupt  # the run is killed while decompressing

    monkeypatch.setattr(image_readers.shutil, "copyfileobj", killed)
    with pytest.raises(KeyboardInterrupt):
        mnist(other, cache)
    monkeypatch.undo()
    assert not list((cache / "MNIST").glob("*partial*")), "no truncated copy left"
    assert mnist(other, cache).train_set.max() == pytest.approx(77 / 255), "the next run decompresses it whole"


def test_a_damaged_cache_file_is_named(tmp_path):
    cache = tmp_path / "cache"
    root = write_idx(tmp_path / "a", 10)
    mnist(root, cache)
    (cached,) = (cache / "MNIST").glob("t10k-images-idx3-ubyte.*")
    cached.write_bytes(cached.read_bytes()[:1000])
    with pytest.raises(DataFileError, match=f"as read from the cache file {cached}: delete it"):
        mnist(root, cache)


# -- signals and the network -------------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_sigterm_in_the_final_evaluation_stops_at_once_keeping_the_checkpoint(tmp_path):
    """A 100-million-sample unseen-distance pass (minutes): SIGTERM stops it within seconds."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", *FAST, "trainer.max_steps=20", "mode.val_every_rounds=10",
           "eval.n_generated=100000000", "eval.chunk=100000", "callbacks.point_cloud_plots.n_points=100",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    with reaped(proc):
        ckpt, deadline = run_dir / "checkpoints" / "last.ckpt", time.time() + 180
        while not (ckpt.exists() and load(ckpt)["global_step"] == 20 and (run_dir / "plots").exists()
                   and any((run_dir / "plots").glob("*step0000020*"))):
            assert proc.poll() is None and time.time() < deadline, "training did not end"
            time.sleep(0.2)
        time.sleep(3)  # inside the unseen-sample pass
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)  # the pass itself would take far longer: a missed signal fails here
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM during the final evaluation: stopped; checkpoints/last.ckpt holds the final state" in out
    assert load(ckpt)["global_step"] == 20 and not (run_dir / "metrics.json").exists()


@pytest.mark.e2e
def test_wandb_online_without_a_network_falls_back_to_offline_in_seconds(tmp_path):
    env = {**python_env(), "WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_API_KEY": "x" * 40, "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
           "WANDB_CACHE_DIR": str(tmp_path / "cache")}
    proc = train(*TINY[:-1], "logger=wandb", "callbacks=none", f"hydra.run.dir={tmp_path / 'run'}", env=env,
                 timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]  # wandb.init alone would wait 90 s, then fail with a traceback
    assert "W&B server http://127.0.0.1:9 cannot be reached" in proc.stderr + proc.stdout
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
