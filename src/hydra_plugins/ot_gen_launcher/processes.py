"""`hydra/launcher=processes`: a multirun's jobs in parallel, each in a process of its own.

joblib's launcher runs jobs in loky's shared worker pool: when one worker dies (killed by
the kernel's out-of-memory killer, or by hand), loky breaks the pool, the jobs running
beside it are lost and the sweep ends in a traceback without its summary. Here each job is
a forked process of its own, at most `n_jobs` at a time, and the launcher waits on each:

- a job whose process ends without a result (SIGKILL, a segfault) is a failed row of
  the summary, with `failed.txt` saying how it ended; the jobs beside it and after it run;
- SIGTERM or Ctrl-C to the sweep reaches the running jobs (each saves `last.ckpt` and is
  an `interrupted` row), no further job starts, the summary of the jobs started is
  written, the sweep says which jobs never ran, and exits 143 (SIGTERM) or 130 (Ctrl-C).

Fork, so that nothing needs pickling: the sweep process has not touched a GPU.
"""

import logging
import multiprocessing
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class ProcessLauncherConf:
    _target_: str = "hydra_plugins.ot_gen_launcher.processes.ProcessLauncher"
    n_jobs: int = 2  # jobs at a time


ConfigStore.instance().store(group="hydra/launcher", name="processes", node=ProcessLauncherConf, provider="ot_gen")


def _job(conn, launcher: "ProcessLauncher", idx: int, overrides: Sequence[str], singleton_state: dict) -> None:
    """In the job's process: compose its config, say where it runs, run it, send the result."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the sweep's handlers are not the job's
    signal.signal(signal.SIGINT, signal.default_int_handler)
    setup_globals()
    Singleton.set_state(singleton_state)
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id, config.hydra.job.num = f"{config.hydra.job.name}_{idx}", idx
    HydraConfig.instance().set_config(config)
    conn.send(str(Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
                  / str(OmegaConf.select(config, "hydra.sweep.subdir"))))
    ret = run_job(hydra_context=launcher.hydra_context, config=config, task_function=launcher.task_function,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    value = ret._return_value
    if ret.status == JobStatus.FAILED:  # an exception the task did not turn into a row: its words, not its object
        value = RuntimeError(f"{type(value).__name__}: {value}")
    # What a sweeper reads of a job (its configs hold classes that do not pickle by name).
    conn.send(JobReturn(overrides=list(overrides), working_dir=ret.working_dir, task_name=ret.task_name,
                        status=ret.status, _return_value=value))
    conn.close()


def _ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        cause = " (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else ""
        return f"the job's process was killed by {name}{cause} before it finished"
    return f"the job's process exited with status {exitcode} before it finished"


class ProcessLauncher(Launcher):
    def __init__(self, n_jobs: int = 2) -> None:
        if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1:
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs!r} is not allowed: a positive integer (jobs at a time)")
        self.n_jobs = n_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.stopped_by: str | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("launching %d jobs, %d at a time, each in its own process; sweep dir %s", len(job_overrides),
                 self.n_jobs, sweep_dir)
        for i, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))
        context = multiprocessing.get_context("fork")
        state = Singleton.get_state()
        pending = deque((initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides))
        running: dict[int, tuple[Any, Any, list[str]]] = {}
        job_dirs: dict[int, str] = {}
        results: dict[int, JobReturn] = {}
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def stop(signum, frame) -> None:
            first = self.stopped_by is None
            self.stopped_by = self.stopped_by or signal.Signals(signum).name
            if first:
                log.warning("%s: no further job starts; waiting for the %d running job(s) to save and stop",
                            self.stopped_by, len(running))
            if signum == signal.SIGTERM:  # a terminal's Ctrl-C reaches the jobs itself
                for proc, _, _ in running.values():
                    if proc.is_alive():
                        os.kill(proc.pid, signal.SIGTERM)

        for s in previous:
            signal.signal(s, stop)
        try:
            while running or (pending and not self.stopped_by):
                while pending and len(running) < self.n_jobs and not self.stopped_by:
                    idx, overrides = pending.popleft()
                    parent, child = context.Pipe(duplex=False)
                    proc = context.Process(target=_job, args=(child, self, idx, overrides, state), name=f"job {idx}")
                    proc.start()
                    child.close()
                    running[idx] = (proc, parent, overrides)
                self._collect(running, job_dirs, results)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        never = [idx for idx, _ in pending]
        if self.stopped_by:
            self._stop_sweep(sweep_dir, never)
        return [results[i] for i in sorted(results)]

    def _collect(self, running, job_dirs, results) -> None:
        """Wait until a job sends something or ends; take its result, or make it a failed row."""
        ready = set(wait([conn for _, conn, _ in running.values()] + [p.sentinel for p, _, _ in running.values()],
                         timeout=1.0))
        for idx, (proc, conn, overrides) in list(running.items()):
            while conn in ready or conn.poll():
                ready.discard(conn)
                try:
                    message = conn.recv()
                except EOFError:
                    break
                if isinstance(message, str):
                    job_dirs[idx] = message
                else:
                    results[idx] = message
            if proc.is_alive() or proc.exitcode is None:
                continue
            proc.join()
            conn.close()
            del running[idx]
            if idx not in results:
                results[idx] = self._lost(idx, overrides, job_dirs.get(idx), proc.exitcode)

    def _lost(self, idx: int, overrides: list[str], job_dir: str | None, exitcode: int | None) -> JobReturn:
        """The row of a job whose process ended without a result: `failed.txt` says how
        (unless the job itself recorded why it stopped), and the sweeper sees inf."""
        reason = _ended(exitcode)
        if job_dir is not None:
            path = Path(job_dir)
            if path.is_dir() and not (path / "interrupted.txt").exists() and not (path / "failed.txt").exists():
                saved = " (its last checkpoint is in checkpoints/)" if (path / "checkpoints").is_dir() else ""
                (path / "failed.txt").write_text(reason + saved + "\n")
        if exitcode != 128 + signal.SIGTERM and exitcode != -signal.SIGTERM:
            log.error("job %d: %s; the other jobs go on", idx, reason)
        return JobReturn(overrides=overrides, working_dir=job_dir, status=JobStatus.COMPLETED,
                         _return_value=float("inf"))

    def _stop_sweep(self, sweep_dir: Path, never: list[int]) -> None:
        from ot_gen.launch.sweep_summary import summarize

        rows = summarize(sweep_dir)
        done = sum(r["status"] == "ok" for r in rows)
        not_run = f"jobs {', '.join(map(str, never))} never ran" if never else "every job had started"
        log.error("sweep stopped by %s: %d job(s) finished, %d stopped; %s; summary of the jobs started: %s",
                  self.stopped_by, done, len(rows) - done, not_run, sweep_dir / "summary.md")
        sys.exit(143 if self.stopped_by == "SIGTERM" else 130)
