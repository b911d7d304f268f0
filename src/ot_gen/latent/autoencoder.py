"""The autoencoder stage's LightningModule: an encoder and a decoder trained to
reconstruct the training images, with a code regulariser that keeps the code space
smooth (RAE, Ghosh et al. ICLR 2020): a penalty on the codes' size, optionally a small
noise on the codes before decoding, and weight decay on the decoder.

    loss = mean over a batch of  cost(decode(code + σ·ε), x) + β·½‖code‖²
           code = encode(x),  σ = code_noise,  β = code_penalty

The reconstruction cost is a project cost (`ot_gen.matching.costs`: sqeuclidean, l1,
laplacian, ...); its `paired` sums over an image's pixels.
"""

from __future__ import annotations

import lightning as L
import torch

from ot_gen.errors import NonFiniteError, all_finite
from ot_gen.latent.networks import ConvAutoencoder
from ot_gen.matching.costs import Cost

RECORD_KEY = "ot_gen_autoencoder"  # an autoencoder checkpoint's record: its config and its data


class AutoencoderModule(L.LightningModule):
    def __init__(self, net: ConvAutoencoder, loss: Cost, code_penalty: float = 1e-3, code_noise: float = 0.0,
                 weight_decay: float = 0.0, lr: float = 1e-3):
        super().__init__()
        self.net, self.loss = net, loss
        self.code_penalty, self.code_noise = float(code_penalty), float(code_noise)
        self.weight_decay, self.lr = float(weight_decay), float(lr)
        self.record: dict | None = None  # what the stage writes into every checkpoint (RECORD_KEY)

    def on_save_checkpoint(self, checkpoint) -> None:
        if self.record is not None:
            checkpoint[RECORD_KEY] = self.record

    def training_step(self, batch, batch_idx):
        (x,) = batch
        code = self.net.encode(x)
        noisy = code + self.code_noise * torch.randn_like(code) if self.code_noise else code
        recon = self.loss.paired(self.net.decode(noisy), x).mean()
        penalty = 0.5 * code.pow(2).sum(1).mean()
        loss = recon + self.code_penalty * penalty
        if not all_finite(loss):
            raise NonFiniteError(f"the autoencoder's loss became NaN/Inf at step {self.global_step}; "
                                 "the checkpoints already saved are intact; try a lower autoencoder.lr")
        self.log_dict({"ae/train_loss": recon, "ae/code_norm": penalty.mul(2).sqrt()}, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("ae/val_mse", unit_mse(self.net(x), x, self.net.value_range), prog_bar=True, batch_size=len(x))

    def configure_optimizers(self):
        # Weight decay on the decoder only (RAE's decoder regulariser): the encoder's scale
        # is held by the code penalty.
        return torch.optim.Adam([
            {"params": self.net.encoder.parameters()},
            {"params": self.net.decoder.parameters(), "weight_decay": self.weight_decay},
        ], lr=self.lr)


def unit_mse(recon: torch.Tensor, x: torch.Tensor, value_range: tuple[float, float]) -> float:
    """Mean squared error per pixel, with pixels in [0, 1] whatever the data's range."""
    lo, hi = value_range
    return float(((recon - x) / (hi - lo)).pow(2).mean())
