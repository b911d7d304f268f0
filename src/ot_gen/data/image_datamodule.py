"""The image data module: MNIST, Fashion-MNIST, CIFAR-10, image folders and the synthetic
families, as float tensors in one value range, with labels where the source has them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from ot_gen.data import image_readers, synthetic_images
from ot_gen.data.datamodule import OTDataModule
from ot_gen.errors import check, check_choice, check_positive_int

log = logging.getLogger(__name__)


IMAGE_SOURCES = ["mnist", "fashion_mnist", "cifar10", "image_folder", *synthetic_images.FAMILIES]
VALUE_RANGES = [(-1.0, 1.0), (0.0, 1.0)]


class ImageDataModule(OTDataModule):
    """Images (N, C, H, W) as float tensors in `value_range`, from one `source`:

    - `mnist`, `fashion_mnist`, `cifar10`: files under `root` (torchvision's layout or the
      bare files), downloaded by torchvision when `download` and a network are there;
    - `image_folder`: every image under `root`, converted to `channels` (1 or 3);
    - `clock`, `wave`, `sine`, `plane`: synthetic families generated from `seed`.

    `image_size` resizes (None: native; 28 for the synthetic families); `classes` keeps
    only those labels; `n_train` takes a random subset of the training split (None: all);
    `outliers` replaces that share of the training images by uniform noise (label -1).
    Held-out points come from the test split when there is one, otherwise `n_val` images
    are set aside from the training pool (disjoint from the training subset).
    """

    def __init__(
        self,
        source: str,
        root: str | None = None,
        image_size: int | None = None,
        channels: int = 1,
        value_range: tuple[float, float] = (-1.0, 1.0),
        n_train: int | None = None,
        n_val: int = 2000,
        classes: list[int] | None = None,
        download: bool = False,
        on_bad_file: str = "skip",
        cache_dir: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
        batch_size: int = 256,
        outliers: float = 0.0,
    ):
        super().__init__(n_train, n_val, seed, num_workers, batch_size, outliers)
        self.source = check_choice("source", source, IMAGE_SOURCES)
        needs_root = source in ("mnist", "fashion_mnist", "cifar10", "image_folder")
        check(root is not None or not needs_root, "root", root, f"a folder with the {source} files")
        self.root = Path(root).expanduser() if root is not None else None
        self.image_size = None if image_size is None else check_positive_int("image_size", image_size, 4)
        self.channels = check_choice("channels", channels, [1, 3])
        self.value_range = check_choice("value_range", tuple(float(v) for v in value_range), VALUE_RANGES)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.download = bool(download)
        self.on_bad_file = check_choice("on_bad_file", on_bad_file, ["skip", "fail"])
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "ot_gen").expanduser()

    def _make(self):
        if self.source in synthetic_images.FAMILIES:
            size = self.image_size or 28
            n = self.n_train or 10_000
            train = synthetic_images.sample(self.source, n, size, self.seed, stream=0)
            val = synthetic_images.sample(self.source, self.n_val, size, self.seed, stream=1)
            return self._scale(train), self._scale(val)
        (train, self.train_labels), (val, self.val_labels) = self._split(self._load())
        return self._scale(self._to_float(train)), self._scale(self._to_float(val))

    def _load(self) -> image_readers.Splits:
        image_readers.check_readable_root(self.root)
        if self.source == "cifar10":
            return image_readers.load_cifar10(self.root, self.download)
        if self.source == "image_folder":
            size = self.image_size or 64
            return image_readers.load_image_folder(self.root, size, self.channels, self.on_bad_file)
        return image_readers.load_idx(self.source, self.root, self.download, self.cache_dir)

    def _split(self, splits: image_readers.Splits):
        """((train images, labels), (held-out images, labels)); labels are None when the
        source has none."""
        gen = torch.Generator().manual_seed(self.seed)
        filtered = {name: self._filter(name, *xy) for name, xy in splits.items()}
        pool, pool_labels = filtered["train"] if "train" in filtered else filtered["test"]
        order = torch.randperm(len(pool), generator=gen)
        pick = lambda labels, idx: None if labels is None else labels[idx]  # noqa: E731
        if "train" in filtered and "test" in filtered:
            test, test_labels = filtered["test"]
            check(self.n_val <= len(test), "n_val", self.n_val, f"at most the {len(test)} held-out images")
            held = torch.randperm(len(test), generator=gen)[: self.n_val]
            val = (test[held], pick(test_labels, held))
        else:
            log.warning("%s: only one split found under %s; holding out %d of its %d images for validation",
                        self.source, self.root, self.n_val, len(pool))
            check(self.n_val < len(pool), "n_val", self.n_val, f"fewer than the {len(pool)} images available")
            val, order = (pool[order[: self.n_val]], pick(pool_labels, order[: self.n_val])), order[self.n_val :]
        n_train = self.n_train or len(order)
        check(n_train <= len(order), "n_train", self.n_train, f"at most the {len(order)} training images available")
        return (pool[order[:n_train]], pick(pool_labels, order[:n_train])), val

    def _filter(self, split: str, x: torch.Tensor, labels: torch.Tensor | None):
        if self.classes is None:
            return x, labels
        check(labels is not None, "classes", self.classes, f"null: {self.source} has no labels")
        keep = torch.isin(labels, torch.tensor(self.classes))
        check(bool(keep.any()), "classes", self.classes, f"labels present in {self.source}'s {split} split")
        return x[keep], labels[keep]

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if self.image_size is not None and self.image_size != x.shape[-1]:
            x = TF.resize(x, [self.image_size, self.image_size], antialias=True).clamp_(0, 1)
        return x

    def _outlier_points(self, count, gen):
        """Uniform noise images: every pixel uniform in the value range."""
        lo, hi = self.value_range
        return torch.rand(count, *self.train_set.shape[1:], generator=gen) * (hi - lo) + lo

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        return (x * (hi - lo) + lo).contiguous()
