"""Image data sets read from disk: MNIST, Fashion-MNIST, CIFAR-10 and any folder of images.

Each loader returns {"train": (images, labels), "test": (images, labels)} with uint8
images of shape (N, C, H, W) and int64 labels (or None); a split whose files are absent is
left out. When none of a set's files are there and `download` is true, torchvision's own
class downloads them (a folder that holds some of the files is used as it is, never
written to); without a network, the error says which files are expected where.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.mnist import read_image_file, read_label_file

from ot_gen.errors import OTGenError

log = logging.getLogger(__name__)

Splits = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


class DataFileError(OTGenError, FileNotFoundError):
    """Data files missing, unreadable or corrupt; the message names the file(s)."""


def check_readable_root(root: Path) -> None:
    """data.root must be a folder this process may list: a permission problem is named
    here, not met as a traceback (or as "no files") inside a reader."""
    try:
        if root.exists() and not root.is_dir():
            raise DataFileError(f"data.root={root} is a file, not a folder")
        if root.is_dir():
            os.listdir(root)
    except PermissionError as e:
        raise DataFileError(f"data.root={root} cannot be read ({e.strerror}): let this user read and list it "
                            f"(chmod u+rx), or point data.root at a copy") from None


def _download_if_absent(name: str, present: list, download: bool, fetch) -> None:
    """Call torchvision's downloader `fetch()` only when none of the set's files are
    there; a failure (no network) is logged and left to the caller's clear error."""
    if present or not download:
        return
    try:
        fetch()
    except Exception as e:
        log.warning("%s download failed: %s", name, e)


# -- MNIST and Fashion-MNIST (IDX files) ------------------------------------------------------
IDX_SETS = {
    "mnist": (datasets.MNIST, "MNIST"),
    "fashion_mnist": (datasets.FashionMNIST, "FashionMNIST"),
}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(root: Path, folder: str, name: str) -> Path | None:
    """`name` or `name.gz` in torchvision's layout (root/<Folder>/raw/) or in root itself."""
    for d in (root / folder / "raw", root):
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _readable(path: Path, cache: Path) -> Path:
    """The uncompressed file: `path` itself, or `path` decompressed once into `cache`
    (data folders may be read-only, so nothing is written next to the data).

    The cached copy is named by the source's content (size and SHA-256), so another file
    of the same name (another data.root, a replaced download) never reuses it; it is
    written to a temporary name and renamed into place, so a run killed while
    decompressing leaves no truncated copy behind."""
    if path.suffix != ".gz":
        return path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    target = cache / f"{path.stem}.{path.stat().st_size}-{digest.hexdigest()[:16]}"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.partial.{os.getpid()}")
    try:
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # (a SIGKILL leaves it, under a name never read)
        if not isinstance(e, (OSError, EOFError, zlib.error)):
            raise
        if isinstance(e, (gzip.BadGzipFile, EOFError, zlib.error)):
            raise DataFileError(f"{path}: cannot be decompressed ({e}); the file is corrupt or truncated") from None
        raise DataFileError(f"{path}: cannot be decompressed into the cache {tmp} ({e}); "
                            "set data.cache_dir to a writable folder") from None
    return target


def _read_idx(reader, source: Path, cache: Path) -> torch.Tensor:
    """torchvision's IDX `reader` on `source` (or its decompressed copy), with an error
    naming the file that was read."""
    try:
        path = _readable(source, cache)
        problem = _idx_header_problem(path)
    except PermissionError as e:
        raise DataFileError(f"{e.filename}: cannot be read ({e.strerror})") from None
    if problem is None:
        try:
            return reader(str(path))
        except (AssertionError, RuntimeError, ValueError) as e:
            problem = str(e) or f"torchvision's reader refused it ({type(e).__name__})"
    if path != source and path.stat().st_size != _gzip_size(source):
        raise DataFileError(f"{source}: not a valid IDX file ({problem}) as read from the cache file {path}: "
                            f"delete it to decompress again (its size differs from the archive's)") from None
    decompressed = " once decompressed" if path != source else ""
    raise DataFileError(f"{source}: not a valid IDX file{decompressed}: {problem}; replace it with the "
                        f"official file (its md5 is listed where the data set is published)") from None


