"""Sharp AND novel? The trade-off between sample quality and copying, from training runs.

    python benchmarks/generalization.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--plot docs/figures/tradeoff.png]
        [--blurred-frechet 10.49 --blurred-recall 0.785]

Each RUN_DIR is a run trained with `logger=csv` (its `csv/metrics.csv`): every validation
logs the quality figures (val/frechet_classifier, val/recall_classifier) and the
memorization figures (val/train_distance_ratio, val/near_copies, val/data_copying_ct) on
the same generated images. The script prints, per run, its trajectory (one row per
validation) and marks the validations that meet the targets: Fréchet distance and recall
better than 3×3-blurred real data (the `--blurred-*` reference, from
`benchmarks/reference_quality.py`) AND a median distance to the training set at least
0.9 of unseen images' with at most 10% near-copies. `--plot` draws near-copy share
against Fréchet distance, one curve per run (its validations in order), the blurred
reference as a vertical line and the novelty target as a horizontal one.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

KEYS = ("val/frechet_classifier", "val/recall_classifier", "val/train_distance_ratio", "val/near_copies",
        "val/data_copying_ct")
NOVEL_RATIO, NOVEL_COPIES = 0.9, 0.10


def trajectory(run_dir: Path) -> list[dict[str, float]]:
    """The validations of a run: the round and the figures, in order. Lightning's loggers
    count training batches as steps, and one batch is one round here."""
    by_step: dict[int, dict[str, float]] = {}
    with open(Path(run_dir) / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if not row.get("val/frechet_classifier"):
                continue
            step = int(float(row["step"]))
            by_step[step] = {"round": step + 1, **{k: float(row[k]) if row.get(k) else math.nan for k in KEYS}}
    rows = [by_step[s] for s in sorted(by_step)]
    # the end-of-run validation scores the final generator again, one step later: the same figures
    return [v for i, v in enumerate(rows) if i == 0 or any(v[k] != rows[i - 1][k] for k in KEYS)]


def meets(v: dict[str, float], frechet: float, recall: float) -> tuple[bool, bool]:
    sharp = v["val/frechet_classifier"] < frechet and v["val/recall_classifier"] > recall
    novel = v["val/train_distance_ratio"] >= NOVEL_RATIO and v["val/near_copies"] <= NOVEL_COPIES
    return sharp, novel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (split at the last =, so a label may be an override)")
    parser.add_argument("--blurred-frechet", type=float, default=10.49)
    parser.add_argument("--blurred-recall", type=float, default=0.785)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    runs = {label: trajectory(Path(path)) for label, path in (r.rsplit("=", 1) for r in args.runs)}
    print("| run | round | Fréchet | recall | train distance ratio | near copies | C_T | sharp | novel |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, rows in runs.items():
        for v in rows:
            sharp, novel = meets(v, args.blurred_frechet, args.blurred_recall)
            print(f"| {label} | {v['round']} | {v['val/frechet_classifier']:.2f} | {v['val/recall_classifier']:.3f} | "
                  f"{v['val/train_distance_ratio']:.3f} | {v['val/near_copies']:.3f} | "
                  f"{v['val/data_copying_ct']:.2f} | {'yes' if sharp else ''} | {'yes' if novel else ''} |")
    if args.plot:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 5))
        ax = fig.add_subplot()
        for label, rows in runs.items():
            fd = [v["val/frechet_classifier"] for v in rows]
            copies = [v["val/near_copies"] for v in rows]
            ax.plot(fd, copies, marker="o", ms=3, label=label)
            ax.annotate(f"round {rows[-1]['round']}", (fd[-1], copies[-1]), fontsize=7)
        ax.axvline(args.blurred_frechet, color="grey", ls="--", lw=1, label="3×3-blurred real data")
        ax.axhline(NOVEL_COPIES, color="grey", ls=":", lw=1, label=f"near copies ≤ {NOVEL_COPIES:.2f}")
        ax.set_xscale("log")
        ax.set_xlabel("Fréchet distance (classifier features), lower = sharper")
        ax.set_ylabel("near-copy share (ratio test), lower = more novel")
        ax.legend(fontsize=8)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
