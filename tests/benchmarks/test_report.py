"""The benchmark harness: a named bench set and results that name the CPU."""

from __future__ import annotations

import pytest

from tests.conftest import make_dataset

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


def test_23_bench_set_is_named(tmp_path):
    from benchmarks.conftest import choose_bench_set

    files, labels, classes, description = choose_bench_set(None, 400, shared=tmp_path / "absent")
    assert "artifacts/samples" in description and "--bench-data" in description
    assert len(files) == len(labels) >= 8
    chosen = make_dataset(tmp_path / "b", per_class=2)
    files, _, _, description = choose_bench_set(str(chosen), 400, shared=tmp_path / "absent")
    assert str(chosen) in description and len(files) == 8


def test_24_results_name_the_cpu_and_its_features():
    from benchmarks.conftest import machine_info
    from benchmarks.report import machine_lines

    info = machine_info()
    assert info["cpu"] and isinstance(info["features"], list)
    text = "\n".join(machine_lines(info))
    assert info["cpu"] in text and "int8/bf16 features" in text and "depend" in text
