"""What a run will allocate, checked against what the machine has, before allocating it:
a value that would need more memory than is available is a `ConfigError` with the figure,
not a kernel's kill (exit 137, no message) minutes later."""

from __future__ import annotations

import os
from typing import Any

from ot_gen.errors import ConfigError


def available_bytes() -> int:
    """Memory this process may still take: MemAvailable (Linux), else all physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def check_fits(key: str, value: Any, nbytes: float, what: str, hint: str) -> None:
    """Refuse `key=value` when `what` (needing `nbytes`) exceeds the available memory."""
    free = available_bytes()
    if nbytes > free:
        raise ConfigError(key, value, f"{what} needs about {gib(nbytes)}, and this machine has {gib(free)} "
                                      f"available; {hint}")
