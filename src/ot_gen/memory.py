"""What a run will allocate, checked against what the process may still take, before
allocating it: a value that would need more memory than that is a `ConfigError` with the
figure and the limit, not a kernel's kill (exit 137, no message) minutes later.

What the process may take is the least of: the machine's available memory
(MemAvailable), the room left under each memory cgroup the process is in (cgroup v2
`memory.max` - `memory.current`, cgroup v1 `memory.limit_in_bytes` -
`memory.usage_in_bytes`, at its own level and every level above it: a container's or a
batch job's limit), and its address-space limit (`RLIMIT_AS`, as `ulimit -v` sets it,
less the address space it already holds).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any, NamedTuple

from ot_gen.errors import ConfigError

_UNLIMITED = 2**60  # cgroup v1 says "no limit" with a number near 2**63


class Limit(NamedTuple):
    room: int  # bytes this process may still take under it
    what: str  # in words, for the message: "cgroup memory.max 6.0 GiB (/sys/fs/cgroup/job)"


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _meminfo(proc: Path) -> Limit:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Limit(int(line.split()[1]) * 1024, "available memory of the machine")
    except OSError:
        pass
    return Limit(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory of the machine")


def _cgroup_dirs(proc: Path) -> list[tuple[str, Path, Path]]:
    """(version, the process's cgroup folder, the mount it lies under) for the memory
    controller of cgroup v2 and v1, from /proc/self/cgroup and /proc/self/mountinfo."""
    try:
        groups = (proc / "self" / "cgroup").read_text().splitlines()
        mounts = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    paths = {}
    for line in groups:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["v1"] = path
    found = []
    for line in mounts:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        root, point, fstype, options = fields[3], fields[4], fields[dash + 1], fields[dash + 3:dash + 4]
        version = "v2" if fstype == "cgroup2" else "v1" if fstype == "cgroup" and "memory" in \
            ",".join(options).split(",") else None
        if version is None or version not in paths:
            continue
        relative = os.path.relpath(paths[version], root) if paths[version].startswith(root) else "."
        folder = (Path(point) / relative).resolve() if relative != "." else Path(point)
        if folder.is_dir():
            found.append((version, folder, Path(point)))
    return found


def _cgroup_limits(proc: Path) -> list[Limit]:
    """The room under every memory limit of the process's cgroups, own level and above."""
    limits = []
    for version, folder, mount in _cgroup_dirs(proc):
        limit_file, usage_file = ("memory.max", "memory.current") if version == "v2" else \
            ("memory.limit_in_bytes", "memory.usage_in_bytes")
        level = folder
        while True:
            limit, usage = _read_int(level / limit_file), _read_int(level / usage_file)
            if limit is not None and limit < _UNLIMITED:
                limits.append(Limit(max(limit - (usage or 0), 0),
                                    f"cgroup {version} {limit_file} {gib(limit)} ({level})"))
            if level == mount or mount not in level.parents:
                break
            level = level.parent
    return limits


def _address_space(proc: Path) -> Limit | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    held = 0
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                held = int(line.split()[1]) * 1024
    except OSError:
        pass
    return Limit(max(soft - held, 0), f"address-space limit RLIMIT_AS (ulimit -v) {gib(soft)}")


def limits(proc: Path = Path("/proc")) -> list[Limit]:
    """Every limit on what this process may still allocate, the machine's first."""
    found = [_meminfo(proc), *_cgroup_limits(proc)]
    address_space = _address_space(proc)
    return found + ([address_space] if address_space else [])


def tightest(proc: Path = Path("/proc")) -> Limit:
    return min(limits(proc), key=lambda limit: limit.room)


def available_bytes() -> int:
    """Memory this process may still take: the least room of all its limits."""
    return tightest().room


def check_fits(key: str, value: Any, nbytes: float, what: str, hint: str) -> None:
    """Refuse `key=value` when `what` (needing `nbytes`) exceeds what the process may
    still take, naming the limit that binds."""
    limit = tightest()
    if nbytes > limit.room:
        raise ConfigError(key, value, f"{what} needs about {gib(nbytes)}, and this process may take "
                                      f"{gib(limit.room)} more (the {limit.what}); {hint}")
