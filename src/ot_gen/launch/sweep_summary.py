"""A Hydra callback that tabulates a multirun: one row per job, its overrides and final
metrics, written as `summary.csv` and `summary.md` in the sweep directory, and says how
the sweep went: "N of M jobs failed" (exit status 1 when every job failed), or, when a
SIGTERM stopped it, which job it stopped and that the jobs after it never ran (exit
status 143, the shell's code for SIGTERM). A sweep that ends in an error before its end
(a launcher whose worker pool broke) still gets the table of the jobs it started, at exit."""

from __future__ import annotations

import atexit
import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ot_gen.errors import Interrupted

log = logging.getLogger(__name__)

COLUMNS = ("val/w2", "val/w2_ratio", "val/energy", "s_per_round", "train/solve_s", "train/dropped", "wall_s")
# Columns a sweep gets when any of its jobs logged them: image quality beside its
# memorization figures and class balance, what a partial or unbalanced matcher left
# untransported, and how many components an adaptive prior uses.
WHEN_LOGGED = ("val/frechet_classifier", "val/recall_classifier", "val/train_distance_ratio", "val/near_copies",
               "val/class_imbalance", "train/untransported_real", "train/untransported_generated",
               "train/prior_effective_components")


NO_REASON = "ended without metrics.json or a recorded reason: its process was killed, or the sweep was stopped"
_written: set[Path] = set()  # the sweep dirs whose summary this process has written


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory: its number, one column per override that differs
    between jobs (the sweep's choices), and its metrics. A job that failed before writing
    metrics.json gets status `failed` (`interrupted` when a SIGTERM stopped it), empty
    metrics and its one-line reason (`error`)."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    choices = [_overrides(job) for job in jobs]
    keys = list(dict.fromkeys(k for c in choices for k in c))
    varying = [k for k in keys if len({c.get(k) for c in choices}) > 1]
    rows = []
    all_metrics = [_metrics(job) for job in jobs]
    columns = COLUMNS + tuple(c for c in WHEN_LOGGED if any(c in m for m in all_metrics))
    for job, chosen, metrics in zip(jobs, choices, all_metrics):
        row = {"job": int(job.name), **{k: chosen.get(k, "") for k in varying}}
        interrupted, failed = job / "interrupted.txt", job / "failed.txt"
        row["status"] = "ok" if metrics else "interrupted" if interrupted.exists() else "failed"
        row.update({c: metrics.get(c, "") for c in columns})
        reason = interrupted if interrupted.exists() else failed
        row["error"] = "" if metrics else reason.read_text().strip() if reason.exists() else NO_REASON
        rows.append(row)
    return rows


def _metrics(job: Path) -> dict[str, Any]:
    path = job / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


NOT_CHOICES = ("ckpt_path", "overwrite")  # how a job was (re)started, not what it trains


def _overrides(job: Path) -> dict[str, str]:
    path = job / ".hydra" / "overrides.yaml"
    items = OmegaConf.load(path) if path.exists() else []
    pairs = (str(item).split("=", 1) for item in items if "=" in str(item))
    # Hydra's sweeper writes a job's booleans as Python does (False), a run as typed (false)
    return {k: {"True": "true", "False": "false"}.get(v, v) for k, v in pairs if k.lstrip("+~") not in NOT_CHOICES}


def write(rows: list[dict[str, Any]], sweep_dir: Path) -> None:
    if not rows:
        return
    fields = list(rows[0])
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(fields) + " |", "|" + " --- |" * len(fields)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in fields) + " |" for r in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    _written.add(sweep_dir.resolve())


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """`collect` and `write`: the table of the jobs in `sweep_dir` as they stand; its rows."""
    rows = collect(sweep_dir) if sweep_dir.is_dir() else []
    write(rows, sweep_dir)
    return rows


def _refresh_sweep_of(run_dir: Path) -> None:
    """When `run_dir` is a job folder of a sweep that has a summary (`<sweep>/<n>/`
    beside `multirun.yaml`), write the sweep's summary again: its rows stay those of
    the jobs as they stand, never a finished job's old figures."""
    sweep_dir = run_dir.parent
    if not (run_dir.name.isdigit() and (sweep_dir / "multirun.yaml").is_file() and (sweep_dir / "summary.csv").exists()):
        return
    if any(os.environ.get(v, "0") not in ("0", "") for v in ("LOCAL_RANK", "RANK")):
        return  # rank 0 writes it
    summarize(sweep_dir)
    log.info("job %s of the sweep %s ran again: the sweep's summary is rewritten with its new row (%s)",
             run_dir.name, sweep_dir, sweep_dir / "summary.md")


def _summary_if_missing(sweep_dir: Path) -> None:
    """At the exit of a sweep process that never reached `on_multirun_end` (a launcher or
    sweeper raised: joblib's pool broken by a killed worker, say): the jobs' table all the same."""
    if sweep_dir.resolve() in _written:
        return
    rows = summarize(sweep_dir)
    if rows:
        log.error("the sweep ended before all its jobs did (the error above); summary of the %d job(s) started: %s",
                  len(rows), sweep_dir / "summary.md")


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.register(_summary_if_missing, Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = summarize(sweep_dir)
        failed = sum(r["status"] != "ok" for r in rows)
        log.info("sweep summary of %d jobs: %s", len(rows), sweep_dir / "summary.md")
        if failed:
            (log.error if failed == len(rows) else log.warning)(
                "%d of %d jobs failed (the reason of each: the error column of %s)", failed, len(rows),
                sweep_dir / "summary.md")
        if rows and failed == len(rows):
            log.error("no job of the sweep succeeded: a sweeper's 'best' above is not a result")
            sys.exit(1)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A job stopped by SIGTERM stops the sweep: its summary so far, then exit 143. A
        single run in a job folder of a sweep (a job resumed, or run again, in its own
        folder): the sweep's summary rewritten with its new row."""
        if config.hydra.mode == RunMode.RUN:
            _refresh_sweep_of(Path(config.hydra.runtime.output_dir))
            return
        if not isinstance(job_return._return_value, Interrupted):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize(sweep_dir)
        done = sum(r["status"] == "ok" for r in rows)
        log.error("sweep stopped by SIGTERM in job %s (%s); %d job(s) finished before it, the jobs after it "
                  "never ran; summary of the jobs started: %s", config.hydra.job.num, job_return._return_value,
                  done, sweep_dir / "summary.md")
        sys.exit(143)
