"""The LightningDataModule: a training set, a held-out set, and the reals of each round.

One round of training takes `batch_size` reals with their training-set indices (per-real
matcher state is kept by index): the minibatch size in the minibatch mode, the pool size in
the oversampled mode. `train.build` passes the mode's `reals_per_round`, so the data
config never repeats it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchvision.transforms.v2 import functional as TF

from ot_gen.data import image_readers, synthetic_images, toy
from ot_gen.errors import check, check_choice, check_positive_int

log = logging.getLogger(__name__)


class OTDataModule(L.LightningDataModule):
    """Base: subclasses fill `self.train_set` / `self.val_set` (tensors) in `_make`.

    Its state (in every checkpoint) is the number of training batches it has served: the
    sampler's position, from which a resumed run continues the same data order."""

    value_range: tuple[float, float] | None = None  # images: the pixel range; None: not images

    def __init__(self, n_train: int | None, n_val: int, seed: int = 0, num_workers: int = 0,
                 batch_size: int = 256):
        super().__init__()
        self.n_train = None if n_train is None else check_positive_int("n_train", n_train)
        self.n_val = check_positive_int("n_val", n_val, minimum=2)
        self.seed = int(seed)
        self.num_workers = check_positive_int("num_workers", num_workers, minimum=0)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.rounds_served = 0
        self.train_set: torch.Tensor | None = None
        self.val_set: torch.Tensor | None = None
        # Class labels of train_set / val_set when the source has them (image data sets);
        # the classifier behind val/frechet_classifier trains on them.
        self.train_labels: torch.Tensor | None = None
        self.val_labels: torch.Tensor | None = None

    # -- what the rest of the code asks of data -------------------------------------------
    @property
    def data_shape(self) -> tuple[int, ...]:
        if self.train_set is None:
            raise RuntimeError("the data module has no data yet: call setup() first")
        return tuple(self.train_set.shape[1:])

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Images mapped to [0, 1] for display and pixel-scale distances; other data as is."""
        if self.value_range is None:
            return x
        lo, hi = self.value_range
        return (x - lo) / (hi - lo)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self._make()

    def _make(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- Lightning's loaders and the sampler's position -------------------------------------
    def train_dataloader(self) -> DataLoader:
        """Batches (reals, their training-set indices), `batch_size` of them (at most the
        training set), in an order that depends only on the seed and `rounds_served`."""
        n = len(self.train_set)
        return DataLoader(
            # A whole batch is one index into the tensors (batch_size=None: the sampler
            # yields the batches), not `batch_size` items collated one by one.
            TensorDataset(self.train_set, torch.arange(n)),
            batch_size=None,
            sampler=EpochShuffle(n, min(self.batch_size, n), self._world_size(), self.seed,
                                 lambda: self.rounds_served),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds: not from the global RNG
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the training batches that reach the module (not those a loader prefetched)."""
        if self.trainer is not None and self.trainer.training:
            self.rounds_served += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"rounds_served": self.rounds_served}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rounds_served = int(state_dict["rounds_served"])

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def val_dataloader(self) -> DataLoader:
        # One batch: the validation metrics compare whole samples, not batch averages.
        return DataLoader(TensorDataset(self.val_set), batch_size=len(self.val_set),
                          generator=torch.Generator().manual_seed(self.seed))


class EpochShuffle(Sampler[list[int]]):
    """Batches of a random order per pass over the data that depends only on (seed, pass
    index), never on the global RNG. The pass and the position in it are counted from the
    rounds already served (`rounds_served()`), not from Lightning's epoch counter: a run
    resumed from a checkpoint taken mid-pass yields only the rest of that pass, in the same
    order, so it sees exactly the data the uninterrupted run would have seen. Under DDP
    a round is `world` batches, one per rank (Lightning hands rank r the batches r, r + W,
    ...); a pass is as many whole rounds as the data holds."""

    def __init__(self, n: int, batch_size: int, world: int, seed: int, rounds_served: Callable[[], int]):
        self.n, self.batch_size, self.world, self.seed, self.rounds_served = n, batch_size, world, seed, rounds_served
        self.rounds = max(n // (batch_size * world), 1)  # rounds per pass

    def __iter__(self):
        done = self.rounds_served()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + done // self.rounds)
        order = torch.randperm(self.n, generator=gen)
        first = (done % self.rounds) * self.world
        return iter(order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
                    for b in range(first, self.rounds * self.world))

    def __len__(self) -> int:
        return self.rounds * self.world


class ToyDataModule(OTDataModule):
    """A 1-D or 2-D synthetic set from `ot_gen.data.toy`, drawn from `seed`.

    The training and held-out sets come from disjoint streams of the same seed, so they
    are independent samples of the same distribution.
    """

    def __init__(self, name: str, n_train: int = 10_000, n_val: int = 2000, noise: float = 0.0,
                 seed: int = 0, num_workers: int = 0, batch_size: int = 256):
        super().__init__(check_positive_int("n_train", n_train), n_val, seed, num_workers, batch_size)
        self.name = check_choice("name", name, list(toy.SAMPLERS))
        check(isinstance(noise, (int, float)) and 0 <= noise < float("inf"), "noise", noise, "a number >= 0 (finite)")
        self.noise = float(noise)

    def _make(self):
        train = toy.sample(self.name, self.n_train, seed=self.seed, stream=0, noise=self.noise)
        val = toy.sample(self.name, self.n_val, seed=self.seed, stream=1, noise=self.noise)
        return torch.from_numpy(train), torch.from_numpy(val)


IMAGE_SOURCES = ["mnist", "fashion_mnist", "cifar10", "image_folder", *synthetic_images.FAMILIES]
VALUE_RANGES = [(-1.0, 1.0), (0.0, 1.0)]


class ImageDataModule(OTDataModule):
    """Images (N, C, H, W) as float tensors in `value_range`, from one `source`:

    - `mnist`, `fashion_mnist`, `cifar10`: files under `root` (torchvision's layout or the
      bare files), downloaded by torchvision when `download` and a network are there;
    - `image_folder`: every image under `root`, converted to `channels` (1 or 3);
    - `clock`, `wave`, `sine`, `plane`: synthetic families generated from `seed`.

    `image_size` resizes (None: native; 28 for the synthetic families); `classes` keeps
    only those labels; `n_train` takes a random subset of the training split (None: all).
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
    ):
        super().__init__(n_train, n_val, seed, num_workers, batch_size)
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

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        return (x * (hi - lo) + lo).contiguous()
