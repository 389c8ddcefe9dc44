"""Synthetic class-folder datasets and the repository's sample slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "artifacts" / "samples"


def synthetic_image(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Smoothed noise (so no two images correlate) plus a class cue that survives flips and small
    warps: 0 a bright square high up, 1 one low down, 2 (notumor) none, 3 a pair left and right."""
    noise = rng.integers(0, 160, (size // 4, size // 4)).astype(np.uint8)
    img = np.asarray(Image.fromarray(noise).resize((size, size), Image.BILINEAR)).copy()
    q = size // 8
    centres = {
        0: [(size // 4, size // 2)],
        1: [(3 * size // 4, size // 2)],
        2: [],
        3: [(size // 2, size // 4), (size // 2, 3 * size // 4)],
    }[label % 4]
    for r, c in centres:
        img[r - q : r + q, c - q : c + q] = 255
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
