"""Test helpers: compose the real conf/ exactly as train.py does, with tiny sizes."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# The project's real data: ../shared/data beside the checkout (as in CI), or $OT_GEN_TEST_DATA.
SHARED = Path(os.environ.get("OT_GEN_TEST_DATA", ROOT.parent / "shared" / "data"))
HAS_SHARED = (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
needs_shared = pytest.mark.skipif(not HAS_SHARED, reason=f"no test data at {SHARED}")

@contextmanager
def reaped(proc: subprocess.Popen):
    """For a subprocess started with `start_new_session=True`: however the block ends, its
    process group is gone afterwards (SIGKILLed if still running), so no run outlives a test."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


# Every picture and figure callback off, the checkpoint callbacks kept (callbacks=none drops
# those too): a run whose checkpoint another run reads (a teacher flow), quickly.
NO_PICTURES = ["callbacks.frechet_classifier=null", "callbacks.memorization=null", "callbacks.latent_traversals=null",
               "callbacks.code_space=null", "callbacks.image_grids=null", "callbacks.summary_figure=null"]

# Small and fast, but real: real data, real solver, real Lightning loop.
FAST = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "data.n_train=2000",
    "val_samples=500",
    "eval.n_generated=5000",
    "eval.w1_reals=500",
]


def make_config(*overrides: str, out_dir: Path, fast: bool = True) -> DictConfig:
    """The composed train config, as `python train.py <overrides>` would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*(FAST if fast else []), *overrides, f"paths.output_dir={out_dir}"],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """No W&B account in tests: force offline and keep W&B's own files in tmp."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def config(tmp_path):
    """`config("mode=oversampled", ...)` -> a composed config writing under tmp_path."""
    counter = iter(range(1000))

    def factory(*overrides: str, fast: bool = True) -> DictConfig:
        return make_config(*overrides, out_dir=tmp_path / f"run{next(counter)}", fast=fast)

    return factory


def python_env() -> dict[str, str]:
    """The environment for a train.py subprocess: like a user's shell. In particular not
    WANDB_SERVICE, which W&B sets in this process once a test ran it in-process: a child
    would share this process's W&B service, which outlives a killed child and keeps its
    run id busy."""
    env = dict(os.environ)
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_SERVICE", None)
    return env


# -- image data on disk, made by the tests ----------------------------------------------------
def write_cifar(root, n_per_batch=20, batches=2):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": list(rng.integers(0, 10, n_per_batch))}
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return base


def write_folder(root):
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / f"rgb{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(root / "sub" / "gray.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG garbage")
    return root
