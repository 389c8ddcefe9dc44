"""The architecture holds: the layering contracts, a torch-free runtime and CLI, and a wheel that ships the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from tests.helpers.datasets import REPO, make_dataset
from tests.helpers.processes import BLOCK_TORCH


@pytest.fixture
def images(tmp_path) -> Path:
    return make_dataset(tmp_path / "imgs", per_class=3)


def test_layering_contracts_hold():
    """import-linter's contracts in pyproject.toml: the runtime never imports torch (nor train/export), and
    training never imports export; a new back arrow fails here."""
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts) == 4 and any(c["type"] == "layers" for c in contracts)
    assert f"Contracts: {len(contracts)} kept, 0 broken" in result.stdout


def test_importing_runtime_leaves_torch_out():
    code = (
        "import sys, tumor_runtime, tumor_runtime.cli.infer, tumor_runtime.inference.classifier, "
        "tumor_runtime.model.session, "
        "tumor_runtime.cli.writers, tumor_runtime.imaging.listing, tumor_runtime.core.scoring\n"
        "import tumor_runtime.cli.infer as c\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'sklearn')))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_cli_runs_where_torch_cannot_be_imported(exported, images):
    code = BLOCK_TORCH + (
        "from tumor_runtime.cli.infer import main\n"
        f"sys.argv = ['tumor-infer', '-r', {str(images)!r}, '--model', {str(exported / 'model.int8.onnx')!r},"
        " '--format', 'jsonl']\nmain()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 12 and all(r["error"] is None for r in rows)


def test_wheel_install_ships_the_default_model(tmp_path):
    """A regular (non-editable) install, used from outside the repository, finds the shipped int8 model.
    The wheel is built from a copy of the tracked files, so the source tree gets no build/ or egg-info."""
    if not (REPO / "artifacts" / "model.int8.onnx").is_file():
        pytest.fail("artifacts/model.int8.onnx (the shipped model) is missing")
    source, wheel_dir, target = tmp_path / "src", tmp_path / "wheel", tmp_path / "site"
    before = sorted(p.name for p in REPO.iterdir())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheel_dir, source],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
        check=True,
        capture_output=True,
    )
    samples = REPO / "artifacts" / "samples"
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import sys, tumor_runtime; assert tumor_runtime.__file__.startswith(sys.argv[1]), tumor_runtime.__file__\n"
        "from tumor_runtime.cli.infer import main\n"
        "sys.argv = ['tumor-infer', '-r', sys.argv[2], '--format', 'jsonl']; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(target), str(samples)], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) >= 8 and all(r["label"] in ("glioma", "meningioma", "notumor", "pituitary") for r in rows)
    truth = [Path(r["path"]).parent.name for r in rows]
    assert np.mean([r["label"] == t for r, t in zip(rows, truth)]) >= 0.9  # the shipped model, not any model
    assert sorted(p.name for p in REPO.iterdir()) == before  # no build/ or egg-info left in the source tree


# Modules whose behaviour is tested through another module's tests (named here, so that a new module without
# tests of its own fails the test below): the command plumbing and signals through every command's tests, the
# decode workers through the pool, the row schema through the classifier, the errors through every test.
TESTED_THROUGH = {
    "runtime/core/command.py": "tests/runtime/cli/test_infer_contract.py",
    "runtime/core/signals.py": "tests/runtime/core/test_fileio_signals.py",
    "runtime/core/errors.py": "tests/runtime/cli/test_infer_contract.py",
    "runtime/imaging/workers.py": "tests/runtime/imaging/test_pool.py",
    "runtime/inference/records.py": "tests/runtime/inference/test_classifier.py",
    "runtime/cli/serve.py": "tests/runtime/serving/test_app.py",
    "runtime/cli/outputs.py": "tests/runtime/cli/test_infer_faults.py",
    "runtime/serving/guard.py": "tests/runtime/serving/test_app.py",
    "runtime/serving/service.py": "tests/runtime/serving/test_app.py",
    "train/cli.py": "tests/train/test_cli_messages.py",
    "train/architectures.py": "tests/train/test_models.py",
    "train/pretrained.py": "tests/train/test_start_weights.py",
    "train/dynamic_int8.py": "tests/train/test_model_file.py",
    "export/cli.py": "tests/export/test_cli.py",
}
# Test files named after what they test across modules rather than after one module.
CROSS_MODULE_TESTS = {"tests/export/test_cam.py", "tests/train/test_start_weights.py"}


def mirror(module: Path) -> list[Path]:
    """runtime/imaging/dicom.py -> tests/runtime/imaging/test_dicom.py and test_dicom_*.py that exist."""
    folder = REPO / "tests" / module.parent
    return sorted([*folder.glob(f"test_{module.stem}.py"), *folder.glob(f"test_{module.stem}_*.py")])


def test_the_tests_mirror_the_tree():
    """Every module of the three stages has test files at its mirrored path (or names where it is tested), and
    every test file there is named after a module beside its mirror: the tree of tests/ is the tree of the code."""
    modules = sorted(
        p.relative_to(REPO)
        for stage in ("runtime", "export", "train")
        for p in (REPO / stage).rglob("*.py")
        if not p.name.startswith("__")
    )
    untested = [str(m) for m in modules if not mirror(m) and str(m) not in TESTED_THROUGH]
    assert untested == []
    assert all((REPO / t).is_file() for t in TESTED_THROUGH.values())
    stems = {(m.parent, m.stem) for m in modules}
    orphans = []
    for test in [t for stage in ("runtime", "export", "train") for t in (REPO / "tests" / stage).rglob("test_*.py")]:
        relative = test.relative_to(REPO)
        folder, name = relative.parent.relative_to("tests"), test.stem[len("test_") :]
        if str(relative) in CROSS_MODULE_TESTS:
            continue
        if not any(parent == folder and (name == stem or name.startswith(stem + "_")) for parent, stem in stems):
            orphans.append(str(relative))
    assert orphans == []


def test_the_python_api_is_reexported_lazily():
    """`from tumor_runtime import Classifier` works, and importing the package alone loads none of the layers."""
    code = (
        "import sys, tumor_runtime\n"
        "assert not [m for m in sys.modules if m.startswith('tumor_runtime.')], sorted(sys.modules)\n"
        "from tumor_runtime import Classifier, KitError, ModelError, ImageError, evaluate_records\n"
        "from tumor_runtime.inference.classifier import Classifier as C\n"
        "assert Classifier is C and issubclass(ModelError, KitError) and issubclass(ImageError, KitError)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
