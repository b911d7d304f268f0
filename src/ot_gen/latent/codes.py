"""The data of a code-space run: the codes of an image data module's training and
held-out images, and those images, against which every figure and picture is made."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ot_gen.data.datamodule import OTDataModule
from ot_gen.latent.networks import ConvAutoencoder
from ot_gen.memory import check_fits

ENCODE_CHUNK = 1000  # images per encoder pass


class CodeDataModule(OTDataModule):
    """`train_set` / `val_set`: the codes of `images`' training and held-out images (what
    the prior, generator, matcher and mode work on: every one of them unchanged), with
    the images' labels; `eval_data`: the images themselves, which the module's decoded
    samples are scored against (`val_dataloader` serves the held-out images)."""

    value_range = None  # codes are not images; the images' range is `eval_data.value_range`

    def __init__(self, images: OTDataModule, autoencoder: ConvAutoencoder, batch_size: int = 256,
                 num_workers: int = 0):
        super().__init__(len(images.train_set), len(images.val_set), images.seed, num_workers, batch_size)
        self.images, self.autoencoder = images, autoencoder

    @property
    def eval_data(self) -> OTDataModule:
        return self.images

    def _make(self):
        n = len(self.images.train_set) + len(self.images.val_set)
        check_fits("autoencoder.network.code_dim", self.autoencoder.code_dim, 4.0 * n * self.autoencoder.code_dim,
                   f"the codes of {n:,} images", "use a smaller code dimension or data.n_train")
        self.train_labels, self.val_labels = self.images.train_labels, self.images.val_labels
        self.outlier_ids = self.images.outlier_ids
        return self.encode(self.images.train_set), self.encode(self.images.val_set)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.autoencoder.encode(c) for c in images.split(ENCODE_CHUNK)]).contiguous()

    def val_dataloader(self) -> DataLoader:
        return self.images.val_dataloader()
