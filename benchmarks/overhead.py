"""Framework overhead: the default 2-D job through `train.py` against the same job as a
bare PyTorch loop written here, measured in one run of this script, one after the other.

    python benchmarks/overhead.py [--steps 3000] [--repeats 2]

The job (the default config): 8 Gaussians (10,000 training points, noise 0.1), a
Gaussian prior in 2-D, an MLP 2-256-256-256-2 (ReLU), Adam lr 1e-3 with cosine decay to
1e-5 over all steps, 256 reals and 256 generated points per step, an exact assignment on
the squared Euclidean cost, its mean as the loss. The bare loop matches with scipy's
`linear_sum_assignment` and draws a fresh random order of the training set each pass.

Printed, each from a separate process (so whole-command times include Python's and the
libraries' imports):
- per-step training time: the bare loop's own clock; `train.py`'s from its metrics.json
  (`train_s_per_step`: fit time less the time spent in validations, per optimizer step);
- whole-command wall time: the bare loop; `train.py` lean (`logger=csv callbacks=none
  trainer.enable_progress_bar=false eval.n_generated=0`); and `train.py` as a user runs
  it (pictures, validations, W&B offline, the final evaluation);
- the time `train.py` spent in validations, and the final W2 of each (the framework's
  val/w2 against 2000 held-out points, the bare loop's the same way);
- the ratios, last.

The three commands run `--repeats` times, interleaved; each figure is the fastest of its
repeats (timings on a shared 2-core machine vary by 10% and more between identical runs).
The whole-command ratios are also given per repeat (the three commands of one repeat run
back to back, so they share the machine's state of the moment) with their median, the
figure that slow phases of the machine move least.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEAN = ["logger=csv", "callbacks=none", "trainer.enable_progress_bar=false", "eval.n_generated=0"]


def bare_loop(steps: int, seed: int = 0) -> dict[str, float]:
    """The job by hand: no Lightning, no Hydra, no diagnostics."""
    import numpy as np
    import ot
    import torch
    from scipy.optimize import linear_sum_assignment
    from torch import nn

    sys.path.insert(0, str(ROOT / "src"))
    from ot_gen.data.toy import sample  # the same data as data=eight_gaussians

    torch.manual_seed(seed)
    train = torch.from_numpy(sample("eight_gaussians", 10_000, seed=seed, stream=0, noise=0.1))
    val = torch.from_numpy(sample("eight_gaussians", 2000, seed=seed, stream=1, noise=0.1))
    net = nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-5)
    batch, order = 256, torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(steps):
        if len(order) < batch:
            order = torch.randperm(len(train))
        y, order = train[order[:batch]], order[batch:]
        x = net(torch.randn(batch, 2))
        rows, cols = linear_sum_assignment(torch.cdist(x.detach(), y).pow(2).numpy())
        loss = (x[rows] - y[cols]).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    per_step = (time.perf_counter() - start) / steps
    with torch.no_grad():
        x = net(torch.randn(len(val), 2)).double().numpy()
    v = val.double().numpy()
    w2 = float(np.sqrt(ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(v), 1 / len(v)), ot.dist(x, v))))
    return {"s_per_step": per_step, "val/w2": w2}


def timed_command(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def train_py(out: Path, steps: int, *overrides: str) -> tuple[float, dict[str, float]]:
    wall, _ = timed_command([sys.executable, "train.py", f"trainer.max_steps={steps}", *overrides,
                             f"hydra.run.dir={out}"])
    return wall, json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.bare:
        print(json.dumps(bare_loop(args.steps)))
        return
    runs = {"bare": [], "lean": [], "full": []}
    for _ in range(args.repeats):
        wall, out = timed_command([sys.executable, __file__, "--bare", f"--steps={args.steps}"])
        runs["bare"].append((wall, json.loads(out.strip().splitlines()[-1])))
        with tempfile.TemporaryDirectory() as tmp:
            runs["lean"].append(train_py(Path(tmp) / "lean", args.steps, *LEAN))
            runs["full"].append(train_py(Path(tmp) / "default", args.steps))
    fastest = lambda name, key: min(m[key] for _, m in runs[name])  # noqa: E731
    bare_wall, lean_wall, full_wall = (min(w for w, _ in runs[name]) for name in ("bare", "lean", "full"))
    bare = {"s_per_step": fastest("bare", "s_per_step"), "val/w2": runs["bare"][0][1]["val/w2"]}
    lean = {"train_s_per_step": fastest("lean", "train_s_per_step"), "val_s": fastest("lean", "val_s"),
            "val/w2": runs["lean"][0][1]["val/w2"]}
    full = {"train_s_per_step": fastest("full", "train_s_per_step"), "val_s": fastest("full", "val_s"),
            "val/w2": runs["full"][0][1]["val/w2"]}
    rows = [
        ("bare loop (scipy linear_sum_assignment)", bare["s_per_step"], bare_wall, None, bare["val/w2"]),
        ("train.py " + " ".join(LEAN), lean["train_s_per_step"], lean_wall, lean["val_s"], lean["val/w2"]),
        ("train.py (pictures, validations, W&B offline, final evaluation)", full["train_s_per_step"], full_wall,
         full["val_s"], full["val/w2"]),
    ]
    print(f"{args.steps} steps, 256 reals and 256 generated points per step; fastest of {args.repeats} runs each\n")
    print("| run | ms per step | whole command s | in validations s | final val/w2 |")
    print("| --- | --- | --- | --- | --- |")
    for name, per_step, wall, val_s, w2 in rows:
        print(f"| {name} | {per_step * 1e3:.2f} | {wall:.1f} | {'' if val_s is None else f'{val_s:.1f}'} | {w2:.4f} |")
    print()
    print(f"per-step ratio, train.py lean / bare: {lean['train_s_per_step'] / bare['s_per_step']:.2f} (target <= 1.2)")
    print(f"whole-command ratio, train.py lean / bare: {lean_wall / bare_wall:.2f}")
    print(f"whole-command ratio, train.py default / bare: {full_wall / bare_wall:.2f} (target <= 1.4)")
    for name in ("lean", "full"):
        ratios = [w / b for (w, _), (b, _) in zip(runs[name], runs["bare"])]
        print(f"per repeat, train.py {name} / bare: {' '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
