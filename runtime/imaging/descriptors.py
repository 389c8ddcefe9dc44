"""Image descriptors for the out-of-distribution score: a 64 px thumbnail of the model's input and 23 cheap
statistics of it (histogram, symmetry, gradients, border). The decode pool makes the thumbnails; the score
itself is `tumor_runtime.model.ood`."""

from __future__ import annotations

import numpy as np
from PIL import Image

DESCRIPTOR_SIDE = 64  # the image descriptor is computed on the input shrunk to this side (cheap)
DESCRIPTOR_LENGTH = 16 + 7  # histogram bins, then the seven statistics of `descriptors_of_thumbnails`


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """uint8 model input (S, S) -> (64, 64), bilinear: what the image descriptor reads. Cheap, and PIL lets
    other threads run meanwhile, so the classifier makes it in its decode threads."""
    return np.asarray(Image.fromarray(gray).resize((DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), Image.Resampling.BILINEAR))


def image_descriptors(grays: np.ndarray) -> np.ndarray:
    """uint8 model inputs (N, S, S) -> float32 (N, 23), through `thumbnail`; see `descriptors_of_thumbnails`."""
    return descriptors_of_thumbnails(np.stack([thumbnail(g) for g in grays]))


def descriptors_of_thumbnails(small: np.ndarray) -> np.ndarray:
    """uint8 thumbnails (N, 64, 64) -> float32 (N, 23): sqrt of a 16-bin histogram, left-right symmetry, mean
    gradient, edge share, centre-to-mean brightness, dark border share, contrast, saturated share. Computed
    for the whole batch at once: per image, numpy's call overhead would cost a quarter of the run."""
    side = DESCRIPTOR_SIDE
    n = len(small)
    flat = small.reshape(n, -1)
    bins = (flat >> 4).astype(np.int64) + 16 * np.arange(n)[:, None]
    histogram = np.bincount(bins.ravel(), minlength=16 * n).reshape(n, 16) / flat.shape[1]
    g = small.astype(np.float32)
    mean = g.mean(axis=(1, 2))
    centred = g - mean[:, None, None]
    variance = (centred**2).mean(axis=(1, 2))
    mirrored = (centred * centred[:, :, ::-1]).mean(axis=(1, 2))
    symmetry = np.where(variance > 0, mirrored / np.maximum(variance, 1e-12), 1.0)  # a mirror keeps the variance
    edges = np.abs(g[:, 1:, 1:] - g[:, :-1, 1:]) + np.abs(g[:, 1:, 1:] - g[:, 1:, :-1])  # L1 gradient magnitude
    q = side // 4
    centre = g[:, q:-q, q:-q].mean(axis=(1, 2)) / (mean + 1e-3)
    dark = small <= 10
    border = (
        dark[:, :4].sum((1, 2))
        + dark[:, -4:].sum((1, 2))
        + dark[:, 4:-4, :4].sum((1, 2))
        + dark[:, 4:-4, -4:].sum((1, 2))
    ) / (16 * side - 64)
    stats = np.stack(
        [
            symmetry,
            edges.mean(axis=(1, 2)) / 50,
            (edges > 40).mean(axis=(1, 2)),
            centre,
            border,
            np.sqrt(variance) / 64,
            (small >= 250).mean(axis=(1, 2)),
        ],
        axis=1,
    )
    return np.concatenate([np.sqrt(histogram), stats], axis=1).astype(np.float32)
