"""The code-space stage (autoencoder=conv): an autoencoder trained once and reused, the
generator trained on its codes by every matcher, mode and prior, every figure and picture
made on the decoded images, and an autoencoder checkpoint read as data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CONF, NO_PICTURES, ROOT, SHARED, needs_shared
from ot_gen.errors import ConfigError
from ot_gen.latent import CodeDataModule
from ot_gen.run import autoencoder_stage
from ot_gen.run.build import build
from ot_gen.run.checkpoints import CheckpointError
from ot_gen.run.config_checks import target_of
from ot_gen.run.sample import load_module, write_samples
from ot_gen.run.train import run
from omegaconf import OmegaConf

CODE_DIM = 8


@pytest.fixture(scope="module")
def ae_cache(tmp_path_factory) -> Path:
    """One cache for the module's runs: the autoencoder of the tiny set is trained once."""
    return tmp_path_factory.mktemp("autoencoders")


def latent(cache: Path, *more: str) -> list[str]:
    return ["data=clock", "data.n_train=300", "val_samples=100", "autoencoder=conv", "autoencoder.max_steps=40",
            "autoencoder.val_every=20", f"autoencoder.network.code_dim={CODE_DIM}", "autoencoder.network.width=8",
            f"autoencoder.cache_dir={cache}", "network.width=32", "callbacks=none", "eval.n_generated=0",
            "trainer.max_steps=4", *more]


MINIBATCH = ["mode=minibatch", "mode.batch_size=100"]
OVERSAMPLED = ["mode=oversampled", "mode.pool_size=100", "mode.k=2", "mode.fit_epochs=1", "mode.fit_batch_size=100",
               "mode.val_every_rounds=1"]
FLOW = ["mode=flow", "network=flow_mlp", "network.width=32", "network.steps=4", f"prior.dim={CODE_DIM}",
        "mode.pool_size=100", "mode.k=2", "mode.fit_epochs=1", "mode.fit_batch_size=100", "mode.val_every_rounds=1"]
MATCHERS = sorted(p.stem for p in (CONF / "matcher").glob("*.yaml"))


def _trained_on_codes(cfg) -> tuple[dict, Path]:
    run(cfg)
    out = ROOT / cfg.paths.output_dir
    return json.loads((out / "metrics.json").read_text()), out


@pytest.mark.parametrize("matcher", MATCHERS)
def test_every_matcher_trains_a_generator_on_codes(config, ae_cache, matcher):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        node = compose("train", overrides=[f"matcher={matcher}"]).matcher
    mode = "minibatch" if "minibatch" in target_of("matcher", node).modes else "oversampled"
    teacher = []
    if matcher == "flow_teacher":  # distillation: a flow on the same codes, with the same prior, teaches
        flow = config(*latent(ae_cache, *FLOW))
        run(flow)
        teacher = [f"matcher.ckpt={ROOT / flow.paths.output_dir / 'checkpoints' / 'last.ckpt'}", f"prior.dim={CODE_DIM}"]
    small = ["matcher.critic_steps=2", "matcher.hidden=32"] if matcher.startswith("critic") else []
    cfg = config(*latent(ae_cache, f"matcher={matcher}", *(OVERSAMPLED if mode == "oversampled" else MINIBATCH),
                         *teacher, *small))
    module, data, _, _ = build(cfg)
    assert isinstance(data, CodeDataModule) and data.train_set.shape == (300, CODE_DIM)
    assert module.generate(module.prior.sample(3)).shape == (3, CODE_DIM)  # the generator draws codes
    assert module.sample(3).shape == (3, 1, 28, 28)  # its samples are decoded images
    metrics, out = _trained_on_codes(cfg)
    assert metrics["steps"] >= 4 and np.isfinite(metrics["val/w2"])
    assert (out / "autoencoder" / "autoencoder.ckpt").is_file()


@pytest.mark.parametrize("prior", ["gaussian", "gmm"])
@pytest.mark.parametrize("mode", ["minibatch", "oversampled", "flow"])
def test_every_mode_and_prior_trains_on_codes(config, ae_cache, mode, prior):
    extra = {"minibatch": MINIBATCH, "oversampled": OVERSAMPLED, "flow": FLOW}[mode]
    cfg = config(*latent(ae_cache, f"prior={prior}", *extra))
    metrics, _ = _trained_on_codes(cfg)
    assert metrics["rounds"] >= 1 and np.isfinite(metrics["val/w2"])


