"""Shared fixtures: small generated datasets (no ../shared needed) and the committed samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "artifacts" / "samples"


@pytest.fixture(scope="session", autouse=True)
def work_in_a_temporary_folder(tmp_path_factory):
    """The session runs in a fresh folder: nothing written by a relative path lands in the repository (nor, in
    mutation testing, in the copy that the next mutant's session runs in, where it could change its result)."""
    import os

    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


def synthetic_image(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Smoothed noise (so no two images correlate) plus a class cue that survives flips and small
    warps: 0 a bright square high up, 1 one low down, 2 (notumor) none, 3 a pair left and right."""
    noise = rng.integers(0, 160, (size // 4, size // 4)).astype(np.uint8)
    img = np.asarray(Image.fromarray(noise).resize((size, size), Image.BILINEAR)).copy()
    q = size // 8
    centres = {0: [(size // 4, size // 2)], 1: [(3 * size // 4, size // 2)], 2: [],
               3: [(size // 2, size // 4), (size // 2, 3 * size // 4)]}[label % 4]
    for r, c in centres:
        img[r - q:r + q, c - q:c + q] = 255
    return img


def make_dataset(root: Path, per_class: int = 8, seed: int = 0, classes=CLASSES) -> Path:
    """root/<class>/img_XXX.jpg, generated and reproducible."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(synthetic_image(label, rng)).save(folder / f"img_{i:03d}.jpg", quality=95)
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def images(tmp_path) -> Path:
    """Eight small synthetic slices, two per class, in class folders."""
    return make_dataset(tmp_path / "imgs", per_class=2)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """One tiny model trained once per session (2 epochs), for the tests of later stages."""
    from click.testing import CliRunner

    from tumor_train.cli import main

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "data", per_class=12)
    result = CliRunner().invoke(main, ["--data", str(data), "--out", str(root / "out"), "--epochs", "2",
                                       "--width", "16", "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory) -> Path:
    """The tiny model exported to FP32 and int8 once per session; returns its folder."""
    from tumor_export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("exported")
    run_export(ExportOptions(checkpoint=trained / "model.pth", out=out, int8=True, calibration_size=32),
               log=lambda msg: None)
    return out


@pytest.fixture
def int8(exported) -> Path:
    return exported / "model.int8.onnx"
