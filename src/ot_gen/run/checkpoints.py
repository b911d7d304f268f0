"""Checkpoints that survive faults: atomic writes, a save on SIGTERM/Ctrl-C, clear errors
for a corrupt file, and `ckpt_path=last` to resume the newest run of a task."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ot_gen.errors import ConfigError, OTGenError
from ot_gen.run import preemption

log = logging.getLogger(__name__)


class CheckpointError(OTGenError):
    """A checkpoint file that cannot be read."""


def load(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load of data only (`weights_only=True`: tensors, numbers, strings, containers):
    a checkpoint is shared between people, and a pickle that would run code or build any
    other object is refused before it runs, with one line naming the file, as is a
    truncated or corrupt file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except OSError as e:  # the file is there but cannot be read (permissions, an I/O error)
        raise CheckpointError(f"checkpoint {path} could not be read ({e.strerror or e})") from None
    except pickle.UnpicklingError as e:  # weights_only refused what the pickle asks for
        what = str(e).split("Unsupported global:", 1)[-1].strip().splitlines()[0] if "Unsupported global" in str(e) \
            else "objects other than data"
        raise CheckpointError(f"checkpoint {path} holds code or objects other than data ({what}); "
                              "it was not loaded: ot_gen checkpoints hold data only") from None
    except Exception as e:  # torch raises many kinds for a damaged zip/pickle
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from None


# The files a ModelCheckpoint's saved state names, which it reloads on a resume in the same
# folder and later removes (the worst of the top k, the previous last.ckpt).
_NAMED_FILES = ("best_model_path", "kth_best_model_path", "last_model_path")


def check_callback_files(checkpoint: dict[str, Any], path: str | Path) -> None:
    """A resumed checkpoint's callback states name only checkpoint files in their own
    folder. Lightning keeps its removals inside the folder by testing `dirpath in
    file.parents`, which `checkpoints/../../thesis.tex` passes, and removes a remote
    file (`s3://...`) without any test: a downloaded checkpoint resumed in its folder
    could delete any file. Refused, naming the state and the file."""
    states = checkpoint.get("callbacks") or {}
    if not isinstance(states, dict):
        raise CheckpointError(f"checkpoint {path}: its callback states are a {type(states).__name__}, not a mapping")
    for name, state in states.items():
        if not isinstance(state, dict) or not isinstance(state.get("dirpath"), (str, type(None))):
            continue
        best_k = state.get("best_k_models") or {}
        named = [(field, state.get(field)) for field in _NAMED_FILES]
        named += [("best_k_models", f) for f in (best_k if isinstance(best_k, dict) else {"": None})]
        folder = os.path.realpath(state["dirpath"]) if state.get("dirpath") else None
        for field, file in named:
            if file in (None, "") and field != "best_k_models":
                continue
            inside = isinstance(file, str) and "://" not in file and folder is not None \
                and os.path.dirname(os.path.realpath(file)) == folder and file.endswith(".ckpt")
            if not inside:
                raise CheckpointError(f"checkpoint {path}: its callback state's {name}.{field} names a file outside "
                                      f"its checkpoints folder {state.get('dirpath')!r}: {file!r}; a resume would "
                                      "remove it later. Refused; nothing was built")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to `<name>.tmp`, flushes it to disk, then renames it over
    the target: a crash while saving leaves the previous checkpoint intact, never a torn
    one. Loading names the file when it is damaged, and hands over a checkpoint that the
    build has already read (`hand_over`) instead of reading the file a second time."""

    def __init__(self):
        super().__init__()
        self._handed_over: tuple[str, dict[str, Any]] | None = None

    def hand_over(self, path: str | Path, checkpoint: dict[str, Any]) -> None:
        """The next `load_checkpoint(path)` returns `checkpoint` (read once, by the build)."""
        self._handed_over = (str(Path(path).resolve()), checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            tmp.unlink(missing_ok=True)  # no half-written file left behind
            if isinstance(e, (OSError, RuntimeError)):
                kept = f"; the previous {path.name} is intact" if path.exists() else ""
                raise CheckpointError(f"could not write the checkpoint {path} ({_reason(e, path.parent)}){kept}") \
                    from None
            raise

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        handed, self._handed_over = self._handed_over, None
        if handed is not None and handed[0] == str(Path(path).resolve()):
            return handed[1]
        return load(path, map_location)


def _reason(e: BaseException, folder: Path) -> str:
    """An OS error's reason without the traceback ("No space left on device"). torch's
    writer reports a full disk as "[enforce fail at inline_container.cc] unexpected pos":
    that, or too little room left on the disk, is said as what it is."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if "unexpected pos" in str(e) or (free is not None and free < 2**20):
        return "No space left on device" + (f" ({free / 2**20:.1f} MiB free)" if free is not None else "")
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def save_last(trainer: L.Trainer) -> Path | None:
    """Write the full state (optimizer, loops, RNG: a resume continues exactly) to the
    ModelCheckpoint's `last.ckpt`, through the trainer's (atomic) CheckpointIO. Returns
    the path, or None when there is no checkpoint folder or nothing trained yet."""
    cb = trainer.checkpoint_callback
    if cb is None or not cb.dirpath or trainer.global_step == 0:
        return None
    path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    trainer.save_checkpoint(path, weights_only=False)
    return path


class SaveOnInterrupt(L.Callback):
    """SIGTERM (a cluster pre-empting the job) or Ctrl-C: save `last.ckpt` (atomically)
    before Lightning stops, and say how to resume. Lightning finishes the current batch
    first on SIGTERM, so the state saved is consistent."""

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        path = save_last(trainer)
        if path is not None and trainer.is_global_zero:
            what = "Ctrl-C" if isinstance(exception, KeyboardInterrupt) else preemption.stopped_by or "SIGTERM"
            log.warning("%s at step %d: saved %s; resume with ckpt_path=%s", what, trainer.global_step, path, path)


def newest_last(runs_dir: Path) -> Path | None:
    """The most recently written `*/checkpoints/last.ckpt` under `runs_dir`, if any."""
    found = sorted(Path(runs_dir).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_ckpt_path(ckpt_path: str | None, runs_dir: Path) -> Path | None:
    """The one reading of `ckpt_path`: `last` is the newest `checkpoints/last.ckpt` under
    the task's runs dir; a path must be an existing file. None without a resume."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        found = newest_last(runs_dir)
        if found is None:
            raise ConfigError("ckpt_path", "last", f"a run with checkpoints/last.ckpt under {runs_dir}; none found")
        return found
    if not Path(ckpt_path).is_file():
        raise ConfigError("ckpt_path", ckpt_path, "an existing checkpoint file, or last")
    return Path(ckpt_path)
