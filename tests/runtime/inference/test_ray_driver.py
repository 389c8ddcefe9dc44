"""tumor-infer's Ray driver in a child process: Ray's lines never reach the output, and a driver that dies
midway is one error, not a hard exit of tumor-infer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.datasets import SAMPLES
from tumor_runtime.core.errors import UsageError
from tumor_runtime.inference.ray_batch import RayRunError
from tumor_runtime.inference.ray_driver import isolated_ray_records

FILES = [str(p) for p in sorted(SAMPLES.rglob("*.jpg"))[:3]]


def chatty_then_dead(rows_out, log, paths, options):
    """A driver as Ray makes it when the cluster goes: lines on stdout and stderr, two rows, then exit 1."""
    from tumor_runtime.inference.ray_driver import driver_main

    def ray_records(paths, **options):
        print("A worker died or was killed while executing a task", flush=True)
        for path in paths[:2]:
            yield {"path": path}
        os.write(2, b"[core_worker.cc] Failed to connect to GCS within 60 seconds\n")
        os._exit(1)

    import tumor_runtime.inference.ray_driver as module

    module.ray_records = ray_records
    driver_main(rows_out, log, paths, options)


def refusing(rows_out, log, paths, options):
    from tumor_runtime.inference.ray_driver import driver_main

    def ray_records(paths, **options):
        raise UsageError("cannot reach the Ray cluster at 10.0.0.9:6379: Connection refused")

    import tumor_runtime.inference.ray_driver as module

    module.ray_records = ray_records
    driver_main(rows_out, log, paths, options)


def test_a_driver_that_dies_midway_is_one_error_after_the_rows_it_gave(capfd):
    rows = isolated_ray_records(FILES, target=chatty_then_dead)
    got = []
    with pytest.raises(RayRunError) as raised:
        for row in rows:
            got.append(row["path"])
    assert got == FILES[:2]
    assert str(raised.value) == (
        "the Ray driver process stopped (exit code 1); Ray's last line: "
        "[core_worker.cc] Failed to connect to GCS within 60 seconds"
    )
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # Ray's lines stayed in the child's log, which is gone
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("tumor-infer-ray-*.log"))


def test_a_driver_that_cannot_connect_raises_the_kits_error_before_any_row():
    with pytest.raises(UsageError, match="cannot reach the Ray cluster at 10.0.0.9:6379"):
        isolated_ray_records(FILES, target=refusing)


def test_tumor_infer_with_ray_keeps_stdout_to_its_rows_and_relative_paths_work(tmp_path):
    """Real Ray: rows on stdout are exactly a local run's, named as given (relative), though the actors read
    absolute paths (on a cluster their working folder is not the driver's)."""
    pytest.importorskip("ray")
    folder = tmp_path / "in"
    folder.mkdir()
    for path in FILES:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    command = [sys.executable, "-m", "tumor_runtime", "in", "--format", "jsonl", "-q"]
    local = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    on_ray = subprocess.run([*command, "--ray", "auto"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert on_ray.returncode == local.returncode == 0, on_ray.stderr
    assert on_ray.stdout == local.stdout and on_ray.stdout.count("\n") == len(FILES)
    assert all(line.startswith('{"path": "in/') for line in on_ray.stdout.splitlines())
