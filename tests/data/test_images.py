"""Image data sets (real files, on-disk formats the tests make), networks, image experiments."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED, needs_shared, write_cifar, write_folder
from ot_gen.data import ImageDataModule
from ot_gen.data.image_readers import DataFileError
from ot_gen.data.synthetic_images import FAMILIES
from ot_gen.errors import ConfigError
from ot_gen.evaluation.metrics import nearest
from ot_gen.model.networks import DeconvGenerator
from ot_gen.run.build import build
from ot_gen.run.train import run

def datamodule(source, tmp_path, **kw):
    dm = ImageDataModule(source, cache_dir=str(tmp_path / "cache"), **{"download": False, **kw})
    dm.setup()
    return dm


# -- MNIST-format files -----------------------------------------------------------------------
@needs_shared
def test_mnist_test_split_only_is_split_into_disjoint_train_and_heldout(tmp_path):
    dm = datamodule("mnist", tmp_path, root=str(SHARED / "mnist"), n_train=3000, n_val=500, value_range=(0, 1))
    assert dm.train_set.shape == (3000, 1, 28, 28) and dm.val_set.shape == (500, 1, 28, 28)
    assert dm.train_set.min() >= 0 and dm.train_set.max() == 1
    flat_train = {tuple(r) for r in dm.train_set.flatten(1)[:, 200:260].tolist()}
    assert not any(tuple(r) in flat_train for r in dm.val_set.flatten(1)[:, 200:260].tolist())


@needs_shared
def test_mnist_class_filter_and_resize_to_32(tmp_path):
    dm = datamodule("mnist", tmp_path, root=str(SHARED / "mnist"), classes=[3], n_val=100, image_size=32)
    assert dm.train_set.shape[1:] == (1, 32, 32) and 800 < len(dm.train_set) < 1100
    assert dm.train_set.min() >= -1 and dm.train_set.max() <= 1
    with pytest.raises(ConfigError, match="classes=\\[42\\]"):
        datamodule("mnist", tmp_path, root=str(SHARED / "mnist"), classes=[42])


@needs_shared
def test_fashion_mnist_both_splits_and_torchvision_layout(tmp_path):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED / "fashion-mnist").glob("*.gz"):
        (raw / f.name).symlink_to(f)
    dm = datamodule("fashion_mnist", tmp_path, root=str(tmp_path / "data"), n_train=5000, n_val=1000)
    assert dm.train_set.shape == (5000, 1, 28, 28) and dm.val_set.shape == (1000, 1, 28, 28)
    bare = datamodule("fashion_mnist", tmp_path, root=str(SHARED / "fashion-mnist"), n_train=5000, n_val=1000)
    assert torch.equal(bare.train_set, dm.train_set)


def test_missing_files_say_what_is_expected_where(tmp_path):
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte.gz.*FashionMNIST/raw.*apt-get install dataset-fashion-mnist"):
        datamodule("fashion_mnist", tmp_path, root=str(tmp_path / "nothing"))


@needs_shared
def test_truncated_file_is_named(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    data = (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 3])
    shutil.copy(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz", root)
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte"):
        datamodule("mnist", tmp_path, root=str(root))


def test_wrong_sizes_in_idx_files_are_named(tmp_path):
    root = tmp_path / "idx"
    root.mkdir()
    images = np.zeros((5, 28, 28), np.uint8)
    header = np.array([0x00000803, 5, 28, 28], ">i4").tobytes()
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([0x00000801, 4], ">i4").tobytes() + bytes(4))
    with pytest.raises(DataFileError, match="5 images but .* 4 labels"):
        datamodule("mnist", tmp_path, root=str(root))


def test_an_idx_file_with_a_wrong_magic_number_says_so(tmp_path):
    root = tmp_path / "idx"
    root.mkdir()
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(np.array([0x12345678, 5, 28, 28], ">i4").tobytes() + bytes(5 * 28 * 28))
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([0x00000801, 5], ">i4").tobytes() + bytes(5))
    with pytest.raises(DataFileError) as e:
        datamodule("mnist", tmp_path, root=str(root))
    message = str(e.value)
    assert "t10k-images-idx3-ubyte.gz: not a valid IDX file once decompressed: its magic number is 12 34 56 78" in message
    assert "()" not in message and "delete" not in message  # the cache is faithful: deleting it changes nothing


def refuse_listing(monkeypatch, forbidden):
    """Make listing `forbidden` fail as an unreadable folder does (the tests run as root,
    whom chmod does not stop)."""
    import os

    for name in ("listdir", "scandir"):
        real = getattr(os, name)

        def fake(path=".", _real=real):
            if str(path) == str(forbidden):
                raise PermissionError(13, "Permission denied", str(path))
            return _real(path)

        monkeypatch.setattr(os, name, fake)


def test_an_unreadable_data_root_is_named_without_a_traceback(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "imgs")
    refuse_listing(monkeypatch, root)
    for source in ("image_folder", "mnist", "cifar10"):
        with pytest.raises(DataFileError, match=rf"data.root={root} cannot be read \(Permission denied\)"):
            datamodule(source, tmp_path, root=str(root), n_val=2)


def test_an_unreadable_subfolder_is_named_and_left_out_or_fails(tmp_path, monkeypatch, caplog):
    root = write_folder(tmp_path / "imgs")
    refuse_listing(monkeypatch, root / "sub")
    dm = datamodule("image_folder", tmp_path, root=str(root), image_size=16, n_val=2)
    assert len(dm.train_set) + len(dm.val_set) == 6  # the six readable images; sub/gray.jpg left out
    assert f"leaving out {root / 'sub'}: cannot list it (Permission denied)" in caplog.text
    with pytest.raises(DataFileError, match=rf"cannot list {root / 'sub'} \(Permission denied\)"):
        datamodule("image_folder", tmp_path, root=str(root), on_bad_file="fail", n_val=2)


def test_a_decompression_bomb_is_named_and_skipped_or_fails(tmp_path, monkeypatch, caplog):
    from PIL import Image

    root = write_folder(tmp_path / "imgs")
    (root / "broken.png").unlink()
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(root / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 × 200 is then over twice the limit
    with pytest.raises(DataFileError, match=r"cannot read .*huge.png: Image size \(40000 pixels\) exceeds"):
        datamodule("image_folder", tmp_path, root=str(root), on_bad_file="fail", n_val=2)
    dm = datamodule("image_folder", tmp_path, root=str(root), image_size=16, n_val=2)
    assert len(dm.train_set) + len(dm.val_set) == 7  # the six RGB images and the gray one
    assert f"skipping unreadable {root / 'huge.png'}: Image size" in caplog.text


# -- CIFAR-10 on-disk format --------------------------------------------------------------------
def test_cifar10_reads_its_on_disk_format(tmp_path):
    base = write_cifar(tmp_path / "c10")
    dm = datamodule("cifar10", tmp_path, root=str(tmp_path / "c10"), n_val=10)
    assert dm.train_set.shape == (40, 3, 32, 32) and dm.val_set.shape == (10, 3, 32, 32)
    with open(base / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"]
    # Channel-first layout as CIFAR stores it (1024 red, 1024 green, 1024 blue values).
    pixels = torch.from_numpy(first.reshape(-1, 3, 32, 32)).float() / 255 * 2 - 1
    assert any(torch.allclose(pixels[0], img) for img in dm.train_set)


def test_cifar10_corrupt_batch_is_named(tmp_path):
    base = write_cifar(tmp_path / "c10")
    (base / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DataFileError, match="data_batch_2"):
        datamodule("cifar10", tmp_path, root=str(tmp_path / "c10"))


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import os

    base = write_cifar(tmp_path / "c10")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (base / "data_batch_2").write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}))
    with pytest.raises(DataFileError, match=r"data_batch_2: not a CIFAR-10 batch file .*names posix.system"):
        datamodule("cifar10", tmp_path, root=str(tmp_path / "c10"))
    assert not marker.exists()


# -- image folders ----------------------------------------------------------------------------
def test_image_folder_converts_resizes_and_skips_bad_files(tmp_path, caplog):
    root = write_folder(tmp_path / "imgs")
    dm = datamodule("image_folder", tmp_path, root=str(root), image_size=16, channels=3, n_val=2)
    assert dm.train_set.shape == (5, 3, 16, 16) and dm.val_set.shape == (2, 3, 16, 16)
    assert "broken.png" in caplog.text
    gray = datamodule("image_folder", tmp_path, root=str(root), image_size=16, channels=1, n_val=2)
    assert gray.train_set.shape[1] == 1


def test_image_folder_bad_file_fails_when_asked(tmp_path):
    root = write_folder(tmp_path / "imgs")
    with pytest.raises(DataFileError, match="broken.png"):
        datamodule("image_folder", tmp_path, root=str(root), on_bad_file="fail", n_val=2)


def test_image_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="no image files"):
        datamodule("image_folder", tmp_path, root=str(tmp_path / "empty"))


# -- synthetic families -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_synthetic_families_are_seeded_images_in_range(tmp_path, name):
    a = datamodule(name, tmp_path, n_train=200, n_val=50, seed=4)
    b = datamodule(name, tmp_path, n_train=200, n_val=50, seed=4)
    assert a.train_set.shape == (200, 1, 28, 28) and torch.equal(a.train_set, b.train_set)
    assert a.train_set.min() >= -1 and a.train_set.max() <= 1
    assert a.train_set.flatten(1).std(0).mean() > 0.05, "images must vary"


def test_clock_hands_have_one_intensity_and_a_direction(tmp_path):
    dm = datamodule("clock", tmp_path, n_train=50, n_val=5, value_range=(0, 1))
    for img in dm.train_set[:10, 0]:
        lit = img[img > 0]
        assert len(lit) > 10 and torch.allclose(lit, lit[0])


# -- networks, metric, experiments ---------------------------------------------------------------
def test_deconv_generators_fit_their_image_sizes():
    assert DeconvGenerator(8, (3, 32, 32))(torch.randn(2, 8)).shape == (2, 3, 32, 32)
    assert DeconvGenerator(8, (1, 28, 28), widths=[32, 16])(torch.randn(2, 8)).shape == (2, 1, 28, 28)
    for upsample in ("nearest", "bilinear"):
        assert DeconvGenerator(8, (1, 28, 28), widths=[32, 16], upsample=upsample)(torch.randn(2, 8)).shape \
            == (2, 1, 28, 28)


def test_resize_convolution_prints_no_checkerboard():
    """A flat feature map through the convolutions: transposed convolutions of stride 2
    give the pixels of even and odd positions different weights (the dot pattern seen in
    the otgan samples); resize + 3×3 convolution gives a flat image (away from the border)."""
    torch.manual_seed(0)
    spread = {}
    for upsample in ("transposed", "nearest"):
        net = DeconvGenerator(8, (1, 32, 32), widths=[64, 32, 16], upsample=upsample, output_activation=None).eval()
        with torch.no_grad():
            image = net.convs(torch.ones(1, 64, 16, 16))[0, 0, 24:-24, 24:-24]  # 128×128, away from the border
        spread[upsample] = float(image.std() / image.abs().mean())
    assert spread["nearest"] < 1e-5 < 0.05 < spread["transposed"], spread


def test_network_data_mismatch_is_a_clear_error(config):
    with pytest.raises(ConfigError, match=r"network.widths=\[256, 128, 64\].*28×28"):
        build(config("data=clock", "network=deconv32"))
    with pytest.raises(ConfigError, match=r"network.out_shape=\(2,\).*network=mlp"):
        build(config("network=conv28"))


def test_nearest_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(30, 5, generator=g), torch.randn(200, 5, generator=g)
    expected = torch.cdist(q, c).min(1).values
    dist, closest = nearest(q, c.split(64))
    assert torch.allclose(dist, expected, atol=1e-4)
    assert torch.allclose((closest - q).flatten(1).norm(dim=1), dist, atol=1e-4), "the closest candidates themselves"


@pytest.mark.parametrize("experiment", ["emgn_mnist", "otgan_fashion"])
@needs_shared
def test_reference_experiments_run_at_debug_size_with_quality_and_memorization_figures(config, experiment, tmp_path):
    """`experiment=<reference> debug=smoke`: the same recipe, seconds long, every figure."""
    cfg = config(f"experiment={experiment}", "debug=smoke", f"paths.data_dir={SHARED}",
                 f"data.cache_dir={tmp_path}/cache", "data.download=false", fast=False)
    assert cfg.mode.pool_size == cfg.data.n_train == 1000 and cfg.logger is None  # whole set, shrunk
    run(cfg)
    out = ROOT / cfg.paths.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval/nn_generated_mean", "eval/nn_train_mean", "train/matched_cost", "val/frechet_classifier",
            "val/train_distance_ratio", "val/near_copies", "val/data_copying_ct"} <= set(metrics)
    assert metrics["eval/nn_train_mean"] < metrics["eval/nn_generated_mean"]  # untrained: far from data
    step = metrics["steps"]
    for kind in ("samples", "pairs", "nearest_train", "interpolation"):
        assert (out / "plots" / f"{kind}_step{step:07d}.png").is_file()


@pytest.mark.parametrize("prior", ["gaussian", "gmm"])
def test_latent_traversal_pictures_are_saved(config, prior):
    cfg = config("data=clock", "network=conv28", f"prior={prior}", "prior.dim=3", "data.n_train=256",
                 "data.n_val=64", "val_samples=64", "mode.batch_size=32", "trainer.max_steps=4",
                 "mode.val_every_rounds=4", "eval.n_generated=0")
    run(cfg)
    plots = ROOT / cfg.paths.output_dir / "plots"
    names = {p.name.rsplit("_step", 1)[0] for p in plots.glob("*.png")}
    assert {"plane_0_1", "plane_1_2", "plane_0_2", "interpolation"} <= names
    assert ("centre_noise" in names) == (prior == "gmm")


def test_outliers_replace_a_seeded_share_of_the_training_images_by_noise_and_keep_held_out_clean(tmp_path):
    clean = datamodule("clock", tmp_path, n_train=200, n_val=50)
    noisy = datamodule("clock", tmp_path, n_train=200, n_val=50, outliers=0.1)
    again = datamodule("clock", tmp_path, n_train=200, n_val=50, outliers=0.1)
    ids = noisy.outlier_ids
    assert len(ids) == 20 and torch.equal(ids, again.outlier_ids) and torch.equal(noisy.train_set, again.train_set)
    others = torch.ones(200, dtype=torch.bool)
    others[ids] = False
    assert torch.equal(noisy.train_set[others], clean.train_set[others]) and torch.equal(noisy.val_set, clean.val_set)
    noise = noisy.train_set[ids]
    assert noise.min() >= -1 and noise.max() <= 1 and noise.std() > 0.5  # uniform in [-1, 1]: std 0.58
    with pytest.raises(ConfigError, match=r"outliers=1.5 is not allowed: a fraction in \[0, 1\)"):
        datamodule("clock", tmp_path, outliers=1.5)


def test_an_image_folder_of_class_subfolders_is_labelled_by_subfolder(tmp_path, config):
    from PIL import Image

    rng = np.random.default_rng(1)
    for name, count in (("cats", 4), ("dogs", 3)):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "pets" / name / f"{i}.png")
    dm = datamodule("image_folder", tmp_path, root=str(tmp_path / "pets"), image_size=16, n_val=2)
    labels = torch.cat([dm.train_labels, dm.val_labels])
    assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1]  # cats, then dogs: sorted subfolder names
    flat = datamodule("image_folder", tmp_path, root=str(write_folder(tmp_path / "flat")), n_val=2)
    assert flat.train_labels is None, "images directly under the root: no classes"
    module = build(config("data=image_folder", f"data.root={tmp_path / 'pets'}", "val_samples=2", "data.n_train=null",
                          "mode.batch_size=4", "conditional=true"))[0]
    assert module.prior.n_classes == 2


def _pets(root, rng, classes=(("cats", 4), ("dogs", 3))):
    from PIL import Image

    for name, count in classes:
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_a_symlinked_class_folder_is_followed_and_a_loop_is_entered_once(tmp_path, caplog):
    """A class folder linked in from elsewhere was silently left out (and the run then
    failed on the batch size); a link back up the tree must not loop."""
    rng = np.random.default_rng(2)
    _pets(tmp_path / "elsewhere", rng, (("dogs", 3),))
    _pets(tmp_path / "pets", rng, (("cats", 4),))
    (tmp_path / "pets" / "dogs").symlink_to(tmp_path / "elsewhere" / "dogs", target_is_directory=True)
    (tmp_path / "pets" / "cats" / "again").symlink_to(tmp_path / "pets", target_is_directory=True)
    dm = datamodule("image_folder", tmp_path, root=str(tmp_path / "pets"), image_size=16, n_val=2)
    labels = torch.cat([dm.train_labels, dm.val_labels])
    assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1]
    assert "not entering" in caplog.text and "again" in caplog.text


def test_16_bit_grayscale_is_scaled_not_clipped_and_lossy_conversions_are_said_once(tmp_path, caplog):
    """PIL's convert("L") clips 16-bit values at 255: a 16-bit ramp read almost white
    (mean 254.5 of 255)."""
    from PIL import Image

    root = tmp_path / "scans"
    root.mkdir()
    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    for i in range(3):
        Image.fromarray(ramp).save(root / f"scan{i}.png")
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(root / "logo.png")
    Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(root / "photo.png")
    from ot_gen.data.image_readers import load_image_folder

    x, _ = load_image_folder(root, image_size=16, channels=1, on_bad_file="fail")["train"]
    scans = x[2:]  # sorted: logo, photo, scan0..2
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.abs(scans[0, 0].numpy().astype(int) - expected.astype(int)).max() <= 1
    assert abs(float(scans.float().mean()) - float(expected.mean())) < 1.0  # 127, not 254.5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("16- or 32-bit values are scaled to 8 bits" in w for w in warnings) == 1
    assert sum("3 of 5 images" in w for w in warnings) == 1
    assert sum("alpha channel" in w for w in warnings) == 1
    assert sum("converted to grayscale" in w and "RGB" in w for w in warnings) == 1
