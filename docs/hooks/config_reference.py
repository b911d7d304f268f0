"""MkDocs hook: the configuration reference, generated from `conf/` at every build.

The page `configuration.md` holds the marker `<!-- conf-reference -->`; this hook replaces
it with every config group, every option of it (the file's own comment, then its keys as
the file gives them) and the top-level configs, so the reference cannot drift from the
files Hydra composes.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "<!-- conf-reference -->"
CONF = Path(__file__).resolve().parents[2] / "conf"


def _split(text: str) -> tuple[str, str]:
    """The file's leading comment (as prose) and the rest (its keys)."""
    lines = text.splitlines()
    head = []
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        line = lines.pop(0)
        if line.startswith("# @package"):
            continue
        head.append(line.lstrip("#").strip())
    return " ".join(h for h in head if h).strip(), "\n".join(lines).strip()


def options(conf: Path = CONF) -> dict[str, list[Path]]:
    """Every group (a folder of conf/, nested ones as `hydra/launcher`) and its option files."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        if path.parent != conf:
            groups.setdefault(path.parent.relative_to(conf).as_posix(), []).append(path)
    return groups


def _option(title: str, path: Path) -> str:
    comment, body = _split(path.read_text())
    block = f"```yaml\n{body}\n```\n" if body else "(no keys of its own)\n"
    return f"#### `{title}`\n\n{comment}\n\n{block}"


def reference(conf: Path = CONF) -> str:
    parts = ["## Every group and option\n",
             "Generated from `conf/` when the site is built: each option's own comment and keys.\n"]
    for top in sorted(conf.glob("*.yaml")):
        parts.append(f"### `{top.name}` (top level)\n")
        comment, body = _split(top.read_text())
        parts.append(f"{comment}\n\n```yaml\n{body}\n```\n")
    for group, files in options(conf).items():
        parts.append(f"### `{group}`\n")
        parts.extend(_option(f"{group}={path.stem}", path) for path in files)
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