def _ae_runs(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/autoencoder.ckpt"))


def test_a_cached_autoencoder_is_reused_and_another_data_trains_its_own(config, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ot_gen")
    cache = tmp_path / "cache"
    first = config(*latent(cache, *MINIBATCH))
    run(first)
    (trained,) = _ae_runs(cache)
    stamp = trained.stat().st_mtime_ns
    caplog.clear()
    run(config(*latent(cache, *MINIBATCH, "network.width=16", "trainer.max_steps=2")))  # another generator
    assert "autoencoder: reusing" in caplog.text and "autoencoder: training" not in caplog.text
    assert _ae_runs(cache) == [trained] and trained.stat().st_mtime_ns == stamp  # not retrained
    run(config(*latent(cache, *MINIBATCH, "data.n_train=200")))  # other images: an autoencoder of their own
    assert len(_ae_runs(cache)) == 2


def _named(config, cache: Path, ckpt: Path, *more: str):
    return config(*latent(cache, *MINIBATCH, f"autoencoder.ckpt={ckpt}", *more))


@pytest.mark.parametrize("change, named", [
    ("data=wave", r"data.source: 'clock' there, 'wave' here"),
    ("data.image_size=32", r"data.image_size: 28 there, 32 here"),
    ("data.n_train=200", r"data.n_train: 300 there, 200 here"),
    (f"autoencoder.network.code_dim={2 * CODE_DIM}", rf"autoencoder.network.code_dim: {CODE_DIM} there, {2 * CODE_DIM} here"),
])
def test_a_named_autoencoder_of_other_data_or_code_dimension_is_refused(config, ae_cache, tmp_path, change, named):
    source = config(*latent(ae_cache, *MINIBATCH))
    run(source)
    ckpt = ROOT / source.paths.output_dir / "autoencoder" / "autoencoder.ckpt"
    with pytest.raises(ConfigError, match=r"autoencoder.ckpt=.*an autoencoder of this run's .*" + named.replace("(", r"\(")):
        build(_named(config, tmp_path / "unused", ckpt, change))
    assert not (tmp_path / "unused").exists()  # refused before any training


@pytest.mark.parametrize("key, value", [
    ("network._target_", "ot_gen.run.checkpoints.shutil.rmtree"),
    ("loss._target_", "os.system"),
    ("network.width", {"_target_": "builtins.exec", "_args_": ["open('pwned', 'w')"]}),
])
def test_an_autoencoder_checkpoint_with_a_planted_target_is_refused_and_nothing_is_called(
        config, ae_cache, tmp_path, monkeypatch, key, value):
    source = config(*latent(ae_cache, *MINIBATCH))
    run(source)
    ckpt = torch.load(ROOT / source.paths.output_dir / "autoencoder" / "autoencoder.ckpt", weights_only=True)
    node = ckpt["ot_gen_autoencoder"]["config"]
    *path, last = key.split(".")
    for k in path:
        node = node[k]
    node[last] = value
    forged = tmp_path / "forged.ckpt"
    torch.save(ckpt, forged)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=rf"its run record's autoencoder.{key.split('.')[0]}.*not allowed"):
        build(_named(config, tmp_path / "unused", forged))
    assert not (tmp_path / "pwned").exists() and ae_cache.exists()


@needs_shared
def test_decoded_samples_go_through_every_image_figure_and_picture(config, tmp_path):
    """On labelled images (MNIST: the classifier's figures need labels), every figure and
    picture of an image run, and the code space's own."""
    cfg = config(f"paths.data_dir={SHARED}", "data=mnist", f"data.cache_dir={tmp_path}/data", "data.n_train=500",
                 "val_samples=200", "autoencoder=conv", "autoencoder.max_steps=40", f"autoencoder.cache_dir={tmp_path}",
                 f"autoencoder.network.code_dim={CODE_DIM}", "autoencoder.network.width=8", "network.width=32",
                 *MINIBATCH, "callbacks=default", "eval.n_generated=2000", "trainer.max_steps=6",
                 "mode.val_every_rounds=3", "callbacks.frechet_classifier.n_samples=100",
                 "callbacks.frechet_classifier.steps=20", "callbacks.memorization.n_samples=100",
                 "callbacks.memorization.cells=4", "callbacks.memorization.min_per_cell=5")
    metrics, out = _trained_on_codes(cfg)
    for figure in ("val/frechet_classifier", "val/recall_classifier", "val/precision_classifier",
                   "val/train_distance_ratio", "val/near_copies", "val/data_copying_ct", "eval/nn_generated_mean",
                   "val/ceiling_frechet_classifier", "val/ceiling_recall_classifier", "val/ceiling_mse"):
        assert np.isfinite(metrics[figure]), figure
    pictures = {p.name.rsplit("_step", 1)[0] for p in (out / "plots").glob("*.png")}
    assert {"samples", "pairs", "nearest_train", "closest", "interpolation", "plane_0_1", "summary",
            "reconstructions", "code_interpolation", "code_projection"} <= pictures


@needs_shared
def test_the_named_flow_on_codes_teaches_its_named_one_step_student(config, tmp_path, caplog):
    """`experiment=flow_latent_mnist`, then `experiment=distill_latent_mnist
    matcher.ckpt=<the flow's>` (debug size): the student reuses the teacher's cached
    autoencoder, samples decoded images in one network evaluation, and without a teacher
    is refused before anything trains."""
    caplog.set_level(logging.INFO, logger="ot_gen")
    common = ["debug=smoke", f"paths.data_dir={SHARED}", f"data.cache_dir={tmp_path}/data", "data.download=false",
              f"autoencoder.cache_dir={tmp_path}/ae", "eval.n_generated=0", "trainer.max_steps=4", *NO_PICTURES]
    teacher = config("experiment=flow_latent_mnist", *common, fast=False)
    run(teacher)
    ckpt = ROOT / teacher.paths.output_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"matcher.ckpt=None is not allowed: an existing checkpoint of a mode=flow run"):
        build(config("experiment=distill_latent_mnist", *common, fast=False))
    caplog.clear()
    student = config("experiment=distill_latent_mnist", *common, f"matcher.ckpt={ckpt}", fast=False)
    assert student.matcher.ckpt == str(ckpt) and student.prior.dim == teacher.prior.dim
    metrics, out = _trained_on_codes(student)
    assert "autoencoder: reusing" in caplog.text and "autoencoder: training" not in caplog.text
    assert metrics["rounds"] >= 1 and np.isfinite(metrics["val/w2"])
    module, _ = load_module(out / "checkpoints" / "last.ckpt")
    assert not getattr(module.generator, "is_flow", False)  # one step: a plain generator of codes
    assert module.sample(3).shape == (3, 1, 28, 28)