def _gzip_size(path: Path) -> int:
    """The uncompressed size a .gz file records in its last four bytes (modulo 2**32)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


IDX_TYPES = {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}  # ubyte, byte, short, int, float, double


def _idx_header_problem(path: Path) -> str | None:
    """What is wrong with an IDX file's first four bytes (00 00, a type code, 1-3
    dimensions) and size, in words; None when they are right."""
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES or not 1 <= head[3] <= 3:
        return (f"its magic number is {head.hex(' ') or 'missing (empty file)'}, where an IDX file starts "
                f"00 00, a type code (08 for images and labels) and 1-3 dimensions")
    return None


def load_idx(name: str, root: Path, download: bool, cache: Path) -> Splits:
    cls, folder = IDX_SETS[name]
    present = [f for files in IDX_FILES.values() for f in files if _find(root, folder, f)]
    # torchvision downloads (and md5-checks) into root/<Folder>/raw/
    _download_if_absent(name, present, download, lambda: cls(str(root), train=True, download=True))
    splits: Splits = {}
    for split, (images, labels) in IDX_FILES.items():
        found = [_find(root, folder, images), _find(root, folder, labels)]
        if None in found:
            continue
        x = _read_idx(read_image_file, found[0], cache / folder)
        y = _read_idx(read_label_file, found[1], cache / folder)
        if len(x) != len(y):
            raise DataFileError(f"{found[0]} has {len(x)} images but {found[1]} has {len(y)} labels")
        splits[split] = (x.unsqueeze(1), y.long())
    if not splits:
        hint = "; or `apt-get install dataset-fashion-mnist` (Debian)" if name == "fashion_mnist" else ""
        raise DataFileError(
            f"{name}: no data files under data.root={root}. Expected {IDX_FILES['train'][0]}.gz, "
            f"{IDX_FILES['train'][1]}.gz (and/or the t10k-* test files) in {root}/{folder}/raw/ or {root}/; "
            f"get them with data.download=true where there is a network{hint}"
        )
    return splits


# -- CIFAR-10 (python pickle batches) -------------------------------------------------------------
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds plain containers and numpy arrays and nothing else: a batch
    file is data, so one that names any other callable (a payload that would run a
    command) is refused instead of executed."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a data file has no use for")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except PermissionError as e:
        raise DataFileError(f"{path}: cannot be read ({e.strerror})") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise DataFileError(f"{path}: not a CIFAR-10 batch file ({type(e).__name__}: {e})") from None
    return data, labels


def load_cifar10(root: Path, download: bool) -> Splits:
    """CIFAR-10's on-disk format: root/cifar-10-batches-py/{data_batch_1..5,test_batch}.

    Any subset of the batch files is read (a training split of fewer batches works);
    torchvision's CIFAR10 class fetches the official archive when `download` is true.
    """
    base = root / CIFAR_DIR
    present = [n for names in CIFAR_FILES.values() for n in names if (base / n).is_file()]
    _download_if_absent("cifar10", present, download, lambda: datasets.CIFAR10(str(root), train=True, download=True))
    splits: Splits = {}
    for split, names in CIFAR_FILES.items():
        parts = [_cifar_batch(base / n) for n in names if (base / n).is_file()]
        if parts:
            x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
            splits[split] = (x, torch.from_numpy(np.concatenate([p[1] for p in parts])))
    if not splits:
        raise DataFileError(
            f"cifar10: no batch files under {base}/ (data.root={root}). Expected data_batch_1..5 and "
            f"test_batch from cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html); "
            f"get them with data.download=true where there is a network"
        )
    return splits


# -- any folder of images -------------------------------------------------------------------------
def _image_files(root: Path) -> tuple[list[Path], list[tuple[str, OSError]]]:
    """The image files under `root`, sorted, and the folders that could not be listed
    (pathlib's rglob passes over those in silence). A symlinked folder (a class folder
    linked in from elsewhere) is followed; a folder reached a second time (a link to
    itself or to a folder above it) is not entered again, and is named in the log."""
    unlisted: list[tuple[str, OSError]] = []
    files, seen = [], set()
    for folder, dirs, names in os.walk(root, onerror=lambda e: unlisted.append((e.filename, e)), followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            log.warning("image_folder: not entering %s again: it is a link to a folder already read (a loop)", folder)
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        files += [Path(folder, n) for n in names if Path(n).suffix.lower() in IMG_EXTENSIONS]
    return sorted(files), unlisted


# Conversions that lose part of what an image holds, said once per kind in the log.
_LOSSES = {
    "alpha": "their alpha channel (transparency) is dropped: transparent pixels show the colour stored under them",
    "colour": "their colour is converted to grayscale (data.channels=1)",
    "bits": "their 16- or 32-bit values are scaled to 8 bits",
    "space": "their colour space ({modes}) is converted to RGB",
}


def _pixels(img: Image.Image, channels: int, image_size: int, losses: dict[str, list]) -> np.ndarray:
    """An image as uint8 (image_size, image_size, channels), its information loss noted
    in `losses` (kind -> [modes]). 16-bit images are scaled by 255/65535 (PIL's own
    conversion clips them at 255: almost white); 32-bit integer and float images by their
    range: 16-bit when a value exceeds 255, 8-bit otherwise."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
            losses["bits"].append(mode)
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    elif "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info):
        losses["alpha"].append(mode)
    if channels == 1 and img.mode not in ("L", "1", "LA", "La"):
        losses["colour"].append(img.mode)
    elif channels == 3 and img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        losses["space"].append(img.mode)
    img = img.convert({1: "L", 3: "RGB"}[channels]).resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).reshape(image_size, image_size, channels)


