"""SIGTERM (a cluster pre-empting the job) stops a run within seconds, in one process or
under DDP, in training, in a validation (one process: at once; under DDP at the end of
it) or in the final evaluation, keeping what is saved. Under DDP, Ctrl-C (SIGINT, sent by
a terminal to every rank) stops the same way, and exits 130; a second Ctrl-C stops every
rank at once without saving.

In training, `SaveOnInterrupt` (checkpoints.py) saves `last.ckpt` once Lightning raises
its `SIGTERMException`; this module makes every rank raise it at the same point of the
loop. After training, `stops_on_sigterm` turns a SIGTERM or SIGINT into that exception at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message

log = logging.getLogger(__name__)


# The signal that stopped this process's run, if one did: a Ctrl-C under DDP ends in the
# same SIGTERMException as a SIGTERM, and `run.train.task` exits 130 for it.
stopped_by: str | None = None
SECOND_CTRL_C_AFTER_S = 2.0  # a terminal's Ctrl-C reaches a rank twice (directly, and forwarded by rank 0)


class NotingSignalConnector(_SignalConnector):
    """Lightning's signal connector, whose SIGTERM handler (and under DDP, SIGINT's) only
    takes note.

    Lightning's own handler (2.6) calls `torch.distributed.broadcast` from inside the
    handler, at whatever point the signal interrupts the rank. The other rank is then in
    a different collective (its gradient all-reduce, the oversampled round's gather), or
    runs the handler's broadcast twice when the signal reached it both from the shell and
    forwarded by rank 0: the collectives pair wrongly and every rank waits forever. Here
    the handler forwards the signal to the ranks this process launched and notes it;
    `Preemption` makes the ranks agree at the end of a training batch."""

    def __init__(self, trainer: L.Trainer):
        super().__init__(trainer)
        self.noted = False

    def register_signal_handlers(self) -> None:
        super().register_signal_handlers()  # keeps every signal's handler, SIGINT's too, for teardown
        self.noted = False
        self.first_sigint: float | None = None
        # Under DDP a Ctrl-C's KeyboardInterrupt would hit each rank at a different point
        # (one inside a collective, waiting for the other): note it like a SIGTERM instead.
        # A shell's background job (SIGINT ignored) keeps ignoring it.
        if (self.trainer.world_size > 1 and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
            signal.signal(signal.SIGINT, self._sigint_fn)

    def _sigint_fn(self, signum, frame) -> None:
        now = time.monotonic()
        if self.first_sigint is not None and now - self.first_sigint > SECOND_CTRL_C_AFTER_S:
            log.warning(rank_prefixed_message("second Ctrl-C: stopping every rank now, without saving (the last "
                                              "saved checkpoint stays)", self.trainer.local_rank))
            if self.trainer.strategy.launcher is not None:
                self.trainer.strategy.launcher.kill(signal.SIGKILL)
            os._exit(128 + signal.SIGINT)
        self.first_sigint = self.first_sigint or now
        self._note(signum, "SIGINT")

    def _sigterm_notifier_fn(self, signum, frame) -> None:
        self._note(signum, "SIGTERM")

    def _note(self, signum, name: str) -> None:
        global stopped_by
        log.info(rank_prefixed_message(f"Received {name}: {signum}", self.trainer.local_rank))
        if not self.noted and self.trainer.strategy.launcher is not None:
            self.trainer.strategy.launcher.kill(signum)
        self.noted = True
        stopped_by = stopped_by or name
        if self.trainer.world_size == 1:
            self.received_sigterm = True  # one process: Lightning stops after this batch
            if self.trainer.validating:
                # A validation can take minutes (an image run's classifier, its k-means):
                # Lightning would finish it first. One process can stop here; the EMA's
                # checkpoint hook knows the average is swapped in and saves both.
                raise SIGTERMException()


class Preemption(L.Callback):
    """Installs `NotingSignalConnector`, and after every training batch turns the ranks'
    notes into one decision (any rank signalled: all stop), taken by every rank at the
    same point, so they raise `SIGTERMException` together and `SaveOnInterrupt` saves
    `last.ckpt` once (a collective save) before every rank exits."""

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        global stopped_by
        if stage == "fit":
            stopped_by = None  # a new run (tests run several in one process)
        if not isinstance(trainer._signal_connector, NotingSignalConnector):
            trainer._signal_connector = NotingSignalConnector(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        connector = trainer._signal_connector
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([int(connector.noted)], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            connector.received_sigterm = bool(flag.item())


@contextmanager
def stops_on_sigterm(trainer: L.Trainer, phase: str, kept: str) -> Iterator[None]:
    """While in the block (the final validation and evaluation, outside Lightning's loop),
    a SIGTERM raises `SIGTERMException` at once, after forwarding it to the launched ranks.
    `kept` says what stays saved; logged once by rank zero."""

    def handler(signum, frame):
        global stopped_by
        if trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)
        stopped_by = signal.Signals(signum).name
        raise SIGTERMException()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(s, handler)
    try:
        yield
    except SIGTERMException:
        if trainer.is_global_zero:
            log.warning("%s during %s: stopped; %s", stopped_by or "SIGTERM", phase, kept)
        raise
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
