"""Data: the LightningDataModules and the data sets behind them."""

from ot_gen.data.datamodule import OTDataModule, ToyDataModule
from ot_gen.data.image_datamodule import ImageDataModule

__all__ = ["ImageDataModule", "OTDataModule", "ToyDataModule"]
