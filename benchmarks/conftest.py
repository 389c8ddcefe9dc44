"""Benchmark fixtures: the four variants of each model, the labelled bench set, thread pinning.

`pytest --benchmark-only` measures everything. A plain `pytest` (the test command) runs
each compact-model benchmark once with timing disabled and skips the reference AlexNet,
so CI stays fast while the benchmark code is still exercised.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
SHARED = REPO.parent / "shared" / "data" / "brain-tumor-mri"


def pytest_addoption(parser):
    parser.addoption("--bench-data", default=None,
                     help="Labelled folder DIR/<class>/ for F2 parity [default: the shipped model's validation "
                          "split when ../shared is present, else artifacts/samples].")
    parser.addoption("--bench-limit", default=400, type=int, help="At most this many bench images (sorted, seeded).")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    if not config.getoption("benchmark_only", False) and hasattr(config, "_benchmarksession"):
        config._benchmarksession.disabled = True  # plain pytest: run each benchmark once, untimed


def full_run(config) -> bool:
    return bool(config.getoption("benchmark_only", False))


def cores() -> int:
    return len(os.sched_getaffinity(0))


def machine_info() -> dict:
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": cores(), "python": platform.python_version(), "torch": str(torch.__version__),
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


@pytest.fixture(scope="session")
def bench_set(request) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, classes) of the labelled bench images."""
    import torch

    from tumor_train.data import list_images

    ckpt = torch.load(ARTIFACTS / "model.pth", weights_only=True)
    classes, limit = ckpt["classes"], request.config.getoption("--bench-limit")
    chosen = request.config.getoption("--bench-data")
    if chosen:
        files, labels = list_images(Path(chosen), classes)
    elif (SHARED / "Training").is_dir():
        root = Path(ckpt["data"]["root"])
        root = root if root.is_dir() else SHARED  # val_files are relative to the dataset root
        files = [root / f for f in ckpt["data"]["val_files"]]
        labels = np.array([classes.index(f.parent.name) for f in files])
    else:
        files, labels = list_images(ARTIFACTS / "samples", classes)
    if len(files) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(files), limit, replace=False))
        files, labels = [files[i] for i in keep], labels[keep]
    return files, np.asarray(labels), classes
