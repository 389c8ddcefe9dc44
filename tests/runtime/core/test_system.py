"""`runtime/core/system.py`: the cores this process may use, installed packages and the CPU's flags."""

from __future__ import annotations

import os

import pytest

from tumor_runtime.core import system

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


@pytest.mark.parametrize(
    "text, cores",
    [
        ("200000 100000\n", 2),
        ("150000 100000", 2),
        ("50000 100000", 1),
        ("1 100000", 1),
        ("max 100000", None),
        ("garbage", None),
    ],
)
def test_cgroup_cpu_limit_rounds_the_quota_up(tmp_path, text, cores):
    (tmp_path / "cpu.max").write_text(text)
    assert system.cgroup_cpu_limit(str(tmp_path / "cpu.max")) == cores
    assert system.cgroup_cpu_limit(str(tmp_path / "absent")) is None


def test_available_cores_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(system, "cgroup_cpu_limit", lambda: None)
    assert system.available_cores() == 4
    monkeypatch.setattr(system, "cgroup_cpu_limit", lambda: 3)
    assert system.available_cores() == 3
    monkeypatch.setattr(system, "cgroup_cpu_limit", lambda: 8)
    assert system.available_cores() == 4
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setattr(system, "cgroup_cpu_limit", lambda: None)
    assert system.available_cores() == 6


# The pieces behind the interface, one by one.


def test_cpu_flags_reads_the_first_flags_line_and_nothing_when_unreadable(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor : 0\nmodel name : X\nflags\t\t: fpu avx2 amx_int8\nflags : other\n")
    real_open = open
    monkeypatch.setattr(
        system, "open", lambda path, *a: real_open(fake if path == "/proc/cpuinfo" else path, *a), raising=False
    )
    assert system.cpu_flags() == {"fpu", "avx2", "amx_int8"}
    fake.write_text("processor : 0\n")
    assert system.cpu_flags() == set()
    monkeypatch.setattr(system, "open", lambda *a: (_ for _ in ()).throw(PermissionError("no")), raising=False)
    assert system.cpu_flags() == set()


def test_installed_follows_the_import_system_without_importing(monkeypatch):
    import sys

    assert system.installed("numpy") is True and system.installed("no_such_module_xyz") is False
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    assert system.installed("colorsys") is True and "colorsys" not in sys.modules  # found, not imported
    monkeypatch.setattr(system.importlib.util, "find_spec", lambda name: (_ for _ in ()).throw(ValueError()))
    assert system.installed("numpy") is False  # a module whose spec is broken counts as absent


def test_every_missing_extra_is_said_the_same_way():
    """One message for every optional extra (DICOM, OpenVINO, Ray and the commands'): what needs it, what is
    missing, and the one way to add it."""
    from tumor_runtime.imaging.dicom import MISSING_EXTRA
    from tumor_runtime.inference.ray_batch import RAY_MISSING
    from tumor_runtime.model.backends import MISSING_OPENVINO

    assert system.missing_extra("tumor-serve", "serve", ["uvicorn"]) == (
        'tumor-serve needs the [serve] extra (uvicorn not installed): pip install -e ".[serve]" in a clone of the '
        "repository"
    )
    for message, extra in ((MISSING_EXTRA, "dicom"), (RAY_MISSING, "ray"), (MISSING_OPENVINO, "openvino")):
        assert message.endswith(f'needs the [{extra}] extra: pip install -e ".[{extra}]" in a clone of the repository')
