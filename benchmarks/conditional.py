"""Class-conditional against unconditional training, at equal CPU time.

    python benchmarks/conditional.py [--minutes 10] [--experiment emgn_mnist]
        [--common "paths.data_dir=../shared/data"]

Trains `experiment` twice, one run at a time, each for `--minutes` of wall-clock time
(`trainer.max_time`; the runs stop at the end of a round and are then validated and
evaluated): as it is, and with `conditional=true` (the class beside the latent, one
matching per class). Printed per run, at its final validation: the rounds it trained,
Fréchet distance, precision and recall in the project classifier's features, the
memorization figures (median distance to the training set over unseen images', near
copies) and, for the conditional run, the share of samples the classifier puts in the
class they were made for (`val/class_match`, next to the classifier's own held-out
accuracy). Time the runs with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("val/frechet_classifier", "val/precision_classifier", "val/recall_classifier",
        "val/train_distance_ratio", "val/near_copies", "val/class_match", "val/classifier_accuracy")


def train(overrides: list[str], out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "train.py", *overrides, "logger=csv", f"hydra.run.dir={out}"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--experiment", default="emgn_mnist")
    parser.add_argument("--common", default="paths.data_dir=../shared/data")
    args = parser.parse_args()
    limit = time.strftime("%H:%M:%S", time.gmtime(args.minutes * 60))
    common = [f"experiment={args.experiment}", f"+trainer.max_time=00:{limit}", *shlex.split(args.common)]
    print(f"experiment={args.experiment}, {args.minutes:g} minutes of training each")
    print("| run | rounds | Fréchet | precision | recall | train distance ratio | near copies | class match "
          "(classifier accuracy) | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate([("unconditional", []), ("conditional=true", ["conditional=true"])]):
            m, wall = train(common + extra, Path(tmp) / f"run{i}")
            v = {k: m.get(k, float("nan")) for k in KEYS}
            match = "—" if label == "unconditional" else \
                f"{v['val/class_match']:.3f} ({v['val/classifier_accuracy']:.3f})"
            print(f"| {label} | {m['rounds']} | {v['val/frechet_classifier']:.2f} | "
                  f"{v['val/precision_classifier']:.3f} | {v['val/recall_classifier']:.3f} | "
                  f"{v['val/train_distance_ratio']:.3f} | {v['val/near_copies']:.3f} | {match} | {wall:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
