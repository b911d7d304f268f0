"""Logger construction and the one place that sends a picture to whichever loggers are active."""

from __future__ import annotations

import logging
import netrc
import os
import socket
import threading
from urllib.parse import urlsplit
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from torchvision.utils import save_image

from ot_gen.errors import check_choice

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
    logger = WandbLogger(offline=mode == "offline", **kwargs)
    # Lightning passes anonymous=None, which W&B now warns about ("has no effect"); unset it.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def log_picture(loggers: list[Logger], out_dir: Path, key: str, picture: Figure | torch.Tensor, step: int) -> Path:
    """Save a matplotlib figure or an image tensor (C, H, W) in [0, 1] as
    `out_dir/plots/<name>_step<step>.png` (name: the last part of `key`) and send it to
    every logger that shows pictures (W&B as wandb.Image, TensorBoard as figure/image)."""
    path = Path(out_dir) / "plots" / f"{key.rsplit('/', 1)[-1]}_step{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(picture, Figure):
        picture.savefig(path, dpi=100)  # no bbox_inches="tight": a second layout pass, ~40% of the save
    else:
        save_image(picture, path)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            if isinstance(picture, Figure):
                logger.experiment.add_figure(key, picture, global_step=step)
            else:
                logger.experiment.add_image(key, picture.clamp(0, 1), global_step=step)
    return path
