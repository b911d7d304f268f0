"""Every option of every config group composes and builds; bad values fail early and clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from conftest import (
    CONF, HAS_SHARED, NO_PICTURES, ROOT, SHARED, make_config, python_env, write_cifar, write_folder,
)
from ot_gen.errors import ConfigError, NonFiniteError
from ot_gen.run.build import build
from ot_gen.run.config_checks import check_all_types, check_top_level
from ot_gen.run.train import run

GROUPS = ["prior", "network", "matcher", "cost", "mode", "data", "trainer", "logger",
          "callbacks", "scheduler", "experiment", "hparams_search", "autoencoder"]
# Options that need hardware this machine lacks: composed only, not built.
NEEDS_GPU = {("trainer", "gpu"), ("trainer", "ddp")}


def options():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield group, path.stem


def needs(group: str, option: str, tmp_path) -> list[str]:
    """What an option needs beside it to build here: data files, or image data for a conv net."""
    on_files = ("emgn_", "otgan_", "latent_", "flow_latent_", "flow_mnist", "flow_fashion", "distill_")
    if option in ("mnist", "fashion_mnist") or group == "experiment" and option.startswith(on_files):
        if not HAS_SHARED:
            pytest.skip(f"no test data at {SHARED}")
        # the whole-set experiments' pools follow data.n_train; a code-space one's autoencoder at a few steps
        latent = ["autoencoder.max_steps=5", f"autoencoder.cache_dir={tmp_path}/ae"] if "latent_" in option else []
        if group == "experiment" and "fashion" in option:  # rounds of 10,000 of the 60,000, cut to the 1000 here
            latent.append("mode.pool_size=1000")
        files = [f"paths.data_dir={SHARED}", f"data.cache_dir={tmp_path}/cache", "data.download=false",
                 "data.n_train=1000", "val_samples=100", *latent]
        if option.startswith("distill_"):  # its teacher: the flow experiment it distils, on the same codes
            from ot_gen.run.train import run

            teacher = option.replace("distill_", "flow_")
            run(make_config(f"experiment={teacher}", *files, "trainer.max_steps=2", "eval.n_generated=0",
                            "network.width=16", *NO_PICTURES, out_dir=tmp_path / "teacher", fast=False))
            files.append(f"matcher.ckpt={tmp_path / 'teacher' / 'checkpoints' / 'last.ckpt'}")
        return files
    if option == "cifar10":
        write_cifar(tmp_path / "c10")
        return [f"data.root={tmp_path}/c10", "val_samples=10", "data.n_train=null", "mode.batch_size=8"]
    if option == "image_folder":
        write_folder(tmp_path / "imgs")
        return [f"data.root={tmp_path}/imgs", "val_samples=2", "data.n_train=null", "mode.batch_size=4"]
    if option == "conv28":
        return ["data=clock"]
    if option in ("ssim", "psnr", "laplacian"):
        return ["data=clock", "network=conv28", "data.n_train=64", "val_samples=16", "mode.batch_size=16"]
    if option == "semidiscrete":
        return ["mode=oversampled"]
    if option == "flow_teacher":  # a teacher: a flow trained on the same data with the same prior
        from ot_gen.run.train import run

        run(make_config("mode=flow", "network=flow_mlp", "network.width=16", "trainer.max_steps=2", "callbacks=none",
                        "eval.n_generated=0", out_dir=tmp_path / "teacher"))
        return [f"matcher.ckpt={tmp_path / 'teacher' / 'checkpoints' / 'last.ckpt'}"]
    if group == "autoencoder":
        return ["data=clock", "data.n_train=64", "val_samples=16", "mode.batch_size=16", "autoencoder.max_steps=5",
                f"autoencoder.cache_dir={tmp_path}"]
    if (group, option) in (("network", "flow_mlp"), ("mode", "flow")):  # each needs the other
        return ["mode=flow", "network=flow_mlp"]
    if option == "flow_unet":  # a velocity for images, in the images' space
        return ["mode=flow", "data=clock", "prior.dim=784", "network.channels=[8,16,16]"]
    if option == "deconv32":
        return ["data=clock", "data.image_size=32"]
    return []


@pytest.mark.parametrize("group,option", list(options()), ids=lambda v: str(v))
def test_every_option_composes_and_builds(config, group, option, tmp_path):
    cfg = config(f"{group}={option}", *needs(group, option, tmp_path))
    if (group, option) in NEEDS_GPU:  # composed and checked as a run would check it, not built
        check_top_level(cfg)
        check_all_types(cfg)
        return
    if (group, option) == ("cost", "psnr"):  # matches only: refused as the regression cost
        with pytest.raises(ConfigError, match="cost@match_cost=psnr"):
            build(cfg)
        return
    module, data, trainer, _ = build(cfg)
    x = module.sample(7)
    assert x.shape == (7, *data.eval_data.data_shape)  # a code-space run's samples: decoded images


def test_the_default_config_is_the_documented_one(config):
    cfg = config(fast=False)
    assert cfg.data.name == "eight_gaussians" and cfg.mode._target_.endswith("Minibatch")
    assert cfg.matcher._target_.endswith("ExactMatcher") and cfg.optimized_metric == "val/w2"
    assert "wandb" in cfg.logger


@pytest.mark.parametrize(
    "override, message",
    [
        ("mode=oversampled mode.k=0", "mode.k=0 is not allowed: an integer >= 1"),
        ("mode.batch_size=-4", "mode.batch_size=-4 is not allowed: an integer >= 1"),
        ("mode.ratio=1.5", "mode.ratio=1.5 is not allowed: an integer >= 1"),
        ("data.n_train=0", "data.n_train=0 is not allowed: an integer >= 1"),
        ("data.noise=-1", "data.noise=-1 is not allowed: a number >= 0"),
        ("prior.dim=0", "prior.dim=0 is not allowed"),
        ("network.in_dim=5", "network.in_dim=5 is not allowed: the prior's dimension (prior.dim=2)"),
        ("network.activation=swish", "network.activation='swish' is not allowed: one of relu"),
        ("network.width=0", "network.width=0 is not allowed"),
        ("mode=oversampled +mode.kk=3", "mode.kk=3 is not allowed: a key of mode: pool_size, k,"),
        ("matcher.num_itermax=0", "matcher.num_itermax=0 is not allowed"),
        ("matcher.solver=simplex", "matcher.solver='simplex' is not allowed: one of auto, auction, pot, hungarian"),
        ("matcher.rtol=0.1", "matcher.rtol=0.1 is not allowed: a relative duality gap <= 1e-6"),
        ("matcher.warm_start=maybe", "matcher.warm_start='maybe' is not allowed: true or false"),
        ("optimizer.lr=-0.1", "optimizer="),
        ("optimized_metric=val/w3", "optimized_metric='val/w3' is not allowed: one of val/w2"),
        ("mode=oversampled mode.k=ten", "mode.k='ten' is not allowed: an integer >= 1"),
        ("mode=oversampled mode.pool_size=5000", "mode.pool_size=5000 is not allowed: at most the 2000 training"),
        ("mode.batch_size=2001", "mode.batch_size=2001 is not allowed: at most the 2000 training points"),
        ("mode=oversampled mode.k_schedule=exp", "mode.k_schedule='exp' is not allowed: one of constant, sqrt, linear"),
        ("prior=gmm prior.n_components=0", "prior.n_components=0 is not allowed"),
        ("prior=gmm prior.sigma=-1", "prior.sigma=-1 is not allowed"),
        ("matcher=sinkhorn matcher.reg=0", "matcher.reg=0 is not allowed: a number > 0"),
        ("matcher=nearest matcher.direction=both", "matcher.direction='both' is not allowed: one of real_to_generated"),
        ("matcher=semidiscrete", "matcher='semidiscrete' is not allowed: a matcher for mode=minibatch"),
        ("matcher=critic trainer=ddp trainer.accelerator=cpu", "matcher='critic' is not allowed: a matcher that runs under trainer=ddp"),
        ("matcher=critic matcher.network=conv", "matcher.network='conv' is not allowed: mlp (conv needs image data)"),
        ("cost=ssim", "cost.data_range=None is not allowed: the data's value range"),
        ("data.name=moon", "data.name='moon' is not allowed: one of"),
        ("ckpt_path=/no/such.ckpt", "ckpt_path='/no/such.ckpt' is not allowed: an existing checkpoint file"),
        ("prior.std=inf", "prior.std=inf is not allowed: a number > 0 (finite)"),
        ("data.noise=inf", "data.noise=inf is not allowed: a number >= 0 (finite)"),
        ("prior=gmm prior.sigma=nan", "prior.sigma=nan is not allowed: a number > 0 (finite)"),
        ("matcher=sinkhorn matcher.reg=inf", "matcher.reg=inf is not allowed: a number > 0 (finite)"),
        ("seed=-1", "seed=-1 is not allowed: an integer in [0, 2**32)"),
        ("seed=abc", "seed='abc' is not allowed: an integer in [0, 2**32)"),
        ("eval.chunk=0", "eval.chunk=0 is not allowed: an integer >= 1"),
        ("eval.n_generated=-5", "eval.n_generated=-5 is not allowed: an integer >= 0"),
        ("eval.n_heldout=abc", "eval.n_heldout='abc' is not allowed: an integer >= 1"),
        ("val_samples=1", "val_samples=1 is not allowed: an integer >= 2"),
        ("trainer.max_steps=abc", "trainer.max_steps='abc' is not allowed: an integer"),
        ("trainer.max_steps=1.5", "trainer.max_steps=1.5 is not allowed: an integer"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5 is not allowed: `max_steps` must be a non-negative integer"),
        ("trainer.devices=abc", "trainer.devices='abc' is not allowed: `devices` selected with `CPUAccelerator`"),
        ("trainer.log_every_n_steps=abc", "trainer.log_every_n_steps='abc' is not allowed: an integer or null"),
        ("trainer.accelerator=tpu", "trainer='lightning.pytorch.Trainer' is not allowed: Requirement 'torch_xla"),
        ("optimizer.lr=inf", "optimizer.lr=inf is not allowed: a finite number"),
        ("optimizer.lr=abc", "optimizer.lr='abc' is not allowed: a number"),
        ("scheduler.eta_min=nan", "scheduler.eta_min=nan is not allowed: a finite number"),
        ("overwrite=maybe", "overwrite='maybe' is not allowed: true or false"),
        ("scheduler.eta_min=0.01", "scheduler.eta_min=0.01 is not allowed: at most optimizer.lr=0.001"),
        ("trainer.max_steps=999999999999999999999",
         "trainer.max_steps=999999999999999999999 is not allowed: at most 1,000,000,000"),
        ("prior=gmm prior.n_components=1000000000000",
         "prior.n_components=1000000000000 is not allowed: a mixture of 1,000,000,000,000 components in 2 dimensions "
         "needs about 7,450.6 GiB, and this process may take"),
        ("mode=oversampled mode.k=100000000", "mode.k=100000000 is not allowed: a round of 50,000,000,000 generated "
         "points matched to 500 reals needs about"),
        ("mode.ratio=100000", "mode.ratio=100000 is not allowed: a round of 25,600,000 generated points matched to "
         "256 reals needs about"),
        ("network.width=100000", "network.width=100000 is not allowed: a generator of 20,000,"),
        ("prior.dim=100000000000 network.in_dim=100000000000", "prior.dim=100000000000 is not allowed: a latent of "
         "100,000,000,000 numbers needs about"),
        ("data=image_folder", "data.root='???' is not allowed: a value; this config needs data.root=..."),
        ("prior._target_=ot_gen.model.networks.MLP", "prior._target_='ot_gen.model.networks.MLP' is not allowed: a "
         "subclass of ot_gen.model.priors.Prior (it names the class MLP); the options are in conf/prior/"),
        ("matcher._target_=ot_gen.model.priors.GaussianPrior", "matcher._target_='ot_gen.model.priors.GaussianPrior' "
         "is not allowed: a subclass of ot_gen.matching.base.Matcher"),
        ("network._target_=ot_gen.run.build.__doc__", "network._target_='ot_gen.run.build.__doc__' is not allowed: a "
         "subclass of torch.nn.modules.module.Module (it names a str)"),
        ("cost._target_=ot_gen.matching.costs.nothing", "cost._target_='ot_gen.matching.costs.nothing' is not "
         "allowed: an importable class"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(config, override, message):
    cfg = config(*override.split())
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert message in str(err.value)


def test_an_empty_run_dir_is_refused_not_the_current_directory(tmp_path, capsys, monkeypatch):
    """hydra.run.dir='' would put the run's files into the directory it is started from."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from ot_gen.launch.run_dirs import claim

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra.run.dir="], return_hydra_config=True)
    with pytest.raises(SystemExit) as exit_:
        claim(cfg, "hydra.run.dir", ".hydra", exclusive_dir=True)
    assert exit_.value.code == 2 and not any(tmp_path.iterdir())
    assert "hydra.run.dir='' is not allowed: a folder (empty would put" in capsys.readouterr().err


