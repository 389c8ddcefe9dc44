"""`runtime/imaging/descriptors.py`: the thumbnail and the image descriptors of the out-of-distribution score."""

from __future__ import annotations

import numpy as np

from tests.helpers.datasets import SAMPLES
from tumor_runtime.imaging import descriptors


def test_image_descriptor_tells_a_slice_from_a_photo_like_texture():
    slice_ = np.asarray(__import__("PIL").Image.open(sorted(SAMPLES.rglob("*.jpg"))[0]).convert("L").resize((128, 128)))
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    a, b = descriptors.image_descriptors(np.stack([slice_, noise]))
    assert a.shape == b.shape == (23,) and a.dtype == np.float32
    assert a[16] > 0.6 and b[16] < 0.3  # left-right symmetry of a head, none in noise
    assert a[20] > 0.5 > b[20]  # a slice's border is dark


# The arithmetic against independent, slow reference computations.


def reference_descriptor(small: np.ndarray) -> np.ndarray:
    """One 64x64 thumbnail's 23 numbers, computed the plain way (loops and np.histogram)."""
    g = small.astype(np.float64)
    hist = np.histogram(small, bins=16, range=(0, 256))[0] / small.size
    mean, var = g.mean(), g.var()
    c = g - mean
    symmetry = (c * c[:, ::-1]).mean() / var if var > 0 else 1.0
    dy = np.abs(g[1:, 1:] - g[:-1, 1:])
    dx = np.abs(g[1:, 1:] - g[1:, :-1])
    edges = dy + dx
    centre = g[16:48, 16:48].mean() / (mean + 1e-3)
    ring = np.ones((64, 64), bool)
    ring[4:60, 4:60] = False  # the 4-pixel frame: 16 * 64 - 64 pixels
    border = (small[ring] <= 10).mean()
    stats = [symmetry, edges.mean() / 50, (edges > 40).mean(), centre, border, np.sqrt(var) / 64, (small >= 250).mean()]
    return np.concatenate([np.sqrt(hist), stats])


def test_descriptors_match_the_plain_computation_image_by_image():
    rng = np.random.default_rng(5)
    batch = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    batch[1, :8] = 0  # a dark band
    batch[2] = 255  # one level everywhere: no variance
    got = descriptors.descriptors_of_thumbnails(batch)
    assert got.shape == (3, descriptors.DESCRIPTOR_LENGTH) and got.dtype == np.float32
    for small, row in zip(batch, got):
        np.testing.assert_allclose(row, reference_descriptor(small), rtol=1e-5, atol=1e-6)


def test_a_thumbnail_is_the_bilinear_64_pixel_image():
    from PIL import Image

    gray = np.random.default_rng(6).integers(0, 256, (160, 160), dtype=np.uint8)
    small = descriptors.thumbnail(gray)
    assert small.shape == (64, 64) and small.dtype == np.uint8
    assert np.array_equal(small, np.asarray(Image.fromarray(gray).resize((64, 64), Image.BILINEAR)))
    assert np.array_equal(descriptors.image_descriptors(gray[None]), descriptors.descriptors_of_thumbnails(small[None]))
