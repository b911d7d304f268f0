"""A Fréchet distance in the feature space of a small classifier trained here.

No downloaded network weights exist on the machines this project runs on, so this is NOT
the FID (Inception-v3 features): a small convolutional classifier is trained on the
run's own training split and labels, once per run, and the Fréchet distance between
Gaussians fitted to its penultimate-layer features of generated and held-out images is
logged as `val/frechet_classifier`, with the classifier's held-out accuracy as
`val/classifier_accuracy` (how much its features are worth), and the k-NN precision and
recall (Kynkäänniemi et al. 2019) in the same features as `val/precision_classifier` and
`val/recall_classifier`: blur shows as lost recall. Values are comparable only
between runs on the same data set with the same classifier settings and seed. The
distance itself is torchmetrics' `FrechetInceptionDistance` given our feature network.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ot_gen.errors import check_positive_int
from ot_gen.evaluation.metrics import knn_precision_recall
from ot_gen.rng import own_rng

log = logging.getLogger(__name__)


class SmallClassifier(nn.Module):
    """Two strided convolutions, pooling to 4×4, a `features`-wide layer (the feature
    space) and the class logits: small enough to train in seconds on a CPU."""

    def __init__(self, channels: int, n_classes: int, features: int = 64):
        super().__init__()
        self.num_features, self.n_classes = features, n_classes
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, features), nn.ReLU(),
        )
        self.head = nn.Linear(features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int = 400, batch_size: int = 64,
                     seed: int = 0) -> SmallClassifier:
    """`steps` Adam steps on cross-entropy over random minibatches, from its own RNG (the
    training run's streams are untouched)."""
    n_classes = int(labels.max()) + 1
    labels = labels.to(images.device)
    with own_rng(images.device, seed):
        model = SmallClassifier(images.shape[1], n_classes).to(images.device)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(steps):
            idx = torch.randint(len(images), (min(batch_size, len(images)),))
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class Features(nn.Module):
    """A feature network as torchmetrics' feature extractor: float64 features, `num_features` wide."""

    def __init__(self, net: nn.Module, num_features: int):
        super().__init__()
        self.net, self.num_features = net, num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).double()


def frechet_metric(net: nn.Module, num_features: int) -> FrechetInceptionDistance:
    """torchmetrics' Fréchet distance in the output space of `net`; the real set's statistics
    are kept across `reset()` (held-out images are scored once, generated ones each time)."""
    return FrechetInceptionDistance(Features(net, num_features), reset_real_features=False)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a − mu_b|² + Tr(S_a + S_b − 2 (S_a S_b)^{1/2}) between Gaussians fitted to the
    rows of a and b (float64), by torchmetrics."""
    a, b = torch.as_tensor(np.asarray(a, np.float64)), torch.as_tensor(np.asarray(b, np.float64))
    metric = frechet_metric(nn.Identity(), a.shape[1])
    metric.update(b, real=True)
    metric.update(a, real=False)
    return max(float(metric.compute()), 0.0)


@torch.no_grad()
def image_scores(model: SmallClassifier, real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Fréchet distance, k-NN precision and recall of the images `fake` against `real`, in
    the features of `model`: what `ClassifierFrechet` logs, for any two image sets (the
    reference rows of benchmarks/reference_quality.py score real, blurred and mean images)."""
    real_f, fake_f = model.features(real).double(), model.features(fake).double()
    precision, recall = knn_precision_recall(real_f, fake_f, k)
    return {"frechet": frechet_distance(fake_f.cpu().numpy(), real_f.cpu().numpy()),
            "precision": precision, "recall": recall}


