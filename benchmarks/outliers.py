"""What the exact, partial and unbalanced matchers do with outliers in the training set.

    python benchmarks/outliers.py [--outliers 0.05] [--steps 3000] [--data eight_gaussians]
        [--common "OVERRIDES"] [--setting LABEL="OVERRIDES" ...]
    python benchmarks/outliers.py --data mnist --common "paths.data_dir=../shared/data ..."

Each setting trains `train.py` on the data with `data.outliers` of its training points
moved to 4× the data's radius (the held-out set stays clean), then draws 10,000 samples
from the final generator (`python -m ot_gen.sample`). Printed per setting: the final
W2 against the clean held-out points (`eval/w2`, mean of the final evaluation's draws;
for images the classifier's Fréchet distance and recall), the share of samples that
landed off the data (2-D: farther from the origin than 1.5× the clean data's radius,
between the data and the outliers or on them; images: nearest to a noise image),
and what the matcher left out in its last logged round (`train/untransported_real`, the
share of the reals' mass not transported; `train/dropped`, reals without a partner).
The first setting with samples off the data is the baseline of the "vs first" ratio; the
default settings start with the exact matcher on clean data, the figure to get back to.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "exact, clean data": "matcher=exact data.outliers=0",
    "exact": "matcher=exact",
    "partial 0.95": "matcher=partial matcher.mass=0.95",
    "unbalanced": "matcher=unbalanced",
}


def train_and_sample(overrides: list[str], out: Path) -> tuple[dict, np.ndarray]:
    cmd = [sys.executable, "train.py", *overrides, "logger=csv", f"hydra.run.dir={out}"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    samples = out / "samples.npy"
    subprocess.run([sys.executable, "-m", "ot_gen.sample", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
                    "n=10000", f"out={samples}"], cwd=ROOT, check=True, capture_output=True, text=True)
    return metrics, np.load(samples)


def training_set(overrides: list[str]):
    """The data module of a run with these overrides, set up: its training set (with the
    outliers in place) and `outlier_ids`."""
    import hydra
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    return dm


def off_the_data(common: list[str]):
    """The test of a sample being off the data, and its description. 2-D: farther from the
    origin than 1.5× the clean data's radius. Images: its nearest training image (L2) is
    one of the noise images."""
    dm = training_set(common)
    if dm.train_set.dim() == 2:
        clean = training_set(merged(common, ["data.outliers=0"]))
        radius = float(clean.train_set.norm(dim=1).max())
        return (lambda s: np.linalg.norm(s, axis=1) > 1.5 * radius,
                f"{len(dm.outlier_ids)} training points at {4 * radius:.1f} (4× the data's radius {radius:.2f}); "
                f"off the data: farther than {1.5 * radius:.2f}")
    import torch

    is_outlier = torch.zeros(len(dm.train_set), dtype=torch.bool)
    is_outlier[dm.outlier_ids] = True
    train = dm.train_set.flatten(1)

    def nearest_is_noise(samples):
        queries = torch.from_numpy(np.asarray(samples)).flatten(1).float()
        idx = torch.cat([torch.cdist(chunk, train).argmin(1) for chunk in queries.split(1000)])
        return is_outlier[idx].numpy()

    return nearest_is_noise, (f"{len(dm.outlier_ids)} of {len(dm.train_set)} training images are uniform noise; "
                              f"off the data: a sample whose nearest training image is one of them")


def merged(common: list[str], setting: list[str]) -> list[str]:
    """`common` overrides, less the keys the setting sets itself, then the setting's."""
    own = {o.split("=", 1)[0] for o in setting}
    return [o for o in common if o.split("=", 1)[0] not in own] + setting


def quality(metrics: dict) -> str:
    if "val/frechet_classifier" in metrics:  # images: the classifier's figures, with the memorization ones
        return (f"Fréchet {metrics['val/frechet_classifier']:.2f}, recall {metrics['val/recall_classifier']:.3f}; "
                f"train distance ratio {metrics.get('val/train_distance_ratio', float('nan')):.3f}, "
                f"near copies {metrics.get('val/near_copies', float('nan')):.3f}")
    return f"W2 {metrics['eval/w2']:.4f} ± {metrics['eval/w2_spread']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outliers", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--data", default="eight_gaussians")
    parser.add_argument("--common", default="", help="overrides for every setting, e.g. paths.data_dir=../shared/data")
    parser.add_argument("--setting", action="append", default=[], help='LABEL="OVERRIDES" (replaces the defaults)')
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting) if args.setting else SETTINGS
    common = [f"data={args.data}", f"data.outliers={args.outliers}", f"trainer.max_steps={args.steps}",
              *shlex.split(args.common)]
    is_off, described = off_the_data(common)
    print(f"data={args.data}, {args.outliers:.0%} outliers: {described}")
    print("| setting | quality (clean held-out) | samples off the data | vs the first setting with any "
          "| untransported real mass | reals without partner |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, overrides) in enumerate(settings.items()):
            metrics, samples = train_and_sample(merged(common, shlex.split(overrides)), Path(tmp) / f"run{i}")
            off = float(is_off(samples).mean())
            base = off if not base else base
            ratio = f"{off / base:.2f}" if base > 0 else "-"
            print(f"| `{overrides}` ({label}) | {quality(metrics)} | {off:.2%} | {ratio} "
                  f"| {metrics.get('train/untransported_real', 0.0):.3f} | {metrics.get('train/dropped', 0):.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
