"""One run, one folder: a Hydra callback that claims the run dir (or the sweep dir) before
Hydra writes anything into it.

- A folder that already holds a run (its `.hydra/`, `metrics.json` or checkpoints) is
  refused unless the run resumes a checkpoint inside it (`ckpt_path=`) or the user says
  `overwrite=true` (then that run's files are removed first, nothing else). A run that
  ended before saving anything (no checkpoint, no metrics) is no run to protect: one that
  failed (its `failed.txt`: a config typo) or was killed (its `.hydra/run.lock` no longer
  held: every run holds a lock on it while its process lives) has its files replaced.
- The claim is atomic (an exclusive `mkdir` of `.hydra/`, an exclusive create of
  `multirun.yaml`): two runs started in the same second, in two terminals, never share
  the default folder; the second gets `<name>_2` (`_3`, ...). A folder the user named
  is refused instead.
- A folder that cannot be written is refused, naming it, before any work starts.

Every refusal is one line on stderr and exit code 2, as for any config error.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ot_gen.run.checkpoints import resolve_ckpt_path
from ot_gen.errors import ConfigError

log = logging.getLogger(__name__)

RUN_FILES = ("metrics.json", "metrics.json.tmp", "checkpoints", "plots", "wandb", "tensorboard", "csv", ".hydra",
             "failed.txt", "interrupted.txt")
SWEEP_FILES = ("multirun.yaml", "summary.csv", "summary.md", "optimization_results.yaml")


def holds_run(folder: Path) -> list[str]:
    """What in `folder` shows that a run was started there (empty: nothing)."""
    found = [name for name in (".hydra", "metrics.json") if (folder / name).exists()]
    if any((folder / "checkpoints").glob("*.ckpt")):
        found.append("checkpoints/")
    return found


def _user_set(config: DictConfig, key: str) -> bool:
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _resumes_from(config: DictConfig, folder: Path) -> bool:
    ckpt = config.get("ckpt_path")
    try:
        path = resolve_ckpt_path(ckpt, folder.parent)
    except ConfigError:  # no such file: the build says so, naming the key
        path = None if ckpt == "last" else Path(str(ckpt))
    return path is not None and folder.resolve() in path.resolve().parents


def _fail(key: str, value: Any, allowed: str) -> None:
    print(f"ConfigError: {ConfigError(key, str(value), allowed)}", file=sys.stderr)
    sys.exit(2)


def _check_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        _fail(key, folder, f"a folder this run can write to ({e.strerror or e})")


def _claim(folder: Path, marker: str, exclusive_dir: bool) -> bool:
    """Create `folder/marker` exclusively; False when it already exists."""
    try:
        if exclusive_dir:
            (folder / marker).mkdir()
        else:
            os.close(os.open(folder / marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def claim(config: DictConfig, key: str, marker: str, exclusive_dir: bool) -> Path:
    """Claim the folder at `config.<key>` for this run (see the module docstring); returns
    the folder claimed, which differs from the configured one after a same-second clash."""
    if not str(OmegaConf.select(config, key) or "").strip():
        _fail(key, "", "a folder (empty would put the run's files in the current directory)")
    base = Path(str(OmegaConf.select(config, key)))
    explicit = _user_set(config, key)
    overwrite = bool(config.get("overwrite", False))
    folder = base
    for attempt in range(2, 1000):
        _check_writable(folder, key)
        held = holds_run(folder) if exclusive_dir else [m for m in (marker,) if (folder / m).exists()]
        saved_nothing = exclusive_dir and held == [".hydra"]  # no checkpoint, no metrics.json
        if saved_nothing and ((folder / "failed.txt").exists() or _owner_gone(folder)):
            if not (folder / "failed.txt").exists():
                log.warning("%s=%s held a run that ended before saving anything (no checkpoint, no metrics.json: "
                            "killed before its first checkpoint); its files are replaced by this run's", key, folder)
            _remove_run(folder, config.hydra.job.name, sweep=False)
            held = []
        if held and (overwrite or (exclusive_dir and _resumes_from(config, folder))):
            if overwrite:
                _remove_run(folder, config.hydra.job.name, sweep=not exclusive_dir)
            _claim(folder, marker, exclusive_dir)
            return _held(folder) if exclusive_dir else folder
        if not held and _claim(folder, marker, exclusive_dir):
            return _held(folder) if exclusive_dir else folder
        if explicit:
            _fail(key, folder, _what_to_do(folder, held, marker, exclusive_dir))
        folder = base.with_name(f"{base.name}_{attempt}")
    raise RuntimeError(f"no free folder next to {base}")


def _what_to_do(folder: Path, held: list[str], marker: str, exclusive_dir: bool) -> str:
    """The refusal of a folder the user named, with what exactly to do."""
    if not exclusive_dir:
        return (f"a folder without a sweep; it holds one ({marker}). Pass overwrite=true to replace it, or choose "
                "another folder")
    owner = _owner(folder)
    if held == [".hydra"]:
        now = f"a run is in progress in it (process {owner})" if owner else \
            "it holds a run that saved nothing yet (no checkpoint, no metrics.json), which may still be running"
        return (f"a folder without a run; {now}. When that run is over, pass overwrite=true to replace it; "
                "or choose another folder")
    last = folder / "checkpoints" / "last.ckpt"
    resume = f"Resume it with ckpt_path={last}, " if last.is_file() else ""
    running = f" (in progress: process {owner})" if owner else ""
    return (f"a folder without a run; it holds one ({', '.join(held)}){running}. {resume}pass overwrite=true to "
            "replace it, or choose another folder")


# -- a run's hold on its folder: a lock its process keeps until it ends (a kill included) --------
LOCK = ".hydra/run.lock"
_locks: dict[Path, Any] = {}  # folder -> the open lock file of this process's claim


def _held(folder: Path) -> Path:
    """Take the lock of a folder just claimed: held until this process ends, so a later run
    can tell a run in progress from one that was killed (its lock released by the kernel)."""
    try:
        lock = open(folder / LOCK, "a+")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        _locks[folder.resolve()] = lock
    except OSError:
        log.debug("no lock on %s (a file system without flock): a killed run there stays refused", folder)
    return folder


def _owner(folder: Path) -> int | None:
    """The process that holds `folder`'s lock, when one does."""
    path = folder / LOCK
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                text = f.read().strip()
                return int(text) if text.isdigit() else -1
    except OSError:
        return None


