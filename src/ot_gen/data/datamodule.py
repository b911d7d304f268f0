"""The LightningDataModule: a training set, a held-out set, and reals per round.

One round of training takes `batch_size` reals: the minibatch size in the minibatch mode,
the pool size in the oversampled mode (the whole training set when it is smaller).
`train.run` sets it from the mode, so the data config never repeats it.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ot_gen.data import toy
from ot_gen.errors import check, check_choice, check_positive_int


class OTDataModule(L.LightningDataModule):
    """Base: subclasses fill `self.train_set` / `self.val_set` (tensors) in `_make`."""

    def __init__(self, n_train: int, n_val: int, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.n_train = check_positive_int("n_train", n_train)
        self.n_val = check_positive_int("n_val", n_val, minimum=2)
        self.seed = int(seed)
        self.num_workers = check_positive_int("num_workers", num_workers, minimum=0)
        self.batch_size: int | None = None
        self.train_set: torch.Tensor | None = None
        self.val_set: torch.Tensor | None = None

    # -- what the rest of the code asks of data -------------------------------------------
    @property
    def data_shape(self) -> tuple[int, ...]:
        self.setup()
        return tuple(self.train_set.shape[1:])

    def set_reals_per_round(self, n: int) -> int:
        """Reals per training round; capped at the training set size. Returns the value used."""
        check_positive_int("batch_size", n)
        self.batch_size = min(n, self.n_train)
        return self.batch_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self._make()

    def _make(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- Lightning's loaders ---------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.batch_size is None:
            raise RuntimeError("set_reals_per_round() must be called before training")
        return DataLoader(
            TensorDataset(self.train_set),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        # One batch: the validation metrics compare whole samples, not batch averages.
        return DataLoader(TensorDataset(self.val_set), batch_size=len(self.val_set))


class ToyDataModule(OTDataModule):
    """A 1-D or 2-D synthetic set from `ot_gen.data.toy`, drawn from `seed`.

    The training and held-out sets come from disjoint streams of the same seed, so they
    are independent samples of the same distribution.
    """

    def __init__(self, name: str, n_train: int = 10_000, n_val: int = 2000, noise: float = 0.0,
                 seed: int = 0, num_workers: int = 0):
        super().__init__(n_train, n_val, seed, num_workers)
        self.name = check_choice("name", name, list(toy.SAMPLERS))
        check(isinstance(noise, (int, float)) and noise >= 0, "noise", noise, "a number >= 0")
        self.noise = float(noise)

    def _make(self):
        train = toy.sample(self.name, self.n_train, seed=self.seed, stream=0, noise=self.noise)
        val = toy.sample(self.name, self.n_val, seed=self.seed, stream=1, noise=self.noise)
        return torch.from_numpy(train), torch.from_numpy(val)
