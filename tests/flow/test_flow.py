"""mode=flow: a velocity field trained on OT pairs of prior points and reals, sampled by
integrating an ODE (torchdiffeq)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED, needs_shared
from ot_gen.errors import ConfigError
from ot_gen.evaluation.metrics import w2
from ot_gen.flow import FlowGenerator
from ot_gen.flow.velocity import straightness
from ot_gen.run.build import build
from ot_gen.run.sample import load_module
from ot_gen.run.train import run

FLOW = ["mode=flow", "network=flow_mlp", "network.width=64", "network.steps=8", "eval.n_generated=0",
        "callbacks=none", "mode.val_every_rounds=1000", "optimizer.lr=3e-3", "ema=null"]


def _trained(config, *overrides):
    cfg = config(*FLOW, *overrides)
    module, data, trainer, _ = build(cfg)
    data.setup("fit")
    held_out = data.val_set[:1000]
    torch.manual_seed(1)
    before = w2(module.sample(1000), held_out)
    trainer.fit(module, data)
    torch.manual_seed(1)
    return module, before, w2(module.sample(1000), held_out), held_out


@pytest.mark.parametrize("matcher", ["exact", "random"])
def test_a_flow_moves_samples_to_the_data_with_every_pairing(config, matcher):
    _, before, after, _ = _trained(config, f"matcher={matcher}", "trainer.max_steps=300")
    assert after < 0.5 * before, (before, after)  # about 0.98 untrained


def _straightness(module, n: int = 500) -> float:
    torch.manual_seed(2)
    return straightness(module.generator.velocity, module.prior.sample(n))


def test_the_exact_pairing_learns_straighter_paths_than_random_pairing(config):
    """The point of OT pairs: paths that do not cross, so an ODE needs fewer steps."""
    exact = _straightness(_trained(config, "matcher=exact", "trainer.max_steps=200")[0])
    random = _straightness(_trained(config, "matcher=random", "trainer.max_steps=200")[0])
    assert exact > 0.9 and random < 0.6, (exact, random)  # measured 0.98 and 0.28


@pytest.mark.parametrize("solver,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_the_ode_sampler_agrees_with_a_by_hand_loop_and_counts_its_evaluations(solver, per_step):
    torch.manual_seed(0)
    flow = FlowGenerator(2, (2,), depth=2, width=16, solver=solver, steps=10)
    z = torch.randn(50, 2)
    with torch.no_grad():
        x, h = z.clone(), 0.1
        for i in range(10):
            t = torch.tensor(i * h)
            v = flow.velocity
            if solver == "euler":
                x = x + h * v(x, t)
            elif solver == "midpoint":
                x = x + h * v(x + h / 2 * v(x, t), t + h / 2)
            else:  # torchdiffeq's rk4 is Kutta's 3/8 rule
                k1 = v(x, t)
                k2 = v(x + h * k1 / 3, t + h / 3)
                k3 = v(x + h * (k2 - k1 / 3), t + 2 * h / 3)
                k4 = v(x + h * (k1 - k2 + k3), t + h)
                x = x + h / 8 * (k1 + 3 * k2 + 3 * k3 + k4)
        out = flow(z)
    assert torch.allclose(out, x, atol=1e-5)
    assert flow.nfe == 10 * per_step


def test_dopri5_agrees_with_fine_fixed_steps():
    torch.manual_seed(0)
    adaptive = FlowGenerator(2, (2,), depth=2, width=16, solver="dopri5", rtol=1e-7, atol=1e-7)
    fine = FlowGenerator(2, (2,), depth=2, width=16, solver="rk4", steps=200)
    fine.load_state_dict(adaptive.state_dict())
    z = torch.randn(50, 2)
    with torch.no_grad():
        assert torch.allclose(adaptive(z), fine(z), atol=1e-3)
    assert adaptive.nfe > 0


def test_a_flow_run_writes_its_figures_and_the_sample_cost(config):
    """The whole run: validations, pictures, the final evaluation through the ODE, and
    the number of velocity evaluations a sample costs (train/nfe)."""
    cfg = config("mode=flow", "network=flow_mlp", "network.width=32", "network.steps=5", "trainer.max_steps=20",
                 "mode.val_every_rounds=10", "eval.n_generated=2000")
    run(cfg)
    out = ROOT / cfg.paths.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train/nfe"] == 10  # 5 midpoint steps
    assert {"val/w2", "eval/w2", "eval/nn_generated_mean"} <= set(metrics)
    assert (out / "plots" / "samples_step0000020.png").is_file()


@pytest.mark.parametrize("overrides,message", [
    (["mode=flow"], "network='MLP' is not allowed: a velocity network with a time input under mode=flow"),
    (["network=flow_mlp"], "network='FlowGenerator' is not allowed: a one-step generator under mode=minibatch"),
    (["mode=flow", "network=flow_mlp", "network.steps=0"], "network.steps=0 is not allowed"),
    (["mode=flow", "network=flow_mlp", "network.solver=rk45"], "network.solver='rk45' is not allowed: one of euler"),
    (["mode=flow", "network=flow_mlp", "prior.dim=3", "network.in_dim=3"],
     "network.in_dim=3 is not allowed: the data's dimension, 2"),
    (["mode=flow", "network=flow_mlp", "prior=gmm_adaptive"], "prior='GaussianMixturePrior' is not allowed: a fixed "
                                                              "prior under mode=flow"),
    (["mode=flow", "network=flow_mlp", "mode.sigma=-1"], "mode.sigma=-1 is not allowed: a number >= 0"),
    (["mode=flow", "network=flow_mlp", "network.time_dim=3"], "network.time_dim=3 is not allowed: an even integer"),
])
def test_bad_flow_configs_are_one_line_naming_the_key(config, overrides, message):
    with pytest.raises(ConfigError) as err:
        build(config(*overrides))
    assert message in str(err.value)


def test_the_plan_sampler_pairs_optimally_with_torchcfms_signature():
    """`sample_plan(x0, x1)` returns the pairs of the exact assignment: a permutation of
    each side whose total cost is POT's optimum."""
    import numpy as np
    import ot

    from ot_gen.flow.plan import ExactPlanSampler

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(300, 5, generator=g), torch.randn(300, 5, generator=g) + 1
    a, b = ExactPlanSampler().sample_plan(x0, x1)
    assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, x0.tolist()))
    assert sorted(map(tuple, b.tolist())) == sorted(map(tuple, x1.tolist()))
    cost = ((a - b) ** 2).sum(1).mean().item()
    M = ot.dist(x0.double().numpy(), x1.double().numpy())
    assert cost == pytest.approx(ot.emd2(np.full(300, 1 / 300), np.full(300, 1 / 300), M), rel=1e-6)