def _owner_gone(folder: Path) -> bool:
    """Whether the run that claimed `folder` has ended: its lock file is there and no
    process holds it. A folder without a lock file (made before the lock existed, or in
    the instant between the claim and the lock) is never taken for abandoned."""
    return (folder / LOCK).is_file() and folder.resolve() not in _locks and _owner(folder) is None


def _remove_run(folder: Path, job_name: str, sweep: bool) -> None:
    """overwrite=true: the files a run (a sweep: its tables and every job folder's run
    files) wrote in `folder`; nothing else, so a job folder that holds a user's own file
    stays with that file."""
    names = (*SWEEP_FILES, f"{job_name}.log") if sweep else (*RUN_FILES, f"{job_name}.log")
    for name in names:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    if sweep:
        for job in (p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
            _remove_run(job, job_name, sweep=False)
            if not any(job.iterdir()):
                job.rmdir()


def _secondary_rank() -> bool:
    """A process started by a distributed launcher as another rank of the same job
    (Lightning's DDP launcher runs train.py again for rank 1, ... in the same run dir)."""
    for var in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID"):
        try:
            if int(os.environ.get(var, "0")) != 0:
                return True
        except ValueError:
            pass
    return False


class RunDirGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _secondary_rank():
            return  # rank 0 claimed the folder for the whole job
        folder = claim(config, "hydra.run.dir", ".hydra", exclusive_dir=True)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = claim(config, "hydra.sweep.dir", "multirun.yaml", exclusive_dir=False)
        if str(folder) != str(OmegaConf.select(config, "hydra.sweep.dir")):
            # the jobs' configs are composed again from the overrides: make the new folder one
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweep.dir = str(folder)
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={folder}")
