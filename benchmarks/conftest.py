"""Benchmark fixtures: the four variants of each model, the labelled bench set, thread pinning.

`pytest --benchmark-only` measures everything. A plain `pytest` (the test command) runs
each compact-model benchmark once with timing disabled and skips the reference AlexNet,
so CI stays fast while the benchmark code is still exercised.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

from tumor_runtime.core.system import available_cores, cpu_flags, cpu_model

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
SHARED = REPO.parent / "shared" / "data" / "brain-tumor-mri"


def pytest_addoption(parser):
    parser.addoption(
        "--bench-data",
        default=None,
        help="Labelled folder DIR/<class>/ for F2 parity and end-to-end runs [default: the shipped "
        "model's validation split when ../shared is present, else the 20 images of "
        "artifacts/samples]. The chosen set is printed in the header.",
    )
    parser.addoption("--bench-limit", default=400, type=int, help="At most this many bench images (sorted, seeded).")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    if not config.getoption("benchmark_only", False) and hasattr(config, "_benchmarksession"):
        config._benchmarksession.disabled = True  # plain pytest: run each benchmark once, untimed


def pytest_report_header(config):
    """Say loudly which bench set and which CPU every figure comes from."""
    try:
        description = choose_bench_set(config.getoption("--bench-data"), config.getoption("--bench-limit"))[3]
        info = machine_info()
    except Exception as exc:  # the header must never stop a test run
        return f"bench set: unknown ({type(exc).__name__})"
    return [
        f"bench set: {description}",
        f"CPU: {info['cpu']}, {info['cores']} cores; int8/bf16 features: {', '.join(info['features']) or 'none'}",
    ]


def full_run(config) -> bool:
    return bool(config.getoption("benchmark_only", False))


def cores() -> int:
    return available_cores()


CPU_FEATURES = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_features() -> list[str]:
    """The CPU flags that decide int8 and bf16 speed (VNNI, AVX-512, AMX): figures depend on them."""
    flags = cpu_flags()
    return [f for f in CPU_FEATURES if f in flags]


def machine_info() -> dict:
    import onnxruntime

    try:
        import torch

        torch_version = str(torch.__version__)
    except ImportError:
        torch_version = "not installed"
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": cores(),
        "features": cpu_features(),
        "python": platform.python_version(),
        "torch": torch_version,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def choose_bench_set(chosen: str | None, limit: int, shared: Path = SHARED):
    """(files, labels, classes, description) of the labelled bench images, and where they come from."""
    from tumor_export.metadata import read_metadata
    from tumor_runtime.model.info import ModelInfo
    from tumor_train.data import list_images

    classes = ModelInfo.from_metadata(read_metadata(ARTIFACTS / "model.int8.onnx")).classes
    if chosen:
        files, labels = list_images(Path(chosen), classes)
        description = f"--bench-data {chosen}"
    elif (shared / "Training").is_dir():
        # The kit's fixed grouped validation split (relative to the dataset root): the images every candidate
        # recipe was validated on. A final-fit model trained on them too: the header says so.
        names = [n for n in (ARTIFACTS / "val_files.txt").read_text().split() if n]
        files = [shared / f for f in names]
        labels = np.array([classes.index(f.parent.name) for f in files])
        description = f"the kit's fixed validation split (artifacts/val_files.txt) under {shared}"
    else:
        files, labels = list_images(ARTIFACTS / "samples", classes)
        description = (
            f"artifacts/samples ONLY ({len(files)} images: {shared} is absent); figures from so few "
            "images are rough. Pass --bench-data DIR for a real set"
        )
    if len(files) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(files), limit, replace=False))
        files, labels = [files[i] for i in keep], np.asarray(labels)[keep]
    return files, np.asarray(labels), classes, f"{description} ({len(files)} images)"


def seen_in_training(files: list[Path], ckpt: dict) -> float:
    """Share of `files` the checkpoint trained on: under its training folder and not in its validation split
    (a final fit has none, so all of them). Its F2 on those measures agreement between variants, not accuracy."""
    data = ckpt.get("data", {})
    if not files or not data.get("train_dir") or not data.get("root"):
        return 0.0
    train_dir, root = Path(data["train_dir"]).resolve(), Path(data["root"]).resolve()
    held_out = {(root / name).resolve() for name in data.get("val_files", [])}
    seen = [f for f in (Path(f).resolve() for f in files) if f.is_relative_to(train_dir) and f not in held_out]
    return len(seen) / len(files)


@pytest.fixture(scope="session")
def bench_set(request) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, classes) of the labelled bench images."""
    files, labels, classes, _ = choose_bench_set(
        request.config.getoption("--bench-data"), request.config.getoption("--bench-limit")
    )
    return files, labels, classes