def test_an_image_folder_without_images_is_an_error_naming_it(config, tmp_path):
    from ot_gen.data.image_readers import DataFileError

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match=f"no image files .* under data.root={tmp_path / 'empty'}"):
        build(config("data=image_folder", f"data.root={tmp_path / 'empty'}"))


def test_unknown_option_lists_the_available_ones(config):
    with pytest.raises(ConfigCompositionException, match="prior/uniform"):
        config("prior=uniform")


def test_nan_loss_stops_the_run_with_the_step(config):
    cfg = config("optimizer.lr=1e30", "trainer.max_steps=50", "mode.val_every_rounds=10")
    with pytest.raises(NonFiniteError, match=r"became NaN/Inf at step \d+"):
        run(cfg)


@pytest.mark.e2e
def test_a_user_mistake_is_one_line_without_traceback(tmp_path):
    cmd = [sys.executable, "train.py", "mode=oversampled", "mode.k=0", "logger=none", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "ConfigError: mode.k=0 is not allowed: an integer >= 1" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
@pytest.mark.parametrize("debug", ["smoke", "fdr"])
def test_every_experiment_fits_its_debug_size(config, experiment, debug):
    """`debug=smoke` promises "a few rounds of any experiment": its training set must hold
    the experiment's minibatch or pool (smoke's 500 images were fewer than
    emgn_mnist_seed's minibatch of 600, found by the docs' runnable blocks)."""
    from ot_gen.run.config_checks import instantiate_group

    cfg = config(f"experiment={experiment}", f"debug={debug}", fast=False)
    mode = instantiate_group("mode", cfg.mode)
    mode.check_data(cfg.data.n_train, experiment, 2)
