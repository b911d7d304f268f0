"""Reference rows for the image-quality figures: what real data scores.

    python benchmarks/reference_quality.py [--data-dir ../shared/data] [--experiments emgn_mnist otgan_fashion otgan_mnist]
    python benchmarks/reference_quality.py --experiments emgn_mnist --override data=fashion_mnist

For each reference experiment, its data exactly as the experiment loads it (same split,
size and value range) and the classifier `val/frechet_classifier` trains (same settings,
same seed), then Fréchet distance, k-NN precision and recall against the same held-out
images for three stand-ins of a generator:

- real: real training images scored as if generated (the floor a perfect generator
  reaches, up to sampling noise);
- blurred: the same images blurred with a 3×3 box filter (a generator counts as sharp
  when it beats this row on Fréchet distance AND recall);
- mean: the mean training image, repeated (the worst sensible generator).

A code-space experiment (`latent_mnist`: an autoencoder stage) adds two stand-ins, its
autoencoder taken from the cache as its runs take it (trained first when missing):
decoded training codes (the autoencoder's copies: what a lookup table in code space
scores; for quality, the ceiling a code-space generator can reach, in the same way as
`real`) and, for memorization, decoded unseen codes (held-out images through the
autoencoder: novel, as blurred as the autoencoder makes them).

The figures are those the training run logs at each validation (val/frechet_classifier,
val/precision_classifier, val/recall_classifier), so a run's numbers read against them.

`--memorization` prints the memorization figures a run logs (val/train_distance_ratio,
val/near_copies, val/data_copying_ct; `ot_gen.evaluation.memorization`) for four
stand-ins, all scored against the first half of the held-out images as the reference:
the second half of the held-out images (unseen real data: novel), the same blurred 3×3
(novel but soft: what blur alone does to each figure), training images (pure copies) and
the same training images blurred 3×3 (softened copies).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ot_gen.run.config_checks import instantiate_group  # noqa: E402
from ot_gen.evaluation.frechet import ClassifierFrechet, image_scores, train_classifier  # noqa: E402
from ot_gen.evaluation.memorization import CopyingTest, Reference, pixel_scores  # noqa: E402


# (column title, key of a row's scores, number format) of the two tables
QUALITY_COLUMNS = [("Fréchet (classifier)", "frechet", ".3f"), ("precision", "precision", ".3f"),
                   ("recall", "recall", ".3f")]
MEMORIZATION_COLUMNS = [("train distance ratio", "train_distance_ratio", ".3f"), ("near copies", "near_copies", ".3f"),
                        ("C_T (data copying)", "data_copying_ct", ".2f")]


def blur(images: torch.Tensor) -> torch.Tensor:
    """3×3 box blur, edges averaged over the pixels that exist."""
    return torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)


def _setup(experiment: str, data_dir: Path, cache_dir: Path, overrides: tuple[str, ...]):
    """(the experiment's config, its data set up, the classifier its runs train, its
    autoencoder or None)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides, f"paths.data_dir={data_dir}",
                                          f"data.cache_dir={cache_dir}", "paths.output_dir=/tmp/unused"])
    settings = ClassifierFrechet(**{k: v for k, v in OmegaConf.to_container(cfg.callbacks.frechet_classifier).items()
                                    if k != "_target_"})
    data = instantiate_group("data", cfg.data)
    data.setup("fit")
    model = train_classifier(data.train_set[: settings.max_train], data.train_labels[: settings.max_train],
                             settings.steps, seed=settings.seed)
    autoencoder = None
    if cfg.get("autoencoder") is not None:
        stage = instantiate_group("autoencoder", cfg.autoencoder)
        with tempfile.TemporaryDirectory() as run_dir:
            autoencoder = stage.prepare(data, OmegaConf.to_container(cfg.data, resolve=True),
                                        OmegaConf.to_container(cfg.autoencoder, resolve=True), Path(run_dir))
    return cfg, settings, data, model, autoencoder


@torch.no_grad()
def decoded(autoencoder, images: torch.Tensor) -> torch.Tensor:
    """The images through the autoencoder: their codes, decoded."""
    return torch.cat([autoencoder(c) for c in images.split(1000)])


def memorization_rows(experiment: str, data_dir: Path, cache_dir: Path,
                      overrides: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    cfg, settings, data, model, autoencoder = _setup(experiment, data_dir, cache_dir, overrides)
    mem = cfg.callbacks.memorization
    held = data.val_set[: mem.n_samples]
    reference, unseen = held[: len(held) // 2], held[len(held) // 2 :]
    train = data.train_set
    copies = train[: len(unseen)]
    ref = Reference.of(data.to_unit(reference), data.to_unit(train))
    features = lambda x: model.features(x).detach()  # noqa: E731
    copying = CopyingTest.of(features(train), features(reference), mem.cells)
    rows = {}
    stand_ins = [("held-out (unseen)", unseen), ("blurred unseen", blur(unseen)), ("copies", copies),
                 ("blurred copies", blur(copies))]
    if autoencoder is not None:
        stand_ins += [("decoded unseen codes", decoded(autoencoder, unseen)),
                      ("decoded training codes (the autoencoder's copies)", decoded(autoencoder, copies))]
    for name, images in stand_ins:
        rows[name] = {**pixel_scores(data.to_unit(images).clamp(0, 1), data.to_unit(train), ref),
                      "data_copying_ct": copying.score(features(images), mem.min_per_cell // 2)}
    return rows


def reference_rows(experiment: str, data_dir: Path, cache_dir: Path,
                   overrides: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    cfg, settings, data, model, autoencoder = _setup(experiment, data_dir, cache_dir, overrides)
    held = data.val_set[: settings.n_samples]
    real = data.train_set[: len(held)]
    mean = data.train_set.mean(0, keepdim=True).expand_as(real)
    stand_ins = [("real", real), ("blurred", blur(real)), ("mean", mean)]
    if autoencoder is not None:
        stand_ins.append(("decoded training codes (the ceiling)", decoded(autoencoder, real)))
    return {name: image_scores(model, held, images, settings.k) for name, images in stand_ins}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ot_gen")
    parser.add_argument("--experiments", nargs="+", default=["emgn_mnist", "otgan_fashion", "otgan_mnist"])
    parser.add_argument("--override", nargs="*", default=[],
                        help="Hydra overrides after the experiment's, as a run would take them (e.g. data=fashion_mnist)")
    parser.add_argument("--memorization", action="store_true",
                        help="the memorization figures (copies or new images?) instead of the quality figures")
    args = parser.parse_args()
    rows_of, columns = (memorization_rows, MEMORIZATION_COLUMNS) if args.memorization else (reference_rows, QUALITY_COLUMNS)
    print("| experiment | stand-in | " + " | ".join(title for title, _, _ in columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for experiment in args.experiments:
        label = " ".join([experiment, *args.override])
        for name, scores in rows_of(experiment, args.data_dir.resolve(), args.cache_dir, tuple(args.override)).items():
            print(f"| {label} | {name} | " + " | ".join(format(scores[key], spec) for _, key, spec in columns) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
