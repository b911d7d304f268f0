"""Flow matching on OT pairs against the one-step generator, on a 2-D set, one run at a time.

    python benchmarks/flow.py [--steps 3000] [--data eight_gaussians] [--common "..."]

Trains, one after the other with the same data, seed, steps, batch and network size:
- `one-step`: the default minibatch run (`python train.py`): a generator regressed onto
  its exact partners, one network evaluation a sample;
- `flow, exact pairs`: `experiment=flow_8gaussians` (minibatch OT-CFM, 256 pairs a round);
- `flow, random pairs`: the same with `matcher=random` (plain conditional flow matching,
  the baseline every OT-CFM paper compares with);
- `flow, whole-set exact pairs`: rounds that pair the whole training set with as many
  Gaussian draws by one exact assignment, then pass over the pairs in batches of 256.

Printed for each: the final evaluation's W2 against held-out points (mean ± spread of its
draws) with the floor (two data samples), the velocity evaluations a sample cost
(`train/nfe`), training seconds, and for the flows: the straightness of the learned paths
(|x1 − x0|² over the path energy ∫|v|² dt, 1 for straight paths at constant speed; 100
Euler steps on 2000 prior draws) and W2 when sampled with 1, 2, 4 and 8 Euler steps (a
flow whose paths are straight needs few steps). Beside them, whether the samples copy the
training points: the memorization figures of the image runs on 2000 samples
(`ot_gen.evaluation.memorization`): the median distance to the nearest training point
over held-out points' (1: no closer than unseen data; 0: copies) and the share of near
copies by the ratio test (about 0.05 for unseen data). Time it with nothing else running.
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

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ot_gen.evaluation.memorization import Reference, pixel_scores  # noqa: E402
from ot_gen.evaluation.metrics import w2  # noqa: E402
from ot_gen.flow.velocity import straightness  # noqa: E402
from ot_gen.run.config_checks import instantiate_group  # noqa: E402
from ot_gen.run.sample import load_module  # noqa: E402

FLOW = ["mode=flow", "network=flow_mlp", "prior=gaussian", "matcher=exact"]


def rows(data: str, n_train: int) -> list[tuple[str, list[str]]]:
    return [
        ("one-step (minibatch, exact)", [f"data={data}"]),
        ("flow, exact pairs", [f"data={data}", *FLOW]),
        ("flow, random pairs", [f"data={data}", *FLOW, "matcher=random"]),
        ("flow, whole-set exact pairs", [f"data={data}", *FLOW, f"mode.pool_size={n_train}", "mode.val_every_rounds=12"]),
    ]


def train(overrides: list[str], out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "train.py", *overrides, "logger=csv", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - start


@torch.no_grad()
def few_steps(module, held_out: torch.Tensor, x0: torch.Tensor) -> dict[int, float]:
    flow = module.generator
    out = {}
    for steps in (1, 2, 4, 8):
        flow.integrate_with("euler", steps)
        out[steps] = w2(flow(x0), held_out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--data", default="eight_gaussians")
    parser.add_argument("--n-train", type=int, default=10000, help="the data's n_train (the whole-set row's pool)")
    parser.add_argument("--common", default="", help="overrides added to every run")
    args = parser.parse_args()
    common = [f"trainer.max_steps={args.steps}", f"data.n_train={args.n_train}", *shlex.split(args.common)]
    print(f"| run | eval W2 | floor | ratio | train distance ratio | near copies | NFE a sample | training s | "
          f"straightness | W2 at 1 / 2 / 4 / 8 Euler steps |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | "
          f"--- |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(rows(args.data, args.n_train)):
            out = Path(tmp) / str(i)
            metrics, _ = train([*overrides, *common], out)
            module, _ = load_module(out / "checkpoints" / "last.ckpt")
            data = instantiate_group("data", OmegaConf.create(_record_data(out)), batch_size=256)
            data.setup("fit")
            held_out = data.val_set[:2000]
            torch.manual_seed(0)
            copies = pixel_scores(module.sample(2000), data.train_set, Reference.of(held_out, data.train_set))
            if getattr(module.generator, "is_flow", False):
                torch.manual_seed(0)
                x0 = module.prior.sample(2000)
                s = straightness(module.generator.velocity, x0)
                few = few_steps(module, held_out, x0)
                flat = f"{s:.3f} | " + " / ".join(f"{few[k]:.3f}" for k in sorted(few))
            else:
                flat = "— | —"
            print(f"| {name} | {metrics['eval/w2']:.4f} ± {metrics['eval/w2_spread']:.4f} | "
                  f"{metrics['eval/w2_floor']:.4f} | {metrics['eval/w2_ratio']:.3f} | "
                  f"{copies['train_distance_ratio']:.3f} | {copies['near_copies']:.3f} | "
                  f"{int(metrics.get('train/nfe', 1))} | {metrics['wall_s']:.1f} | {flat} |", flush=True)


def _record_data(run_dir: Path) -> dict:
    """The run's data config, as composed (`.hydra/config.yaml`), resolved."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return OmegaConf.to_container(cfg.data, resolve=True)


if __name__ == "__main__":
    main()
