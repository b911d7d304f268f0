"""Write N samples of a trained generator to a .npy file (and optionally a PNG): the task
behind `python -m ot_gen.sample` (conf/sample.yaml).

    python -m ot_gen.sample ckpt_path=PATH n=100000 out=samples.npy [png=grid.png]
                            [batch=10000] [device=auto|cpu|cuda] [seed=0]

The module is rebuilt from the run record in the checkpoint (its config and the data's
description) by `run.build.build_module`, the code that built it for training, and loaded
whole. The array has shape (N, *data_shape) in the data's value range (images are
clamped to it); a code-space run's samples are decoded images, or with `codes=true` the
generator's codes. Samples are generated `batch` at a time straight into a memory-mapped
.npy file, so 100,000 CIFAR-size samples never sit in memory at once.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from ot_gen.errors import ConfigError, OTGenError, check, check_choice, check_positive_int
from ot_gen.evaluation.pictures import class_grid
from ot_gen.model.module import OTGenerator
from ot_gen.run import run_record
from ot_gen.run.build import module_of_checkpoint


def load_module(ckpt_path: str | Path, device: str = "cpu") -> tuple[OTGenerator, run_record.DataInfo]:
    """(the trained module in eval mode, the description of its data) from a checkpoint."""
    module, record = module_of_checkpoint(ckpt_path, device)
    return module, record.data


def _partial(path: Path) -> Path:
    """Where `path` is written before it is renamed into place (same folder, same suffix)."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


@torch.no_grad()
def write_samples(ckpt_path, n: int, out, batch: int = 10_000, device: str = "cpu", seed: int = 0,
                  png=None, label: int | None = None, solver: str | None = None, steps: int | None = None,
                  codes: bool = False) -> np.ndarray:
    """Write the samples to `out` (and the picture of the first ones to `png`), each first
    under a `.partial` name, its whole size reserved on disk before any sample is
    generated, then renamed into place: a failure (a full disk, a signal) leaves no
    truncated output, and an existing file is replaced only by a complete one. Returns the
    array, memory-mapped. `label`: samples of that class only (a class-conditional run);
    without it such a run's picture shows one row per class. `solver`, `steps`: a flow's
    ODE integrated otherwise than it was trained to be. `codes`: a code-space run's codes,
    not decoded."""
    module, data = load_module(ckpt_path, device)
    check(isinstance(codes, bool), "codes", codes, "true or false")
    check(not codes or module.decoder is not None, "codes", codes,
          "false: this checkpoint's run has no autoencoder stage (its samples are the data)")
    shape, value_range = (data.shape, None) if codes else (data.sample_shape, data.value_range)
    draw = module.generate if codes else module.render
    if solver is not None or steps is not None:
        key, value = ("solver", solver) if solver is not None else ("steps", steps)
        check(getattr(module.generator, "is_flow", False), key, value,
              "null: this checkpoint's generator takes one step (no ODE to integrate; a flow's does)")
        module.generator.integrate_with(solver, steps)
    if label is not None:
        check(module.conditional, "class", label, "null: this checkpoint's run was not class-conditional")
        n_classes = module.prior.n_classes
        check(isinstance(label, int) and 0 <= label < n_classes, "class", label,
              f"a class of the run's data: an integer in [0, {n_classes})")
    torch.manual_seed(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(out)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *shape))
        with open(tmp, "r+b") as f:  # a sparse file would fail later, mid-write, with SIGBUS
            os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
        for start in range(0, n, batch):
            size = min(batch, n - start)
            x = draw(module.latents(size, None if label is None else torch.full((size,), label, device=device)))
            if value_range is not None:
                x = x.clamp(*value_range)
            array[start : start + len(x)] = x.float().cpu().numpy()
        array.flush()
        del array
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    array = np.load(out, mmap_mode="r")
    if png is not None:
        png = Path(png)
        try:
            png.parent.mkdir(parents=True, exist_ok=True)
            shown, count = torch.from_numpy(np.array(array[:1000])), 64
            if module.conditional and label is None and len(shape) == 3:
                shown = class_grid(module, 8).float().cpu()  # one row of 8 per class
                count = len(shown)
            _picture(shown, data, _partial(png), count)
            os.replace(_partial(png), png)
        except OSError as e:
            raise PictureNotWritten(e.errno, e.strerror or str(e)) from e
        finally:
            _partial(png).unlink(missing_ok=True)
    return array


class PictureNotWritten(OSError):
    """The samples were written; their picture (`png=`) could not be."""


def _picture(x: torch.Tensor, data: run_record.DataInfo, path: Path, count: int = 64) -> None:
    if x.dim() == 4:
        from torchvision.utils import save_image

        lo, hi = data.value_range
        save_image((x[:count] - lo) / (hi - lo), path, nrow=8, pad_value=1.0)
        return
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if x.shape[1] == 1:
        ax.hist(x[:, 0].numpy(), bins=50)
    else:
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=3)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def sample(cfg: DictConfig) -> int:
    """The task: check every argument, write the samples; a mistake is one line on stderr
    (exit code 2), a damaged checkpoint or a failed write too (exit code 1)."""
    try:
        check(cfg.ckpt_path is not None, "ckpt_path", None, "a checkpoint file (checkpoints/last.ckpt of a run)")
        ckpt = Path(cfg.ckpt_path)
        check(ckpt.is_file(), "ckpt_path", cfg.ckpt_path, "an existing checkpoint file")
        check_positive_int("n", cfg.n)
        check_positive_int("batch", cfg.batch)
        check_positive_int("seed", cfg.seed, minimum=0)
        device = check_choice("device", cfg.device, ["auto", "cpu", "cuda"])
        check(device != "cuda" or torch.cuda.is_available(), "device", device, "auto or cpu: no CUDA device here")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        for key, suffix in (("out", ".npy"), ("png", ".png")):
            path = cfg[key]
            if path is None:
                continue
            check(Path(path).suffix == suffix, key, path, f"a file name ending in {suffix}")
            check(not Path(path).is_dir(), key, path, f"a file name ending in {suffix}, not a folder")
            check(not (Path(path).exists() and Path(path).resolve() == ckpt.resolve()), key, path,
                  "a file other than the checkpoint it reads")
        with _sigterm_as_interrupt():
            array = write_samples(ckpt, cfg.n, cfg.out, cfg.batch, device, cfg.seed, cfg.png, cfg.get("class"),
                                  cfg.get("solver"), cfg.get("steps"), cfg.get("codes", False))
    except OTGenError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except PictureNotWritten as e:
        print(f"wrote out={cfg.out}; could not write png={cfg.png}: {e.strerror}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a folder without write permission: nothing was left behind
        print(f"could not write out={cfg.out}: {e}; nothing was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (below): the partial file is gone already
        signal_name = e.args[0] if e.args else "SIGINT"
        print(f"stopped by {signal_name}: out={cfg.out} was not written (nor replaced)", file=sys.stderr)
        return 128 + getattr(signal, signal_name, signal.SIGINT)
    print(f"wrote {cfg.out}: {array.shape} float32" + (f", and {cfg.png}" if cfg.png else ""))
    return 0


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends the export as Ctrl-C does: the partial file removed, one line said."""
    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