def test_sample_writes_decoded_images_or_the_codes(config, ae_cache, tmp_path):
    cfg = config(*latent(ae_cache, *MINIBATCH))
    run(cfg)
    ckpt = ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt"
    images = write_samples(ckpt, 50, tmp_path / "x.npy", png=tmp_path / "x.png")
    assert images.shape == (50, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    codes = write_samples(ckpt, 50, tmp_path / "c.npy", codes=True)
    assert codes.shape == (50, CODE_DIM)
    # the same draws: the images are the decoded codes
    module, _ = load_module(ckpt)
    torch.testing.assert_close(module.decode(torch.from_numpy(np.array(codes))), torch.from_numpy(np.array(images)),
                               atol=1e-5, rtol=1e-5)


def test_codes_true_is_refused_for_a_run_without_an_autoencoder(config, tmp_path):
    cfg = config("trainer.max_steps=2", "callbacks=none", "eval.n_generated=0")
    run(cfg)
    with pytest.raises(ConfigError, match="codes=True.*no autoencoder stage"):
        write_samples(ROOT / cfg.paths.output_dir / "checkpoints" / "last.ckpt", 5, tmp_path / "c.npy", codes=True)


def test_an_autoencoder_stage_refuses_data_that_are_not_images(config, tmp_path):
    with pytest.raises(ConfigError, match=r"autoencoder='AutoencoderStage' is not allowed: null with data=eight_gaussians"):
        build(config("autoencoder=conv", f"autoencoder.cache_dir={tmp_path}"))


def test_a_code_space_run_resumes_exactly(config, ae_cache):
    """8 steps straight, or 4 and a resume to 8 (no cosine: its length would differ): the
    same weights. The resumed run takes the autoencoder of the run it resumes."""
    same = (*MINIBATCH, "mode.val_every_rounds=4", "scheduler=none")
    straight = config(*latent(ae_cache, *same, "trainer.max_steps=8"))
    run(straight)
    first = config(*latent(ae_cache, *same, "trainer.max_steps=4"))
    run(first)
    resumed = config(*latent(ae_cache, *same, "trainer.max_steps=8", "autoencoder.cache_dir=/nonexistent",
                             f"ckpt_path={ROOT / first.paths.output_dir / 'checkpoints' / 'last.ckpt'}"))
    run(resumed)
    a = torch.load(ROOT / straight.paths.output_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(ROOT / resumed.paths.output_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("decoder.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_sigterm_in_the_autoencoder_stage_saves_it_and_the_same_command_continues_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import python_env, reaped

    cache = tmp_path / "cache"
    command = [sys.executable, "train.py", *latent(cache, *MINIBATCH, "autoencoder.max_steps=400",
                                                   "autoencoder.val_every=20", "logger=none"),
               f"hydra.run.dir={tmp_path / 'run'}", "overwrite=true"]

    def start():
        return subprocess.Popen(command, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    with reaped(start()) as proc:
        deadline = time.time() + 120
        while not list(cache.glob("*/partial/last.ckpt")):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    (partial,) = cache.glob("*/partial/last.ckpt")
    stopped_at = torch.load(partial, weights_only=True)["global_step"]
    assert "SIGTERM in the autoencoder stage" in out and "the same command continues it" in out, out[-3000:]
    assert 20 <= stopped_at < 400 and not list(cache.glob("*/autoencoder.ckpt"))
    with reaped(start()) as proc:
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert f"continuing the stopped training from {partial}" in out
    (done,) = cache.glob("*/autoencoder.ckpt")
    assert torch.load(done, weights_only=True)["global_step"] == 400 and not partial.exists()
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_sweep_over_the_generators_settings_trains_the_autoencoder_once(tmp_path):
    import subprocess
    import sys

    from conftest import python_env

    cache = tmp_path / "cache"
    cmd = [sys.executable, "train.py", "-m", *latent(cache, *MINIBATCH, "logger=none"), "network.width=16,32,48",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("autoencoder: training") == 1 and out.count("autoencoder: reusing") == 2, out[-3000:]
    assert len(_ae_runs(cache)) == 1
    for job in range(3):  # each job's folder holds the autoencoder it used, and its own generator
        assert (tmp_path / "sweep" / str(job) / "autoencoder" / "autoencoder.ckpt").is_file()
        assert (tmp_path / "sweep" / str(job) / "metrics.json").is_file()


@needs_shared
def test_decoded_training_codes_score_as_copies_and_decoded_unseen_codes_do_not(config, tmp_path):
    """A lookup table in code space (a generator that draws the training codes) draws the
    autoencoder's copies of its training images: the memorization figures, made against
    training images, must say so, as they say it of pixel copies."""
    from ot_gen.evaluation.memorization import Reference, pixel_scores

    cfg = config(f"paths.data_dir={SHARED}", "data=mnist", "data.value_range=[0,1]", "data.n_train=2000",
                 "val_samples=600", "autoencoder=conv", "autoencoder.max_steps=400", f"autoencoder.cache_dir={tmp_path}",
                 f"data.cache_dir={tmp_path}/data", "callbacks=none")
    _, data, _, _ = build(cfg)
    images, ae = data.images, data.autoencoder
    train = images.train_set
    reference, unseen = images.val_set[:300], images.val_set[300:]
    ref = Reference.of(reference, train)
    with torch.no_grad():
        copies = pixel_scores(ae(train[:300]).clamp(0, 1), train, ref)
        novel = pixel_scores(ae(unseen).clamp(0, 1), train, ref)
    # measured (400 steps on 2000 images): copies 0.73 and 31% near copies, unseen 0.88 and 2%;
    # the experiment's autoencoder (12,000 steps on 9000): 0.43 / 97% against 0.93 / 10%
    assert copies["train_distance_ratio"] < novel["train_distance_ratio"] - 0.1, (copies, novel)
    assert copies["near_copies"] > max(0.2, 5 * novel["near_copies"]), (copies, novel)
    assert novel["train_distance_ratio"] > 0.8 and novel["near_copies"] < 0.1, novel
