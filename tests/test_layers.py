"""The folders are the architecture: every import of the package points down its layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ot_gen"

# Higher layers may import lower ones (and their own folder), never the other way round.
LAYERS = {
    "sample": 6,            # the thin `python -m ot_gen.sample` entry point
    "launch": 5,            # Hydra callbacks around jobs
    "run": 4,               # build, the run, sample export, checkpoints, record, pre-emption, loggers
    "flow": 3.5,            # mode=flow and its velocity networks: modes of the model's kind
    "latent": 3.5,          # the code space: the autoencoder, the codes as data, their pictures
    "model": 3,             # module, modes, priors, networks, EMA
    "evaluation": 2,        # metrics, Fréchet, pictures, end-of-run evaluation
    "matching": 1.5,        # matchers: the exact one asks memory whether its cost matrix fits
    "data": 1, "memory": 1,  # memory: what a run will allocate, against the machine
    "errors": 0, "rng": 0, "__init__": 0,
}


def _part(module: str) -> str:
    """`ot_gen.run.build` -> `run`; `ot_gen.errors` -> `errors`."""
    return module.split(".")[1] if "." in module else "__init__"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ot_gen"):
            names += [f"{node.module}.{a.name}" if node.module == "ot_gen" else node.module for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("ot_gen")]
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES}
    assert parts == set(LAYERS), f"parts without a layer: {parts - set(LAYERS)}; layers without a part: {set(LAYERS) - parts}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [m for m in _imports(path) if _part(m) != own and LAYERS[_part(m)] >= LAYERS[own]]
    assert not upward, f"{path.relative_to(PACKAGE)} imports {upward}: same layer or above ({own} is layer {LAYERS[own]})"
