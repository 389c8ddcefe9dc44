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


def _border_frame(side: int, width: int = 4) -> np.ndarray:
    """float32 (side * side,): 1 on the `width`-pixel frame of a thumbnail, 0 inside; a dot product counts it."""
    frame = np.ones((side, side), np.float32)
    frame[width:-width, width:-width] = 0
    return frame.ravel()


BORDER_FRAME = _border_frame(DESCRIPTOR_SIDE)
BORDER_PIXELS = float(BORDER_FRAME.sum())  # 16 x 64 - 64


def descriptors_of_thumbnails(small: np.ndarray) -> np.ndarray:
    """uint8 thumbnails (N, 64, 64) -> float32 (N, 23): sqrt of a 16-bin histogram, left-right symmetry, mean
    gradient, edge share, centre-to-mean brightness, dark border share, contrast, saturated share. Computed
    for the whole batch at once, in as few numpy calls as it takes: per call, numpy costs microseconds
    whatever the size, which at a server's batch of one was half the score's time."""
    side = DESCRIPTOR_SIDE
    n, pixels = len(small), side * side
    flat = small.reshape(n, pixels)
    bins = (flat >> 4).astype(np.int64) + 16 * np.arange(n)[:, None]
    histogram = np.bincount(bins.ravel(), minlength=16 * n).reshape(n, 16) / pixels
    g = small.astype(np.float32)
    mean = g.sum(axis=(1, 2)) / pixels
    centred = g - mean[:, None, None]
    variance = np.einsum("nij,nij->n", centred, centred) / pixels
    mirrored = np.einsum("nij,nij->n", centred, centred[:, :, ::-1]) / pixels
    symmetry = np.where(variance > 0, mirrored / np.maximum(variance, 1e-12), 1.0)  # a mirror keeps the variance
    corner = g[:, 1:, 1:]
    edges = np.abs(corner - g[:, :-1, 1:]) + np.abs(corner - g[:, 1:, :-1])  # L1 gradient magnitude
    q = side // 4
    centre = g[:, q:-q, q:-q].sum(axis=(1, 2)) / ((side - 2 * q) ** 2 * (mean + 1e-3))
    border = ((flat <= 10).astype(np.float32) @ BORDER_FRAME) / BORDER_PIXELS  # dark share of the frame
    stats = np.stack(
        [
            symmetry,
            edges.sum(axis=(1, 2)) / (edges[0].size * 50),
            (edges > 40).sum(axis=(1, 2)) / edges[0].size,
            centre,
            border,
            np.sqrt(variance) / 64,
            (flat >= 250).sum(axis=1) / pixels,
        ],
        axis=1,
    )
    return np.concatenate([np.sqrt(histogram), stats], axis=1).astype(np.float32)