def test_a_flow_on_images_draws_every_picture_and_figure(config):
    """A pixel-space flow (28×28 clock hands, the prior in the 784 pixels): validation
    pictures, the nearest-point figures of the final evaluation, through the ODE."""
    cfg = config("data=clock", "mode=flow", "network=flow_mlp", "prior.dim=784", "network.width=32",
                 "network.steps=2", "data.n_train=256", "data.n_val=64", "val_samples=64", "mode.pool_size=32",
                 "mode.fit_batch_size=32", "trainer.max_steps=4", "mode.val_every_rounds=4", "eval.n_generated=300")
    run(cfg)
    out = ROOT / cfg.paths.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval/nn_generated_mean", "eval/nn_train_mean", "val/w2"} <= set(metrics)
    assert metrics["train/nfe"] == 4
    for kind in ("samples", "pairs"):
        assert (out / "plots" / f"{kind}_step0000004.png").is_file(), kind


def test_sample_integrates_a_flow_with_the_solver_asked_for_and_refuses_it_for_one_step(config, tmp_path):
    from ot_gen.run.sample import write_samples

    flow = config(*FLOW, "trainer.max_steps=10", "mode.val_every_rounds=10")
    run(flow)
    ckpt = ROOT / flow.paths.output_dir / "checkpoints" / "last.ckpt"
    one = write_samples(ckpt, 50, tmp_path / "a.npy", solver="euler", steps=1)
    many = write_samples(ckpt, 50, tmp_path / "b.npy", solver="rk4", steps=50)
    assert one.shape == many.shape == (50, 2) and not np.allclose(one, many)
    with pytest.raises(ConfigError, match="steps=0 is not allowed"):
        write_samples(ckpt, 50, tmp_path / "c.npy", steps=0)
    step = config("trainer.max_steps=10", "mode.val_every_rounds=10", "eval.n_generated=0", "callbacks=none")
    run(step)
    with pytest.raises(ConfigError, match="steps=4 is not allowed: null: this checkpoint's generator takes one step"):
        write_samples(ROOT / step.paths.output_dir / "checkpoints" / "last.ckpt", 50, tmp_path / "d.npy", steps=4)


