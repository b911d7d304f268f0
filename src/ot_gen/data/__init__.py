"""Data: the LightningDataModule and the data sets behind it."""

from ot_gen.data.datamodule import ImageDataModule, OTDataModule, ToyDataModule

__all__ = ["ImageDataModule", "OTDataModule", "ToyDataModule"]
