"""The up-front memory check reads the limits the process really has: the machine's
available memory, every memory cgroup above it (v1 and v2), and its address-space limit
(issue 33: a run inside a 6 GiB cgroup was killed with no message after 65 s)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, python_env
from ot_gen import memory

GiB = 2**30


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str, meminfo_kib: int = 20 * 2**20) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: {2 * meminfo_kib} kB\nMemAvailable: {meminfo_kib} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "self" / "status").write_text("VmSize:\t 1000 kB\n")
    return proc


def write(folder: Path, **files: int | str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (folder / name.replace("_", ".", 1)).write_text(f"{value}\n")


def test_a_cgroup_v2_limit_above_the_process_binds(tmp_path):
    sys_root = tmp_path / "sys"
    write(sys_root / "batch", memory_max=6 * GiB, memory_current=2 * GiB)       # the job's limit
    write(sys_root / "batch" / "step", memory_max="max", memory_current=1 * GiB)  # the process's own: none
    proc = fake_proc(tmp_path, "0::/batch/step\n", f"41 31 0:38 / {sys_root} rw - cgroup2 cgroup2 rw\n")
    tight = memory.tightest(proc)
    assert tight.room == 4 * GiB and "cgroup v2 memory.max 6.0 GiB" in tight.what and "batch" in tight.what


def test_a_cgroup_v1_memory_limit_binds_and_no_limit_is_none(tmp_path):
    sys_root = tmp_path / "memory"
    write(sys_root, memory_limit_in_bytes=9223372036854771712, memory_usage_in_bytes=GiB)
    write(sys_root / "job", memory_limit_in_bytes=3 * GiB, memory_usage_in_bytes=GiB // 2)
    proc = fake_proc(tmp_path, "4:memory:/job\n0::/\n",
                     f"35 31 0:32 / {sys_root} rw - cgroup cgroup rw,memory\n")
    limits = memory.limits(proc)
    assert [lim.what.split(" (")[0] for lim in limits[1:]] == ["cgroup v1 memory.limit_in_bytes 3.0 GiB"]
    assert memory.tightest(proc).room == int(2.5 * GiB)


def test_without_cgroups_the_machine_decides(tmp_path):
    proc = fake_proc(tmp_path, "0::/\n", "1 0 0:1 / / rw - ext4 /dev/root rw\n", meminfo_kib=2**20)
    assert memory.tightest(proc) == memory.Limit(GiB, "available memory of the machine")


def _in_a_child(code: str, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=python_env(),
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec)


def test_an_address_space_limit_refuses_a_mixture_that_would_not_fit_naming_the_key():
    """8 GB of centres under `ulimit -v` 8 GiB: refused with the figure, where the machine's
    available memory alone admitted it (and the allocation then failed with a traceback)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 * GiB, 8 * GiB))

    proc = _in_a_child("""
        from ot_gen.errors import ConfigError
        from ot_gen.model.priors import GaussianMixturePrior
        try:
            GaussianMixturePrior(2, 10**9, 0.1)
        except ConfigError as e:
            print(e)
        """, limit)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("n_components=1000000000 is not allowed: a mixture of 1,000,000,000 components in 2 dimensions needs "
            "about 7.5 GiB, and this process may take") in proc.stdout
    assert "the address-space limit RLIMIT_AS (ulimit -v) 8.0 GiB" in proc.stdout


def _cgroup_v1_child(tmp_name: str) -> Path | None:
    """A memory cgroup (v1) under this process's own, when this process may make one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / tmp_name
            try:
                folder.mkdir()
                return folder
            except OSError:
                return None
    return None


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_train_inside_a_small_cgroup_refuses_a_huge_mixture_in_one_line(tmp_path):
    """`prior=gmm prior.n_components=1e9` inside a 3 GiB cgroup: one line with the figure
    and the cgroup, exit code 2, before any training (it was a kernel kill, exit 137)."""
    group = _cgroup_v1_child(f"ot_gen_test_{os.getpid()}")
    if group is None:
        pytest.skip("cannot make a memory cgroup here (needs a writable cgroup v1 memory controller)")
    try:
        (group / "memory.limit_in_bytes").write_text(str(3 * GiB))
        procs = group / "cgroup.procs"
        cmd = [sys.executable, "train.py", "prior=gmm", "prior.n_components=1000000000", "logger=none",
               f"hydra.run.dir={tmp_path / 'run'}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=240,
                              preexec_fn=lambda: procs.write_text(str(os.getpid())))
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ConfigError" in line]
        assert len(errors) == 1 and "prior.n_components=1000000000 is not allowed" in errors[0]
        assert "cgroup v1 memory.limit_in_bytes 3.0 GiB" in errors[0]
    finally:
        group.rmdir()
