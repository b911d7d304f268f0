"""A DDP rank that died (killed, out of memory): the ranks left say so in one line, which
rank it was when they can tell, and which checkpoint resumes the run, instead of gloo's
"Connection closed by peer" traceback."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import lightning as L
import torch

from ot_gen.errors import OTGenError

# What gloo and NCCL say when the process at the other end of a collective is gone.
_PEER_GONE = re.compile(r"Connection (closed|reset) by peer|remote worker crash|Broken pipe|NCCL communicator was "
                        r"aborted|ProcessGroupNCCL.*(watchdog|abort)", re.IGNORECASE)


class PeerLost(OTGenError):
    """Another process of a distributed run died; this one stopped."""


def lost_peer(e: BaseException) -> bool:
    """Whether `e` is a collective failing because another rank is gone."""
    return isinstance(e, RuntimeError) and bool(_PEER_GONE.search(str(e))) and _distributed()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def who_died(trainer: L.Trainer, parent_pid: int) -> str:
    """Rank 0 knows its children (Lightning's launcher started them): the ones that ended
    and how. Another rank knows that rank 0 is gone when it was adopted by another
    parent. Otherwise: "a peer"."""
    procs = getattr(trainer.strategy.launcher, "procs", None) or []
    dead = []
    for rank, proc in enumerate(procs, start=1):
        if proc.poll() is not None and proc.returncode != 0:
            code = proc.returncode
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            dead.append(f"rank {rank} (process {proc.pid}, {how})")
    if dead:
        return " and ".join(dead)
    if trainer.global_rank != 0 and os.getppid() != parent_pid:
        return f"rank 0 (process {parent_pid})"
    return "a peer rank"


def message(trainer: L.Trainer, parent_pid: int, error: BaseException) -> str:
    """One line: who died, at which step this rank stopped, what resumes the run."""
    last = None
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
    resume = "no checkpoint was saved yet: start the run again"
    if last is not None and last.is_file():
        try:
            step = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step", "?")
        except Exception:
            step = "?"
        resume = f"checkpoints/last.ckpt (step {step}) resumes the run: ckpt_path={last}"
    seen = _PEER_GONE.search(str(error))
    return (f"distributed run: {who_died(trainer, parent_pid)} died; rank {trainer.global_rank} stopped at step "
            f"{trainer.global_step} ({torch.distributed.get_backend()}: {seen.group(0) if seen else error}). {resume}")
