"""The loggers a run writes to: W&B online when logged in, offline otherwise."""

from __future__ import annotations

import logging
import netrc
import os
import socket
import threading
from urllib.parse import urlsplit
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger

from ot_gen.errors import check, check_choice

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True when W&B credentials are present (WANDB_API_KEY or a ~/.netrc entry)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def wandb_unreachable(timeout: float = 5.0) -> str | None:
    """Why the W&B server cannot be reached (None when a TCP connection opens within
    `timeout` s). wandb.init itself would wait 90 s and then fail with a traceback."""
    url = urlsplit(wandb_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:  # the name lookup ignores socket timeouts: bounded by the join below
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e.strerror or str(e) or type(e).__name__)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _sweep_identity(kwargs: dict) -> dict:
    """In a Hydra multirun, the W&B runs of one sweep share a group (the task and the sweep
    folder's name) and each is named by its job number and overrides, unless the config
    sets `group` / `name`: the dashboard shows a sweep as one, not as unrelated names."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hc = HydraConfig.get()
    overrides = hc.job.get("override_dirname") or ""
    return {"group": kwargs.get("group") or f"{hc.job.name} {Path(hc.sweep.dir).name}",
            "name": kwargs.get("name") or f"{hc.job.num}: {overrides}".rstrip(": ")}


def wandb_logger(mode: str = "auto", **kwargs) -> WandbLogger:
    """A Lightning `WandbLogger`, online when logged in to W&B and offline otherwise.

    `mode`: auto | online | offline. Offline runs are written under `save_dir/wandb/` and
    uploaded later with `wandb sync <that dir>`. An explicit WANDB_MODE wins over auto.
    """
    check_choice("mode", mode, ["auto", "online", "offline"])
    if mode == "auto":
        env = os.environ.get("WANDB_MODE")
        mode = env if env in ("online", "offline") else ("online" if wandb_logged_in() else "offline")
    save_dir = Path(kwargs.get("save_dir", "."))
    save_dir.mkdir(parents=True, exist_ok=True)
    if mode == "online":
        unreachable = wandb_unreachable()
        if unreachable:
            log.warning("W&B server %s cannot be reached (%s): logging offline under %s; upload later with "
                        "`wandb sync`", wandb_url(), unreachable, save_dir / "wandb")
            mode = "offline"
    import wandb

    kwargs.setdefault("settings", wandb.Settings(quiet=True))  # no run history and summary tables on the console
    kwargs.update(_sweep_identity(kwargs))
    check(not (mode == "offline" and kwargs.get("log_model")), "log_model", kwargs.get("log_model"),
          "false when W&B logs offline (checkpoints are uploaded as artifacts only online)")
    # The mode goes to wandb.init: Lightning's offline=True would set WANDB_MODE=dryrun in
    # the process environment, where it outlives the run (the next jobs of a multirun, child
    # processes).
    logger = WandbLogger(mode=mode, **kwargs)
    # Lightning passes anonymous=None, which W&B now warns about ("has no effect"); unset it.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger
