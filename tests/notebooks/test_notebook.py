"""notebooks/explore_run.ipynb runs end to end on a tiny real run (2-D and images)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, SHARED

NOTEBOOK = ROOT / "notebooks" / "explore_run.ipynb"


def execute(run_dir: Path | None, notebook: Path = NOTEBOOK, cwd: Path = ROOT) -> nbformat.NotebookNode:
    """Run the notebook in `cwd` (Jupyter's and VS Code's: the notebook's folder), with
    OT_GEN_RUN_DIR set to `run_dir` (None: the notebook finds the newest run itself)."""
    nb = nbformat.read(notebook, as_version=4)
    if run_dir is not None:
        os.environ["OT_GEN_RUN_DIR"] = str(run_dir)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.pop("OT_GEN_RUN_DIR", None)
    return nb


def outputs(nb) -> tuple[str, int]:
    text, images = "", 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text += out.get("text", "")
            images += "image/png" in out.get("data", {})
    return text, images


@pytest.mark.e2e
def test_notebook_run_from_its_folder_finds_the_newest_run_of_its_project(tmp_path):
    """`jupyter execute notebooks/explore_run.ipynb` runs it in notebooks/: the runs are
    found under the project's outputs/, not notebooks/outputs. A copy of the project's
    layout in tmp keeps the checkout's outputs/ out of it."""
    import shutil

    from conftest import make_config
    from ot_gen.run.train import run

    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "train.yaml").write_text("")
    (project / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, project / "notebooks")
    run_dir = project / "outputs" / "train" / "runs" / "2026-12-03_12-00-00"
    run(make_config("trainer.max_steps=20", "mode.val_every_rounds=10", "eval.n_generated=0", out_dir=run_dir))
    nb = execute(None, project / "notebooks" / NOTEBOOK.name, cwd=project / "notebooks")
    text, _ = outputs(nb)
    assert f"run: {run_dir}" in text and "samples: (5000, 2)" in text


@pytest.mark.e2e
def test_notebook_runs_on_a_tiny_2d_run(config):
    from ot_gen.run.train import run

    cfg = config("trainer.max_steps=20", "mode.val_every_rounds=10", "eval.n_generated=2000")
    run(cfg)
    nb = execute(ROOT / cfg.paths.output_dir)
    text, images = outputs(nb)
    assert "val/w2" in text and "samples: (5000, 2)" in text
    assert "'summary', 'nn_histogram'" in text and "'density', 'pairs'" in text
    assert images >= 5, "the samples scatter and the saved pictures are displayed"


@pytest.mark.e2e
@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason=f"no Fashion-MNIST at {SHARED}")
def test_notebook_runs_on_a_tiny_image_run_with_traversals_and_closest_images(config):
    from ot_gen.run.train import run

    cfg = config("experiment=otgan_fashion_copies", "debug=smoke", f"paths.data_dir={SHARED}", "data.n_train=300",
                 "callbacks.frechet_classifier.steps=20", "callbacks.frechet_classifier.n_samples=100",
                 "eval.n_generated=500", "eval.n_heldout=100", "trainer.max_steps=4")
    run(cfg)
    nb = execute(ROOT / cfg.paths.output_dir)
    text, images = outputs(nb)
    assert "samples: (64, 1, 32, 32)" in text and "val/frechet_classifier" in text
    for kind in ("summary", "nn_histogram", "closest", "plane_0_1", "interpolation", "centre_noise"):
        assert f"'{kind}'" in text
    assert images >= 7
