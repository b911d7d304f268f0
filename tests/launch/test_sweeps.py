"""A real Hydra multirun through train.py writes one summary table of all its jobs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, HAS_SHARED, ROOT, SHARED, python_env, reaped


@pytest.mark.e2e
def test_multirun_over_matchers_writes_a_summary_table(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "matcher=exact,random,nearest", *FAST, "trainer.max_steps=60",
           "mode.val_every_rounds=30", "eval.n_generated=1000", "callbacks=none", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["matcher"] for r in rows] == ["exact", "random", "nearest"]
    assert all(r["status"] == "ok" for r in rows)
    assert "trainer.max_steps" not in rows[0], "overrides shared by every job are not columns"
    w2 = {r["matcher"]: float(r["val/w2"]) for r in rows}
    assert w2["exact"] < w2["random"], "OT matching beats the random control"
    for r in rows:
        assert float(r["s_per_round"]) > 0 and r["train/dropped"] != ""
    md = (sweep / "summary.md").read_text().splitlines()
    assert md[0].startswith("| job | matcher | status | val/w2") and len(md) == 5


def test_a_failed_or_interrupted_job_is_a_row_not_a_crash(tmp_path):
    from ot_gen.launch.sweep_summary import collect

    from ot_gen.launch.sweep_summary import NO_REASON

    jobs = [('{"val/w2": 0.5}', None), (None, "failed.txt"), (None, "interrupted.txt"), (None, None)]
    for i, (metrics, note) in enumerate(jobs):
        job = tmp_path / str(i) / ".hydra"
        job.mkdir(parents=True)
        (job / "overrides.yaml").write_text(f"- seed={i}\n")
        if metrics:
            (tmp_path / str(i) / "metrics.json").write_text(metrics)
        if note:
            (tmp_path / str(i) / note).write_text(f"the reason of {note}\n")
    rows = collect(tmp_path)
    assert [(r["seed"], r["status"], r["val/w2"], r["error"]) for r in rows] == [
        ("0", "ok", 0.5, ""), ("1", "failed", "", "the reason of failed.txt"),
        ("2", "interrupted", "", "the reason of interrupted.txt"), ("3", "failed", "", NO_REASON)]


def test_a_sweep_gets_the_columns_its_jobs_logged_beyond_the_fixed_ones(tmp_path):
    from ot_gen.launch.sweep_summary import collect

    logged = ['{"val/w2": 0.3}', '{"val/w2": 0.2, "train/untransported_real": 0.1}']
    for i, metrics in enumerate(logged):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(f"- matcher={['exact', 'partial'][i]}\n")
        (tmp_path / str(i) / "metrics.json").write_text(metrics)
    rows = collect(tmp_path)
    assert [r["train/untransported_real"] for r in rows] == ["", 0.1]
    assert "val/near_copies" not in rows[0], "no job logged it: no column"


TINY = [*FAST, "trainer.max_steps=20", "mode.val_every_rounds=10", "eval.n_generated=500", "callbacks=none"]


def sweep(tmp_path, *args):
    cmd = [sys.executable, "train.py", *args, *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    return subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=400)


@pytest.mark.e2e
def test_optuna_search_runs_trials_and_records_the_best(tmp_path):
    proc = sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=3", "mode.pool_size=100",
                 "data.n_train=500")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from omegaconf import OmegaConf

    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert set(best.best_params) == {"optimizer.lr", "mode.k", "prior.sigma", "prior.n_components"}
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert best.best_value == min(float(r["val/w2"]) for r in rows)


@pytest.mark.e2e
def test_optuna_with_a_parallel_launcher_asks_for_as_many_trials_at_a_time(tmp_path):
    proc = sweep(tmp_path, "hparams_search=optuna", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 "hydra.sweeper.n_trials=2", "mode.pool_size=100", "data.n_train=500")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2," in proc.stdout + proc.stderr and "is launching 2 jobs" in proc.stdout + proc.stderr


def test_trials_at_once_follows_the_launcher():
    import os

    from ot_gen.launch.search_space import trials_at_once

    assert (trials_at_once(1), trials_at_once(2), trials_at_once(-1)) == (1, 2, os.cpu_count())


@pytest.mark.e2e
def test_optuna_must_minimise_a_distance(tmp_path):
    proc = sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.direction=maximize")
    assert "ConfigError: hydra.sweeper.direction='maximize' is not allowed: minimize" in proc.stderr + proc.stdout


@pytest.mark.e2e
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    proc = sweep(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    assert [r["seed"] for r in rows] == ["0", "1"] and all(r["status"] == "ok" for r in rows)


@pytest.mark.e2e
@pytest.mark.parametrize("sizes, code, said", [("0,256", 0, "1 of 2 jobs failed"), ("0,-1", 1, "2 of 2 jobs failed")])
def test_a_sweep_says_how_many_jobs_failed_and_fails_when_all_did(tmp_path, sizes, code, said):
    proc = sweep(tmp_path, "-m", f"mode.batch_size={sizes}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert said in out and "Traceback" not in out
    assert ("no job of the sweep succeeded" in out) == (code == 1)
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    assert [r["status"] for r in rows] == (["failed", "ok"] if code == 0 else ["failed", "failed"])


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_sigterm_stops_a_sweep_with_its_summary_and_says_which_jobs_never_ran(tmp_path):
    """Pre-empted in job 0 of two: job 0 saves and is an `interrupted` row of the summary,
    job 1 never starts, and the exit status is 143 (SIGTERM), not 0."""
    sweep_dir = tmp_path / "sweep"
    with_checkpoints = [o for o in TINY if o != "callbacks=none"]
    cmd = [sys.executable, "train.py", "-m", "seed=0,1", *with_checkpoints, "trainer.max_steps=2000",
           "mode.val_every_rounds=10", "callbacks.point_cloud_plots.n_points=100", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    with reaped(proc):
        ckpt, deadline = sweep_dir / "0" / "checkpoints" / "last.ckpt", time.time() + 240
        while not ckpt.exists():
            assert proc.poll() is None and time.time() < deadline, "job 0 wrote no checkpoint"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "sweep stopped by SIGTERM in job 0" in out and "never ran" in out
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "interrupted")]
    assert f"resume with ckpt_path={ckpt}" in rows[0]["error"]
    assert not (sweep_dir / "1").exists()


def children(pid: int) -> list[int]:
    """The processes `pid` started (the process launcher's jobs), the first started first."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(fields[19]), int(stat.parent.name)))  # (start time, pid)
    return [child for _, child in sorted(found)]


def start_sweep(sweep_dir, *overrides):
    """A TINY multirun in the background, in a session of its own (for `reaped`)."""
    cmd = [sys.executable, "train.py", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


PARALLEL = ["hydra/launcher=processes", "hydra.launcher.n_jobs=2"]


def wait_for(proc, what, condition, limit=240):
    deadline = time.time() + limit
    while not condition():
        assert proc.poll() is None and time.time() < deadline, f"never saw {what}"
        time.sleep(0.1)


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_killed_parallel_job_is_a_failed_row_and_the_other_jobs_finish(tmp_path):
    """joblib's loky pool loses every job when one worker dies; the process launcher loses
    only the killed one: job 0 (long) is SIGKILLed mid-run, jobs 1 and 2 (short) finish."""
    sweep_dir = tmp_path / "sweep"
    proc = start_sweep(sweep_dir, *PARALLEL, "trainer.max_steps=100000,200,200")
    with reaped(proc):
        wait_for(proc, "job 0 training", lambda: (sweep_dir / "0" / ".hydra").is_dir() and len(children(proc.pid)) == 2)
        time.sleep(2)
        os.kill(children(proc.pid)[0], signal.SIGKILL)  # the first started: job 0
        out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "job 0: the job's process was killed by SIGKILL" in out and "1 of 3 jobs failed" in out
    assert "Traceback" not in out
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "ok"), ("2", "ok")]
    assert "killed by SIGKILL (the kernel's out-of-memory killer sends it)" in rows[0]["error"]


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_sigterm_to_a_parallel_sweep_stops_its_running_jobs_and_writes_the_summary(tmp_path):
    """SIGTERM to the sweep process alone (not its group): both running jobs save and are
    `interrupted` rows, job 2 never starts, the sweep says so and exits 143."""
    sweep_dir = tmp_path / "sweep"
    proc = start_sweep(sweep_dir, *PARALLEL, "trainer.max_steps=100000", "seed=0,1,2",
                       "callbacks=default", "callbacks.point_cloud_plots.n_points=100")
    with reaped(proc):
        wait_for(proc, "both jobs' checkpoints", lambda: all(
            (sweep_dir / j / "checkpoints" / "last.ckpt").exists() for j in "01"))
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "sweep stopped by SIGTERM: 0 job(s) finished, 2 stopped; jobs 2 never ran" in out
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "interrupted"), ("1", "interrupted")]
    assert all("resume with ckpt_path=" in r["error"] for r in rows)
    assert not (sweep_dir / "2").exists()


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_sweep_whose_joblib_pool_breaks_still_writes_the_summary_of_its_jobs(tmp_path):
    """loky breaks its pool when a worker is killed (the running jobs are lost: joblib's
    way); the sweep still leaves its table, and says it ended early."""
    sweep_dir = tmp_path / "sweep"
    proc = start_sweep(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.max_steps=100000,200")
    workers = lambda: [pid for pid in children(proc.pid)  # noqa: E731
                       if b"popen_loky" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    with reaped(proc):
        wait_for(proc, "job 0 started", lambda: (sweep_dir / "0" / ".hydra").is_dir() and workers())
        time.sleep(2)
        os.kill(workers()[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert "the sweep ended before all its jobs did" in out, out[-3000:]
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert rows and rows[0]["job"] == "0" and rows[0]["status"] == "failed"


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.timeout_min == 240 and launcher.gpus_per_node == 1


def test_the_process_launcher_composes_builds_through_hydra_and_refuses_a_bad_n_jobs():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins

    from conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=processes", "hydra.launcher.n_jobs=3"],
                      return_hydra_config=True)
    launcher = Plugins.instance()._instantiate(cfg.hydra.launcher)  # as Hydra builds it: a plugin it found
    assert type(launcher).__name__ == "ProcessLauncher" and launcher.n_jobs == 3
    with pytest.raises(ValueError, match="hydra.launcher.n_jobs=0 is not allowed"):
        type(launcher)(n_jobs=0)


def test_a_sweep_that_never_reached_its_end_writes_the_table_at_exit_once(tmp_path, caplog):
    from ot_gen.launch import sweep_summary

    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (tmp_path / "0" / "metrics.json").write_text('{"val/w2": 0.4}')
    sweep_summary._summary_if_missing(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok")]
    assert "the sweep ended before all its jobs did" in caplog.text
    caplog.clear()
    (tmp_path / "summary.csv").unlink()
    sweep_summary._summary_if_missing(tmp_path)  # written already by this process: not again
    assert not (tmp_path / "summary.csv").exists() and not caplog.text


@pytest.mark.e2e
def test_every_named_experiment_runs_in_fast_dev_mode(tmp_path):
    """`python train.py -m 'experiment=glob(*)' debug=fdr`, as the README says: each one a
    real job of one training round and its evaluation at debug size, the image ones on the
    real data when it is on this machine."""
    # distill_*: a flow's one-step student needs the flow's checkpoint (matcher.ckpt; tested
    # with one in tests/latent/test_latent.py)
    experiments = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml") if not p.stem.startswith("distill"))
    on_files = ("emgn", "otgan", "latent", "flow_latent")  # the experiments on MNIST / Fashion files
    excluded = ["distill*", *(p + "*" for p in (() if HAS_SHARED else on_files))]
    chosen = f"experiment=glob(*,exclude=[{','.join(excluded)}])"
    env = {**python_env(), "HOME": str(tmp_path)}  # decompressed image files go to a tmp cache
    cmd = [sys.executable, "train.py", "-m", chosen, "debug=fdr", f"paths.data_dir={SHARED}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    ran = sorted(r["experiment"] for r in rows)
    assert ran == (experiments if HAS_SHARED else [e for e in experiments if not e.startswith(on_files)])
    assert all(r["status"] == "ok" for r in rows), rows


def test_wandb_runs_of_a_sweep_share_a_group_and_are_named_by_their_overrides(tmp_path):
    """In a multirun the dashboard groups a sweep's runs and names each by its overrides;
    a group or name set in the config wins; a single run keeps W&B's own naming."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from conftest import CONF, make_config
    from ot_gen.run.loggers import wandb_logger

    make_config(out_dir=tmp_path / "0")  # a single run's Hydra config
    single = wandb_logger(mode="offline", save_dir=str(tmp_path / "single"))
    assert single._wandb_init.get("group") is None and single._wandb_init.get("name") is None

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        swept_cfg = compose("train", overrides=[f"hydra.sweep.dir={tmp_path / '2026-12-03_12-00-00'}"],
                            return_hydra_config=True)
    with open_dict(swept_cfg):
        swept_cfg.hydra.mode = "MULTIRUN"
        swept_cfg.hydra.job.num = 1
        swept_cfg.hydra.job.override_dirname = "matcher=sinkhorn,seed=1"
    HydraConfig().set_config(swept_cfg)
    try:
        swept = wandb_logger(mode="offline", save_dir=str(tmp_path / "swept"))
        named = wandb_logger(mode="offline", save_dir=str(tmp_path / "named"), group="mine", name="this one")
    finally:
        make_config(out_dir=tmp_path / "0")
    job_name = swept_cfg.hydra.job.name
    assert swept._wandb_init["group"] == f"{job_name} 2026-12-03_12-00-00"
    assert swept._wandb_init["name"] == "1: matcher=sinkhorn,seed=1"
    assert (named._wandb_init["group"], named._wandb_init["name"]) == ("mine", "this one")


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_job_of_a_finished_sweep_resumed_in_its_folder_rewrites_the_sweeps_summary(tmp_path):
    """Its metrics.json was updated, but summary.md/.csv kept the old row, saying nothing."""
    sweep = tmp_path / "sweep"
    common = [*FAST, "eval.n_generated=1000", "mode.val_every_rounds=10", "callbacks.point_cloud_plots.n_points=100"]
    cmd = [sys.executable, "train.py", "-m", "matcher=exact,random", *common, "trainer.max_steps=10",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = list(csv.DictReader(open(sweep / "summary.csv")))
    job = sweep / "1"
    cmd = [sys.executable, "train.py", "matcher=random", *common, "trainer.max_steps=30",
           f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={job}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the sweep's summary is rewritten with its new row" in proc.stdout + proc.stderr
    after = list(csv.DictReader(open(sweep / "summary.csv")))
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["steps"] == 30
    assert float(after[1]["val/w2"]) == pytest.approx(metrics["val/w2"]) != float(before[1]["val/w2"])
    assert after[0] == {**before[0], "trainer.max_steps": "10"}, "job 0 as it was; the jobs' lengths now differ"
    assert after[1]["matcher"] == "random" and after[1]["trainer.max_steps"] == "30"
    assert "ckpt_path" not in after[1], "how a job was restarted is no choice of the sweep"