def test_straightness_is_one_for_a_constant_field_and_less_for_a_rotation():
    """The figure the benchmark reports: straight constant-speed paths score 1, paths
    that turn score less."""
    x0 = torch.randn(100, 2)
    assert straightness(lambda x, t: torch.ones_like(x), x0) == pytest.approx(1.0)
    rotate = lambda x, t: torch.stack([-x[:, 1], x[:, 0]], 1) * 3.0  # noqa: E731
    assert straightness(rotate, x0) < 0.5


def test_a_flow_checkpoint_is_data_only_a_planted_target_is_refused(config, tmp_path):
    """A flow's checkpoint goes through the same record checks as every checkpoint: a
    `_target_` planted in its network's settings is refused naming the key, never called."""
    from ot_gen.run.checkpoints import CheckpointError
    from ot_gen.run.sample import write_samples

    cfg = config(*FLOW, "trainer.max_steps=10", "mode.val_every_rounds=10")
    run(cfg)
    last = ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    sentinel = tmp_path / "owned"
    ckpt["ot_gen"]["config"]["network"]["steps"] = {"_target_": "ot_gen.flow.velocity.torch.save",
                                                    "_args_": [{}, str(sentinel)]}
    torch.save(ckpt, last)
    with pytest.raises(CheckpointError, match=r"its run record's network\.steps\._target_='ot_gen\.flow\.velocity\."
                                              r"torch\.save' is not allowed"):
        write_samples(last, 10, tmp_path / "s.npy")
    with pytest.raises(CheckpointError, match=r"network\.steps\._target_"):
        run(config(*FLOW, "trainer.max_steps=20", "mode.val_every_rounds=10", f"ckpt_path={last}"))
    assert not sentinel.exists() and not (tmp_path / "s.npy").exists()


