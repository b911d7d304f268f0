#!/usr/bin/env python3
"""Set up the locked environment and run the main job or the tests; needs only python3.

    python3 bootstrap.py train [OVERRIDES...]   # python train.py OVERRIDES... in .venv
    python3 bootstrap.py test [PYTEST ARGS...]  # the test suite in .venv
    python3 bootstrap.py docs [serve]           # build the docs site into site/ (strict, offline), or serve it

The first call creates `.uv/` (the uv installer, pinned) and `.venv/` (every dependency at
the exact version in uv.lock); later calls only check that .venv still matches uv.lock.
Afterwards the environment can also be used directly: `.venv/bin/python train.py ...`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
UV_VERSION = "0.13.9"
TOOLS = ROOT / ".uv"
BIN = "Scripts" if os.name == "nt" else "bin"


def sh(*cmd: str | Path, **kw) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def ensure_env() -> Path:
    if sys.version_info < (3, 11):
        sys.exit(f"ot_gen needs Python >= 3.11, this is {sys.version.split()[0]}")
    uv = TOOLS / BIN / "uv"
    if not uv.exists():
        print(f"[bootstrap] installing uv {UV_VERSION} into {TOOLS.name}/", flush=True)
        venv.create(TOOLS, with_pip=True, clear=True)
        sh(TOOLS / BIN / "python", "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_PROJECT_ENVIRONMENT": str(ROOT / ".venv")}
    # --frozen: install exactly what uv.lock says, never re-resolve.
    # --compile-bytecode: .pyc files written once here, so no start-up compiles sources again
    # (Python writes none where PYTHONDONTWRITEBYTECODE is set).
    sh(uv, "sync", "--frozen", "--quiet", "--compile-bytecode", "--python", sys.executable, env=env)
    return ROOT / ".venv" / BIN / "python"


def main(argv: list[str]) -> int:
    commands = {"train": ["train.py"], "test": ["-m", "pytest"], "docs": ["-m", "mkdocs"]}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    python = ensure_env()
    args = argv[1:]
    if argv[0] == "docs":
        # mkdocs.yml is strict (a broken link or a docstring that fails to render is an error);
        # `docs serve` previews it with live reload.
        args = ["serve", *args[1:]] if args[:1] == ["serve"] else ["build", *args]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, on every build
    return subprocess.call([str(python), *commands[argv[0]], *args], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
