"""The code space: an autoencoder (its networks and its LightningModule), the codes of
the training images as the generator's data, and the pictures of the code space. The
stage that trains or reuses the autoencoder before a run is `ot_gen.run.autoencoder_stage`."""

from ot_gen.latent.codes import CodeDataModule
from ot_gen.latent.networks import ConvAutoencoder

__all__ = ["CodeDataModule", "ConvAutoencoder"]
