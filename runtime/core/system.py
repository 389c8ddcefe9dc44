"""The one reader of machine and package facts: installed packages and their versions (without importing
them), the cores this process may use (affinity and cgroup quota) and the CPU's instruction-set flags."""

from __future__ import annotations

import importlib.util
import math
import os
import platform


def package_version(name: str) -> str | None:
    """An installed distribution's version from its metadata, without importing it (torch stays unloaded)."""
    from importlib import metadata  # 20 ms to import: only when a version is asked for, not at every start

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed(module: str) -> bool:
    """Whether `module` can be imported (an optional extra's package), without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def tool_versions(*packages: str) -> dict:
    """{"tumor_kit", "python", and each named package}: recorded in checkpoints and ONNX metadata."""
    from tumor_runtime import __version__

    return {
        "tumor_kit": __version__,
        "python": platform.python_version(),
        **{name: package_version(name) for name in packages},
    }


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota (cgroup v2
    cpu.max), not the host's core count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cores, quota)) if quota else cores


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """ceil(quota / period) from cgroup v2's cpu.max ("200000 100000" -> 2); None without a limit."""
    try:
        quota, period = open(path).read().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of Linux's /proc/cpuinfo ("flags", "model name"); None where it cannot
    be read or has none."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith(field)), None)
    except OSError:
        return None


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags; empty where they cannot be read."""
    return set((cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), "?" where it cannot be read: every
    figure the kit reports is named with it."""
    return cpuinfo("model name") or "?"


def missing_extra(what: str, extra: str, missing: list[str] | tuple[str, ...] = ()) -> str:
    """The one message for an optional extra that is not installed: what needs it, which packages are missing,
    and how to add it (from a clone of the repository, where the kit's users get it)."""
    absent = f" ({', '.join(missing)} not installed)" if missing else ""
    return f'{what} needs the [{extra}] extra{absent}: pip install -e ".[{extra}]" in a clone of the repository'
