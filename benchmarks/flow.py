"""Flow matching on OT pairs against the one-step generator, on a 2-D set, one run at a time.

    python benchmarks/flow.py [--steps 3000] [--data eight_gaussians] [--common "..."]

Trains, one after the other with the same data, seed, steps, batch and network size:
- `one-step`: the default minibatch run (`python train.py`): a generator regressed onto
  its exact partners, one network evaluation a sample;
- `flow, exact pairs`: `experiment=flow_8gaussians` (minibatch OT-CFM, 256 pairs a round);
- `flow, random pairs`: the same with `matcher=random` (plain conditional flow matching,
  the baseline every OT-CFM paper compares with);
- `flow, whole-set exact pairs`: rounds that pair the whole training set with as many
  Gaussian draws by one exact assignment, then pass over the pairs in batches of 256;
- `torchcfm ExactOptimalTransportConditionalFlowMatcher` and `torchcfm
  ConditionalFlowMatcher`: torchcfm's own pairing and path sampling (`sample_location_and_
  conditional_flow`, sigma 0) in the loop of its 2-D tutorial, with the same velocity MLP
  (`ot_gen.flow.FlowGenerator`: 3 x 256, 32 time features), steps, batch of 256 reals from
  the same training set, seed, Adam with the same cosine decay and EMA, sampled and scored
  by the same code; then torchcfm's exact pairing again for as many steps as fill the
  training time of `flow, exact pairs` (equal wall time: its loop has no Lightning
  around it). torchcfm is a benchmark-only dependency: `.uv/bin/uv sync --frozen --group
  bench` installs it into .venv (`python3 bootstrap.py` removes it again); without it those
  rows are skipped.

Printed for each: the final evaluation's W2 against held-out points (mean ± spread of its
`--draws` draws of 2000 samples: 20 by default, as one draw's noise is as large as the
differences between the flows) with the floor (two data samples), the velocity evaluations a sample cost
(`train/nfe`), training seconds, and for the flows: the straightness of the learned paths
(|x1 − x0|² over the path energy ∫|v|² dt, 1 for straight paths at constant speed; 100
Euler steps on 2000 prior draws) and W2 when sampled with 1, 2, 4 and 8 Euler steps (a
flow whose paths are straight needs few steps). Beside them, whether the samples copy the
training points: the memorization figures of the image runs on 2000 samples
(`ot_gen.evaluation.memorization`): the median distance to the nearest training point
over held-out points' (1: no closer than unseen data; 0: copies) and the share of near
copies by the ratio test (about 0.05 for unseen data). "Euler steps to 64's W2 + 5%": the
fewest of 1, 2, 4, ... 64 plain Euler steps whose W2 (the same 2000 prior draws against
2000 held-out points) is within 5% of the flow's own W2 at 64 steps: the NFE its paths
need, whatever its accuracy (an absolute target drowns in the draws' noise: the spread of
eval W2 is 0.02-0.06 here). "training s": the optimizer steps' time (the
framework's `train_s_per_step` x steps, without validations); "wall s": the whole run.
Time it with nothing else running.
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

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ot_gen.evaluation.final import w2_over_draws  # noqa: E402
from ot_gen.evaluation.memorization import Reference, pixel_scores  # noqa: E402
from ot_gen.evaluation.metrics import w2  # noqa: E402
from ot_gen.flow import FlowGenerator  # noqa: E402
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
def few_steps(flow: FlowGenerator, held_out: torch.Tensor, x0: torch.Tensor) -> tuple[dict[int, float], int]:
    """W2 at 1, 2, 4, ... 64 Euler steps from the same prior draws, and the fewest steps
    within 5% of the W2 at 64."""
    out = {}
    for steps in (1, 2, 4, 8, 16, 32, 64):
        flow.integrate_with("euler", steps)
        out[steps] = w2(flow(x0), held_out)
    enough = min(k for k, v in out.items() if v <= 1.05 * out[64])
    return out, enough


class TorchCFMRun:
    """A velocity trained by torchcfm's flow matcher in the loop of its 2-D tutorial:
    per step 256 reals (shuffled passes over the training set) and 256 Gaussian draws go
    through `sample_location_and_conditional_flow`, the MLP regresses `ut` at (xt, t).
    The optimizer, learning-rate decay and EMA are the framework's defaults, so that only
    the pairing and path sampling differ. `sample(n)` integrates the EMA weights as the
    framework's flows are sampled (20 midpoint steps)."""

    device = torch.device("cpu")

    def __init__(self, matcher_name: str, steps: int, train_set: torch.Tensor, seed: int = 0,
                 lr: float = 1e-3, batch: int = 256, decay: float = 0.999):
        import torchcfm.conditional_flow_matching as cfm

        torch.manual_seed(seed)
        np.random.seed(seed)  # torchcfm's plan draws pairs with numpy
        dim = train_set.shape[1]
        self.flow = FlowGenerator(dim, (dim,))
        self.ema = FlowGenerator(dim, (dim,))
        self.ema.load_state_dict(self.flow.state_dict())
        matcher = getattr(cfm, matcher_name)(sigma=0.0)
        opt = torch.optim.Adam(self.flow.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-5)
        order, at = torch.randperm(len(train_set)), 0
        start = time.perf_counter()
        for step in range(steps):
            if at + batch > len(order):
                order, at = torch.randperm(len(train_set)), 0
            x1 = train_set[order[at: at + batch]]
            at += batch
            x0 = torch.randn_like(x1)
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
            loss = (self.flow.velocity(xt, t) - ut).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            keep = min(decay, (1 + step) / (10 + step))  # the framework's EMA warm-up
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.flow.parameters()), 1.0 - keep)
        self.train_s = time.perf_counter() - start
        self.ema.eval()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.ema(torch.randn(n, self.ema.in_dim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--data", default="eight_gaussians")
    parser.add_argument("--n-train", type=int, default=10000, help="the data's n_train (the whole-set row's pool)")
    parser.add_argument("--draws", type=int, default=20,
                        help="draws of 2000 samples that eval W2 averages (eval.w2_draws; the framework's default is 5)")
    parser.add_argument("--common", default="", help="overrides added to every run")
    parser.add_argument("--only-torchcfm", action="store_true",
                        help="of the framework's rows run only the exact-pair flow (the torchcfm rows' equal-time reference)")
    args = parser.parse_args()
    common = [f"trainer.max_steps={args.steps}", f"data.n_train={args.n_train}", f"eval.w2_draws={args.draws}",
              *shlex.split(args.common)]
    print(f"| run | eval W2 | floor | ratio | train distance ratio | near copies | NFE a sample | training s | "
          f"wall s | straightness | W2 at 1 / 2 / 4 / 8 Euler steps | Euler steps to 64's W2 + 5% |\n"
          f"| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    todo = rows(args.data, args.n_train)
    if args.only_torchcfm:
        todo = todo[1:2]
    exact_train_s = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(todo):
            out = Path(tmp) / str(i)
            metrics, _ = train([*overrides, *common], out)
            module, _ = load_module(out / "checkpoints" / "last.ckpt")
            data = instantiate_group("data", OmegaConf.create(_record_data(out)), batch_size=256)
            data.setup("fit")
            train_s = metrics["train_s_per_step"] * metrics["steps"]
            if name == "flow, exact pairs":
                exact_train_s = train_s
            flow = module.generator if getattr(module.generator, "is_flow", False) else None
            figures = {k: metrics[k] for k in ("eval/w2", "eval/w2_spread", "eval/w2_floor", "eval/w2_ratio")}
            report(name, module, data, figures, flow, int(metrics.get("train/nfe", 1)), train_s, metrics["wall_s"])
        torchcfm_rows(args.steps, args.draws, data, exact_train_s)


def torchcfm_rows(steps: int, draws: int, data, exact_train_s: float | None) -> None:
    """torchcfm's exact-OT and plain flow matchers at the same steps, then its exact one at
    the training time of the framework's exact-pair flow."""
    try:
        import torchcfm  # noqa: F401
    except ImportError:
        print("torchcfm rows skipped: `.uv/bin/uv sync --frozen --group bench` installs it", flush=True)
        return
    runs = [("torchcfm ExactOptimalTransportConditionalFlowMatcher", "ExactOptimalTransportConditionalFlowMatcher", steps),
            ("torchcfm ConditionalFlowMatcher", "ConditionalFlowMatcher", steps)]
    for i, (name, matcher, n_steps) in enumerate(runs):
        start = time.perf_counter()
        run = TorchCFMRun(matcher, n_steps, data.train_set)
        figures = w2_over_draws(draws, run, data.eval_data)
        report(name, run, data, figures, run.ema, 40, run.train_s, time.perf_counter() - start)
        if i == 0 and exact_train_s is not None:  # equal time: as many steps as our exact flow's training took
            runs.insert(1, (f"torchcfm ExactOptimalTransportConditionalFlowMatcher, equal training time "
                            f"({exact_train_s:.1f} s)", matcher, max(1, round(exact_train_s / run.train_s * steps))))


def report(name: str, sampler, data, figures: dict, flow: FlowGenerator | None, nfe: int, train_s: float,
           wall_s: float) -> None:
    held_out = data.val_set[:2000]
    torch.manual_seed(0)
    copies = pixel_scores(sampler.sample(2000), data.train_set, Reference.of(held_out, data.train_set))
    if flow is not None:
        torch.manual_seed(0)
        x0 = torch.randn(2000, flow.in_dim)
        s = straightness(flow.velocity, x0)
        few, enough = few_steps(flow, held_out, x0)
        flat = f"{s:.3f} | " + " / ".join(f"{few[k]:.3f}" for k in (1, 2, 4, 8)) + f" | {enough}"
    else:
        flat = "— | — | —"
    print(f"| {name} | {figures['eval/w2']:.4f} ± {figures['eval/w2_spread']:.4f} | "
          f"{figures['eval/w2_floor']:.4f} | {figures['eval/w2_ratio']:.3f} | "
          f"{copies['train_distance_ratio']:.3f} | {copies['near_copies']:.3f} | "
          f"{nfe} | {train_s:.1f} | {wall_s:.1f} | {flat} |", flush=True)


def _record_data(run_dir: Path) -> dict:
    """The run's data config, as composed (`.hydra/config.yaml`), resolved."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return OmegaConf.to_container(cfg.data, resolve=True)


if __name__ == "__main__":
    main()