def _say_losses(losses: dict[str, list], n: int) -> None:
    for kind, modes in losses.items():
        if modes:
            shown = ", ".join(sorted(set(modes)))
            log.warning("image_folder: %d of %d images: %s (modes %s)", len(modes), n,
                        _LOSSES[kind].format(modes=shown), shown)


def load_image_folder(root: Path, image_size: int, channels: int, on_bad_file: str) -> Splits:
    """Every image file under `root` (recursively, any format PIL reads, symlinked folders
    followed), converted to `channels` (1: grayscale, 3: RGB; 16-bit images scaled, not
    clipped) and resized to image_size × image_size; labelled by first-level subfolder
    when every image is in one (`_folder_labels`). A conversion that loses information
    (alpha, colour, bit depth) is said once per kind.
    An unreadable file is named in the log and skipped (`on_bad_file=skip`) or is an error."""
    if not root.is_dir():
        raise DataFileError(f"image_folder: data.root={root} is not a folder")
    files, unlisted = _image_files(root)
    for folder, e in unlisted:
        if on_bad_file == "fail":
            raise DataFileError(f"image_folder: cannot list {folder} ({e.strerror}) under data.root={root} "
                                f"(set data.on_bad_file=skip to leave it out)")
        log.warning("image_folder: leaving out %s: cannot list it (%s)", folder, e.strerror)
    if not files:
        unreadable = f"; {len(unlisted)} folder(s) could not be listed" if unlisted else ""
        raise DataFileError(f"image_folder: no image files ({', '.join(IMG_EXTENSIONS)}) under "
                            f"data.root={root}{unreadable}")
    images, skipped, read = [], [], []
    losses: dict[str, list] = {kind: [] for kind in _LOSSES}
    for path in files:
        try:
            with Image.open(path) as img:
                images.append(_pixels(img, channels, image_size, losses))
                read.append(path)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if on_bad_file == "fail":
                raise DataFileError(f"image_folder: cannot read {path}: {reason} "
                                    f"(set data.on_bad_file=skip to skip it)") from None
            skipped.append(path)
            log.warning("image_folder: skipping unreadable %s: %s", path, reason)
    if not images:
        raise DataFileError(f"image_folder: none of the {len(files)} files under {root} could be read")
    if skipped:
        log.warning("image_folder: skipped %d unreadable file(s) of %d", len(skipped), len(files))
    _say_losses(losses, len(images))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return {"train": (x, _folder_labels(root, read))}


def _folder_labels(root: Path, paths: list[Path]) -> torch.Tensor | None:
    """torchvision's ImageFolder convention: when every image lies in a subfolder of
    `root`, its class is the index of that first-level subfolder in sorted order; images
    directly under `root` mean the folder has no classes (None)."""
    tops = [p.relative_to(root).parts for p in paths]
    if any(len(parts) < 2 for parts in tops):
        return None
    classes = sorted({parts[0] for parts in tops})
    log.info("image_folder: %d classes from the subfolders of %s: %s", len(classes), root, ", ".join(classes))
    return torch.tensor([classes.index(parts[0]) for parts in tops], dtype=torch.long)
