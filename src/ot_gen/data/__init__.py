"""Data: the LightningDataModule and the data sets behind it."""

from ot_gen.data.datamodule import OTDataModule, ToyDataModule

__all__ = ["OTDataModule", "ToyDataModule"]