def class_shares(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The share of each class among `labels`."""
    return torch.bincount(labels, minlength=n_classes).double() / max(len(labels), 1)


class ClassifierFrechet(L.Callback):
    """Image data with labels: trains the classifier at the first validation (on at most
    `max_train` training images, `steps` Adam steps of 64, seed `seed`), then at each validation
    logs `val/frechet_classifier` between `n_samples` generated images (fixed latents
    drawn from their own RNG) and as many held-out images, `val/precision_classifier` and
    `val/recall_classifier` (k-NN, `k` neighbours), `val/classifier_accuracy` and
    `val/class_imbalance` (the total-variation distance between the classes the classifier
    sees in the samples and in the held-out images: 0 when the samples have the held-out
    set's class shares, 1 when they share no class); in a
    class-conditional run `val/class_match`, the share of samples the classifier puts in
    the class they were generated for (read against `val/classifier_accuracy`).
    Data without labels (image folders without classes, synthetic families) or not
    images: nothing is logged."""

    def __init__(self, n_samples: int = 1000, steps: int = 400, max_train: int = 10_000, seed: int = 0, k: int = 3):
        self.n_samples = check_positive_int("n_samples", n_samples, minimum=2)
        self.k = check_positive_int("k", k)
        self.steps = check_positive_int("steps", steps)
        self.max_train = check_positive_int("max_train", max_train)
        self.seed = int(seed)
        self.model: SmallClassifier | None = None
        self.metric: FrechetInceptionDistance | None = None
        self._n_real = 0
        self._real_features: torch.Tensor | None = None
        self._accuracy = 0.0
        self._real_classes: torch.Tensor | None = None  # the held-out images' class shares, by the classifier
        self._prepared = False

    def _prepare(self, trainer: L.Trainer, pl_module) -> None:
        """Train the classifier once, at the first validation (the module is on its device),
        and score the held-out images."""
        self._prepared = True
        dm = None if trainer.datamodule is None else trainer.datamodule.eval_data
        if dm is None or dm.train_set.dim() != 4 or getattr(dm, "train_labels", None) is None or dm.val_labels is None:
            return
        device = pl_module.device
        labelled = dm.train_labels >= 0  # data.outliers: noise images carry no class
        images = dm.train_set[labelled][: self.max_train].to(device)
        labels = dm.train_labels[labelled][: self.max_train]
        with torch.enable_grad(), torch.inference_mode(False):
            self.model = train_classifier(images, labels, self.steps, seed=self.seed)
        held, held_labels = dm.val_set[: self.n_samples].to(device), dm.val_labels[: self.n_samples]
        self.metric = frechet_metric(self.model.body, self.model.num_features).to(device)
        with torch.no_grad():
            predicted = self.model(held).argmax(1).cpu()
            self._accuracy = (predicted == held_labels).double().mean().item()
            self._real_classes = class_shares(predicted, self.model.n_classes)
            self.metric.update(held, real=True)
            self._real_features = self.model.features(held).double()
        self._n_real = len(held)
        log.info("classifier for val/frechet_classifier: held-out accuracy %.3f", self._accuracy)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        if not self._prepared:
            self._prepare(trainer, pl_module)
        if self.metric is None:
            return
        self.metric.to(pl_module.device)
        with own_rng(pl_module.device, self.seed):
            z = pl_module.prior.sample(self._n_real)
            fake = pl_module.render(z)
        self.metric.reset()  # the generated images' statistics; the held-out ones stay
        self.metric.update(fake, real=False)
        precision, recall = knn_precision_recall(self._real_features.to(pl_module.device),
                                                 self.model.features(fake).double(), self.k)
        figures = {"val/frechet_classifier": max(float(self.metric.compute()), 0.0),
                   "val/precision_classifier": precision, "val/recall_classifier": recall,
                   "val/classifier_accuracy": self._accuracy}
        predicted = self.model(fake).argmax(1)
        figures["val/class_imbalance"] = 0.5 * float(
            (class_shares(predicted.cpu(), self.model.n_classes) - self._real_classes).abs().sum())
        if getattr(pl_module, "conditional", False):  # is each sample of the class it was asked for?
            asked = pl_module.prior.labels_of(z)
            figures["val/class_match"] = (predicted == asked).double().mean().item()
        pl_module.log_dict(figures, sync_dist=True)
