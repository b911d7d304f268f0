"""The docs site: it builds strict, its configuration reference cannot drift from conf/,
its API pages document every part a config can name, and every code block marked
runnable runs (the e2e tier, at a tiny size): a doc that lies fails the build."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF, HAS_SHARED, ROOT, SHARED, python_env
from ot_gen.run import parts

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
RUNNABLE = re.compile(r"<!-- runnable(?::\s*(?P<extra>[^>]*?))?\s*-->\s*\n```(?:bash|console)?\n(?P<body>.*?)```", re.S)


def _hook():
    spec = importlib.util.spec_from_file_location("config_reference", DOCS / "hooks" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_picture_resolves(page):
    """MkDocs checks the site's links; this also checks the README's, read on GitHub."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_the_configuration_reference_names_every_option_of_conf():
    """Generated from conf/ at build time, and the hand-written group table of
    configuration.md names every option of every group it lists."""
    generated = _hook().reference()
    for path in CONF.rglob("*.yaml"):
        if path.parent == CONF:
            assert f"`{path.name}` (top level)" in generated
        else:
            group = path.parent.relative_to(CONF).as_posix()
            assert f"#### `{group}={path.stem}`" in generated, path
    rows: dict[str, str] = {}
    group = None
    for line in (DOCS / "configuration.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 2 or set(cells[0]) <= {"-", " "} and cells[0]:
            continue
        group = cells[0].strip("`") or group
        rows[group] = rows.get(group, "") + cells[1]
    listed = {g for g in rows if (CONF / g).is_dir() and g not in ("fragment",)}
    assert {"data", "prior", "network", "matcher", "cost", "mode", "trainer", "logger"} <= listed
    for group in listed:
        for path in (CONF / group).glob("*.yaml"):
            if group == "hydra/launcher" or path.stem == "default" and group == "debug":
                continue
            assert f"`{path.stem}`" in rows[group], f"configuration.md's table lacks {group}={path.stem}"


def _documented_modules() -> set[str]:
    found = set()
    for page in (DOCS / "api").glob("*.md"):
        found |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    return found


@pytest.mark.parametrize("slot", ["matcher", "cost", "prior", "mode", "network", "data"])
def test_the_api_pages_document_every_part_a_config_can_name(slot):
    documented = _documented_modules()
    for obj in parts.registered(slot).values():
        assert obj.__module__ in documented, f"{obj.__module__}.{obj.__qualname__} ({slot}) has no API page"


def test_the_api_pages_document_every_metric():
    documented = _documented_modules()
    for module in ("ot_gen.evaluation.metrics", "ot_gen.evaluation.frechet", "ot_gen.evaluation.memorization"):
        assert module in documented


def test_the_site_builds_strict(tmp_path):
    """Warnings are errors (mkdocs.yml: strict): a broken link or anchor, a page outside
    the nav, a docstring that fails to render."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**python_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    pages = "".join(p.read_text() for p in (tmp_path / "site" / "api").glob("*.html"))
    for slot in ("matcher", "cost", "prior", "mode", "network"):
        for name in parts.names(slot):
            part = parts.registered(slot)[name]
            assert f'id="{part.__module__}.{part.__qualname__}"' in pages, f"{name} ({slot}) has no entry on the API pages"
    assert "#### " not in (tmp_path / "site" / "configuration.html").read_text()  # the hook's markdown was rendered


# ---------------------------------------------------------------- runnable blocks

# What makes a documented command tiny: the debug setup (a few rounds, small evaluation),
# a handful of steps. A documented value of these keys is replaced, not repeated.
TINY = {"debug": "smoke", "trainer.max_steps": "12"}


def _commands(body: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def runnable_blocks() -> list[tuple[str, str, str]]:
    blocks = []
    for page in [ROOT / "README.md", *PAGES]:
        for i, m in enumerate(RUNNABLE.finditer(page.read_text())):
            blocks.append((f"{page.relative_to(ROOT)}#{i}", m.group("body"), m.group("extra") or ""))
    return blocks


def _tiny(words: list[str], extra: str) -> list[str]:
    kept = [w for w in words if w.split("=", 1)[0].lstrip("+") not in TINY]
    return kept + [f"{k}={v}" for k, v in TINY.items()] + shlex.split(extra)


def _resolve(word: str, cwd: Path) -> str:
    """`outputs/<task>/runs/<date_time>/...`: the newest path the run wrote there. At
    debug size every run is in debug's own task folder (`outputs/debug/`), as a user's
    `debug=smoke` run is."""
    key, eq, value = word.rpartition("=") if "=" in word else ("", "", word)
    if "<" not in value:
        return word
    value = re.sub(r"^outputs/[^/]+/", "outputs/debug/", value)
    found = sorted(glob.glob(re.sub(r"<[^>]+>", "*", value), root_dir=cwd), key=lambda p: os.path.getmtime(cwd / p))
    assert found, f"nothing matches {value} after the commands before it"
    return f"{key}{eq}{found[-1]}"


def test_the_runnable_blocks_are_found():
    blocks = runnable_blocks()
    assert len(blocks) >= 5
    assert {b[0].split("#")[0] for b in blocks} >= {"README.md", "docs/getting-started.md", "docs/scale-out.md"}
    for name, body, _ in blocks:
        for command in _commands(body):
            assert command.startswith(("python train.py", "python -m ot_gen.sample")), (name, command)


@pytest.mark.e2e
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name,body,extra", runnable_blocks(), ids=[b[0] for b in runnable_blocks()])
def test_a_runnable_block_runs(name, body, extra, tmp_path):
    """Each command of the block, in order, in a fresh folder beside a link to the shared
    data (so `paths.data_dir=../shared/data` means what it says), at a tiny size."""
    if "../shared/data" in body and not HAS_SHARED:
        pytest.skip(f"no test data at {SHARED}")
    cwd = tmp_path / "work"
    cwd.mkdir()
    (tmp_path / "shared").symlink_to(SHARED.parent)
    for command in _commands(body):
        words = shlex.split(command)[1:]
        if words[0] == "train.py":
            words = [str(ROOT / "train.py"), *_tiny(words[1:], extra)]
        words = [_resolve(w, cwd) for w in words]
        proc = subprocess.run([sys.executable, *words], cwd=cwd, env=python_env(), capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{name}: `{command}` failed:\n{(proc.stdout + proc.stderr)[-3000:]}"
