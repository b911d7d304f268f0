"""The adaptive mixture prior against the fixed one, at equal CPU time.

    python benchmarks/adaptive_prior.py --preset toy [--minutes 1]
    python benchmarks/adaptive_prior.py --preset mnist [--minutes 6] [--common "paths.data_dir=../shared/data"]

Trains each setting of the preset one after the other, each for `--minutes` of wall-clock
time (`trainer.max_time`; a run stops at the end of a round, then validates and
evaluates), with `trainer.max_steps=1000000` so that time alone stops it (the cosine
schedule then stays near its starting rate, the same for every row). Time them with
nothing else running.

- `toy`: eight Gaussians, minibatch mode with 4 generated points per real and the exact
  assignment (so that the matching leaves 3 in 4 generated points out and the weights have
  something to learn from): the Gaussian prior, the fixed 16-component mixture, the mixture
  with adaptive weights only, and `prior=gmm_adaptive` (weights, sigmas, respawn).
  Printed: eval W2 (mean ± std of the final evaluation's draws) and its ratio to the
  floor, and coverage: held-out points' median distance to the nearest generated point
  over that to the nearest training point (above 1: parts of the data the samples miss).
  A 2-D density has no copies to count; the memorization figures are the image rows'.
- `mnist`: the minibatch experiment `emgn_mnist_distinct` with a 100-component mixture
  (sigma 0.25): fixed, `gmm_adaptive`, weights only, sigmas only; and `emgn_mnist_copies` (one component per image, the
  oversampled whole-set assignment, where every drawn point is matched once, so only
  the sigmas adapt), fixed and with `prior.adapt_sigma=true`. Printed at the final
  validation: Fréchet distance, precision and recall in the project classifier's
  features, the memorization figures (median distance to the training set over unseen
  images', share of near copies) and the class imbalance (total-variation distance of the
  classifier's class shares from the held-out set's).

Both print the adaptive prior's state at the end: effective number of components
(exp of the weights' entropy), median sigma, components respawned.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = ["data=eight_gaussians", "mode=minibatch", "matcher=exact"]
GMM16 = ["prior.n_components=16", "prior.sigma=0.1"]
GMM100 = ["~prior.std", "prior.dim=20", "prior.n_components=100", "prior.sigma=0.25"]  # emgn_mnist_seed's std goes
PRESETS = {
    "toy": [
        ("gaussian", [*TOY, "mode.ratio=4", "prior=gaussian"]),
        ("gmm, fixed", [*TOY, "mode.ratio=4", "prior=gmm", *GMM16]),
        ("gmm, fixed, mode.ratio=1", [*TOY, "mode.ratio=1", "prior=gmm", *GMM16]),
        ("gmm, adapt_weights", [*TOY, "mode.ratio=4", "prior=gmm", *GMM16, "prior.adapt_weights=true"]),
        ("gmm_adaptive (weights, sigma)", [*TOY, "mode.ratio=4", "prior=gmm_adaptive", *GMM16]),
        ("gmm_adaptive, respawn_below=0.1", [*TOY, "mode.ratio=4", "prior=gmm_adaptive", *GMM16,
                                             "prior.respawn_below=0.1"]),
    ],
    "mnist": [
        ("emgn_mnist_distinct, gmm 100, fixed", ["experiment=emgn_mnist_distinct", "prior=gmm", *GMM100]),
        ("emgn_mnist_distinct, gmm 100, gmm_adaptive", ["experiment=emgn_mnist_distinct", "prior=gmm_adaptive", *GMM100]),
        ("emgn_mnist_distinct, gmm 100, adapt_weights",
         ["experiment=emgn_mnist_distinct", "prior=gmm", *GMM100, "prior.adapt_weights=true"]),
        ("emgn_mnist_distinct, gmm 100, adapt_sigma",
         ["experiment=emgn_mnist_distinct", "prior=gmm", *GMM100, "prior.adapt_sigma=true"]),
        ("emgn_mnist_copies, fixed", ["experiment=emgn_mnist_copies"]),
        ("emgn_mnist_copies, adapt_sigma", ["experiment=emgn_mnist_copies", "prior.adapt_sigma=true"]),
    ],
}
PRIOR = ("train/prior_effective_components", "train/prior_sigma_median", "train/prior_respawned")


def train(overrides: list[str], out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "train.py", *overrides, "logger=csv", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - start


def fmt(m: dict, key: str, digits: int = 3) -> str:
    value = m.get(key, math.nan)
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def prior_state(m: dict) -> str:
    if "train/prior_effective_components" not in m:
        return "fixed"
    return (f"{m['train/prior_effective_components']:.1f} effective, σ median {m['train/prior_sigma_median']:.3f}, "
            f"{m['train/prior_respawned']:.0f} respawned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--minutes", type=float, default=None, help="per run (default: toy 1, mnist 6)")
    parser.add_argument("--common", default="paths.data_dir=../shared/data")
    parser.add_argument("--only", type=int, nargs="*", help="run only these rows (0-based)")
    parser.add_argument("--keep", type=Path, help="keep the run dirs (their pictures) under this folder")
    args = parser.parse_args()
    minutes = args.minutes or (1.0 if args.preset == "toy" else 6.0)
    limit = time.strftime("%H:%M:%S", time.gmtime(minutes * 60))
    common = [f"+trainer.max_time=00:{limit}", "trainer.max_steps=1000000", *shlex.split(args.common)]
    rows = [r for i, r in enumerate(PRESETS[args.preset]) if args.only is None or i in args.only]
    print(f"preset {args.preset}: {minutes:g} minutes of training each")
    if args.preset == "toy":
        print("| prior | rounds | eval W2 | ratio to floor | coverage (nn ratio) | prior at the end | wall s |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    else:
        print("| setting | rounds | Fréchet | precision | recall | train distance ratio | near copies | "
              "class imbalance | prior at the end | wall s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate(rows):
            m, wall = train(common + extra, (args.keep or Path(tmp)) / f"run{i}")
            if args.preset == "toy":
                nn_ratio = m["eval/nn_generated_median"] / max(m["eval/nn_train_median"], 1e-12)
                print(f"| {label} | {m['rounds']} | {m['eval/w2']:.4f} ± {m['eval/w2_spread']:.4f} | "
                      f"{m['eval/w2_ratio']:.3f} | {nn_ratio:.3f} | {prior_state(m)} | {wall:.0f} |", flush=True)
            else:
                print(f"| {label} | {m['rounds']} | {fmt(m, 'val/frechet_classifier', 2)} | "
                      f"{fmt(m, 'val/precision_classifier')} | {fmt(m, 'val/recall_classifier')} | "
                      f"{fmt(m, 'val/train_distance_ratio')} | {fmt(m, 'val/near_copies')} | "
                      f"{fmt(m, 'val/class_imbalance')} | {prior_state(m)} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
