"""Shared fixtures: small generated datasets (no ../shared needed) and the committed samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "artifacts" / "samples"


def synthetic_image(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Smoothed noise (so no two images correlate) plus a bright square in quadrant `label`."""
    noise = rng.integers(0, 160, (size // 4, size // 4)).astype(np.uint8)
    img = np.asarray(Image.fromarray(noise).resize((size, size), Image.BILINEAR)).copy()
    half, q = size // 2, size // 8
    r, c = divmod(label % 4, 2)
    img[r * half + q: r * half + half - q, c * half + q: c * half + half - q] = 255
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
