"""W&B as the runs use it: every run's file complete on disk when train() returns, the
environment left alone."""

from __future__ import annotations

import os

import pytest

from ot_gen.run import loggers
from ot_gen.run.train import _finish_wandb


def test_a_finished_wandb_run_is_on_disk_when_train_returns(tmp_path):
    """wandb.finish() returns before W&B's service has written the run out (in about one
    read of eight the offline file held only its header): train() closes the service too."""
    import wandb
    from wandb_offline import OfflineRun

    for i in range(6):
        run = wandb.init(project="ot_gen", dir=tmp_path / str(i), mode="offline")
        for step in range(20):
            run.log({"x": step})
        _finish_wandb()
        (run_dir,) = (tmp_path / str(i) / "wandb").glob("offline-run-*")
        logged = OfflineRun.read(run_dir)
        assert (logged.exit_code, len(logged.history)) == (0, 20)


def test_an_offline_logger_leaves_the_environment_alone_and_refuses_log_model(tmp_path, monkeypatch):
    """Lightning's offline=True would set WANDB_MODE=dryrun for the rest of the process (and
    its children): the mode goes to wandb.init instead."""
    from ot_gen.errors import ConfigError

    monkeypatch.delenv("WANDB_MODE")
    logger = loggers.wandb_logger(mode="offline", save_dir=str(tmp_path), project="ot_gen")
    assert logger.experiment.settings.mode == "offline" and "WANDB_MODE" not in os.environ
    _finish_wandb()
    with pytest.raises(ConfigError, match="log_model"):
        loggers.wandb_logger(mode="offline", save_dir=str(tmp_path), log_model=True)