# -- distillation: a one-step generator regressed onto a flow's endpoints ------------------
STUDENT = ["matcher=flow_teacher", "network.width=128", "trainer.max_steps=300", "eval.n_generated=0",
           "callbacks=none", "mode.val_every_rounds=1000", "optimizer.lr=3e-3"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A flow trained on the default 2-D set: the teacher of the distillation tests."""
    from conftest import make_config

    cfg = make_config(*FLOW, "matcher=exact", "trainer.max_steps=300", out_dir=tmp_path_factory.mktemp("teacher"))
    run(cfg)
    return ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt"


def test_distillation_reproduces_the_teachers_endpoints_at_one_step(config, teacher):
    from ot_gen.run.build import module_of_checkpoint

    cfg = config(*STUDENT, f"matcher.ckpt={teacher}")
    run(cfg)
    metrics = json.loads((ROOT / cfg.paths.output_dir / "metrics.json").read_text())
    student, _ = module_of_checkpoint(ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt")
    flow, _ = module_of_checkpoint(teacher)
    assert not getattr(student.generator, "is_flow", False)  # one network evaluation a sample
    torch.manual_seed(3)
    z = student.prior.sample(2000)
    with torch.no_grad():
        mine, theirs = student.generate(z), flow.generate(z)
    gap = (mine - theirs).norm(dim=1)
    spread = theirs.std(0).norm()
    # the teacher's map, latent by latent (measured: a median gap of 0.026 for a spread of 1.98)
    assert gap.median() < 0.1 * spread, (float(gap.median()), float(spread))
    assert metrics["train/matched_cost"] < 0.05 * float(spread**2)
    # its samples are the flow's: as close to held-out data as the flow's own
    _, data, _, _ = build(cfg)
    data.setup()
    assert w2(mine[:1000], data.val_set[:1000]) < 1.5 * w2(theirs[:1000], data.val_set[:1000])


@pytest.mark.parametrize("change, named", [
    ("data=moons", r"a flow of this run's data .*data.name: 'eight_gaussians' there, 'moons' here"),
    ("prior.std=2.0", r"a flow of this run's prior .*prior.std: 1.0 there, 2.0 here"),
])
def test_a_teacher_of_other_data_or_prior_is_refused_before_training(config, teacher, change, named):
    with pytest.raises(ConfigError, match=r"matcher.ckpt=.*" + named):
        build(config(*STUDENT, f"matcher.ckpt={teacher}", change))


def test_a_teacher_that_is_not_a_flow_is_refused(config):
    one_step = config("trainer.max_steps=5", "callbacks=none", "eval.n_generated=0")
    run(one_step)
    with pytest.raises(ConfigError, match="matcher.ckpt=.*takes one step"):
        build(config(*STUDENT, f"matcher.ckpt={ROOT / one_step.paths.output_dir / 'checkpoints' / 'last.ckpt'}"))
    with pytest.raises(ConfigError, match="matcher.ckpt=None.*an existing checkpoint of a mode=flow run"):
        build(config(*STUDENT))


def test_a_distilled_checkpoint_samples_without_its_teacher(config, teacher, tmp_path):
    """The student's checkpoint holds the student only: sampling it needs no teacher file."""
    import shutil

    from ot_gen.run.sample import write_samples

    moved = tmp_path / "teacher.ckpt"
    shutil.copyfile(teacher, moved)
    cfg = config(*STUDENT, f"matcher.ckpt={moved}", "trainer.max_steps=20")
    run(cfg)
    ckpt = ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt"
    assert not any(k.startswith("matcher.") for k in torch.load(ckpt, weights_only=True)["state_dict"])
    moved.unlink()
    assert write_samples(ckpt, 10, tmp_path / "s.npy").shape == (10, 2)


def test_a_teacher_checkpoint_is_data_only_a_planted_target_is_refused(config, teacher, tmp_path):
    from ot_gen.run.checkpoints import CheckpointError

    ckpt = torch.load(teacher, map_location="cpu", weights_only=True)
    sentinel = tmp_path / "owned"
    ckpt["ot_gen"]["config"]["prior"]["std"] = {"_target_": "ot_gen.flow.teacher.torch.save", "_args_": [{}, str(sentinel)]}
    forged = tmp_path / "forged.ckpt"
    torch.save(ckpt, forged)
    with pytest.raises(CheckpointError, match=r"its run record's prior\.std\._target_='ot_gen\.flow\.teacher\.torch\.save'"
                                              r" is not allowed"):
        build(config(*STUDENT, f"matcher.ckpt={forged}"))
    assert not sentinel.exists()


@needs_shared
def test_a_class_conditional_flow_pairs_within_classes_and_makes_the_class_it_is_given(config):
    """`conditional=true` under mode=flow: the latents carry the class after the start
    point, the velocity reads it at every step (v(x, t, c)), the pairs never cross classes,
    and the trained flow draws each class's images: samples asked for as 0s sit closer to
    the real 0s' mean image than to the real 1s', and the other way round."""
    cfg = config(f"paths.data_dir={SHARED}", "data=mnist", "data.download=false", "data.n_train=1000",
                 "val_samples=200", "eval.n_heldout=200", "eval.n_generated=0", "conditional=true", "logger=csv",
                 "mode=flow", "network=flow_mlp", "network.steps=4", "prior.dim=784", "mode.pool_size=500",
                 "mode.fit_batch_size=250", "trainer.max_steps=300", "mode.val_every_rounds=150", "ema=null",
                 "callbacks.frechet_classifier=null", "callbacks.memorization=null", "callbacks.latent_traversals=null")
    module, data, _, _ = build(cfg)
    flow = module.generator
    assert flow.n_classes == 10 and flow.velocity.net[0].in_features == 784 + 32 + 10
    run(cfg)
    out = ROOT / cfg.paths.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train/classes_solved"] == 10 and list((out / "plots").glob("by_class_step*.png"))
    trained, _ = load_module(out / "checkpoints" / "last.ckpt")
    data.setup("fit")
    means = [data.train_set[data.train_labels == c].mean(0) for c in (0, 1)]
    torch.manual_seed(0)
    distances = []
    for c in (0, 1):
        drawn = trained.sample(100, torch.full((100,), c)).mean(0)
        distances.append((float((drawn - means[c]).norm()), float((drawn - means[1 - c]).norm())))
    assert all(own < 0.75 * other for own, other in distances), distances
