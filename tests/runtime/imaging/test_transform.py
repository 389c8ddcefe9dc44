"""`runtime/imaging/transform.py`: the model's input (crop, resize, normalise) and its parity with training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.datasets import REPO, SAMPLES, make_dataset, synthetic_image
from tests.helpers.files import flip_bits, mangled_file, real_encodings
from tumor_runtime.imaging.transform import load_gray
from tumor_runtime.inference.classifier import Classifier


def test_normalize_shape_and_values():
    from tumor_runtime.imaging.transform import normalize

    gray = np.array([[[0, 255], [51, 102]]], np.uint8)
    x = normalize(gray, 0.2, 0.5)
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [[-0.4, 1.6], [0.0, 0.4]], atol=1e-6)


def test_load_gray_resizes_bilinear_only_when_needed():
    gray = np.random.default_rng(1).integers(0, 256, (40, 40)).astype(np.uint8)
    assert load_gray(gray, 40).tolist() == gray.tolist()
    resized = load_gray(gray, 20)
    assert resized.tolist() == np.asarray(Image.fromarray(gray).resize((20, 20), Image.BILINEAR)).tolist()
    assert load_gray(Image.fromarray(gray), 40).tolist() == gray.tolist()
    palette = Image.fromarray(gray).convert("P")
    assert np.abs(load_gray(palette, 40).astype(int) - gray).max() <= 8
    one_bit = Image.fromarray((gray > 128).astype(np.uint8) * 255).convert("1")
    assert set(np.unique(load_gray(one_bit, 40))) <= {0, 255}


@pytest.mark.faults
def test_04_bit_depths_give_the_same_pixels_and_label(tmp_path):
    clf = Classifier.load()
    for sample in sorted(SAMPLES.rglob("*.jpg"))[:4]:
        gray = np.asarray(Image.open(sample).convert("L"))
        variants = {
            "8": gray.astype(np.uint16),
            "12": (gray.astype(np.uint16) * 16 + 3 * (gray > 0)).astype(np.uint16),
            "16": gray.astype(np.uint16) * 257,
        }
        Image.fromarray(gray).save(tmp_path / "eight.png")
        expected = load_gray(tmp_path / "eight.png", 227)
        labels = {clf.predict(tmp_path / "eight.png")[0]["label"]}
        for name, values in variants.items():
            path = tmp_path / f"{name}.png"
            Image.fromarray(values).save(path)
            assert Image.open(path).mode.startswith("I"), name
            got = load_gray(path, 227)
            assert np.abs(got.astype(int) - expected).max() <= 1, (sample.name, name)
            labels.add(clf.predict(path)[0]["label"])
        assert len(labels) == 1, (sample.name, labels)


@pytest.mark.faults
def test_04_a_hot_pixel_does_not_darken_a_deep_image(tmp_path):
    gray = synthetic_image(1, np.random.default_rng(0), 128).astype(np.uint16) * 16  # 12-bit data
    hot = gray.copy()
    hot[0, 0] = 65535  # one saturated pixel
    Image.fromarray(gray).save(tmp_path / "clean.png")
    Image.fromarray(hot).save(tmp_path / "hot.png")
    clean, noisy = load_gray(tmp_path / "clean.png", 128), load_gray(tmp_path / "hot.png", 128).copy()
    assert noisy[0, 0] == 255
    noisy[0, 0] = clean[0, 0]
    assert np.abs(clean.astype(int) - noisy).max() <= 1


@pytest.mark.faults
def test_fuzz_loader_gives_an_image_or_an_image_error(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings

    from tumor_runtime.core.errors import ImageError

    folder = tmp_path_factory.mktemp("fuzz-loader")

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mangled_file())
    def check(case):
        ext, data = case
        path = folder / f"x.{ext}"
        path.write_bytes(data)
        try:
            out = load_gray(path, 227)
        except (ImageError, OSError):
            return
        assert out.shape == (227, 227) and out.dtype == np.uint8

    check()


@pytest.mark.faults
def test_a_tiff_whose_directory_lost_its_size_is_an_image_error(tmp_path):
    """Found by the fuzz test above: one flipped bit in a TIFF's directory made counting its frames raise
    TypeError("Missing dimensions"), a crash instead of an error row."""
    from tumor_runtime.core.errors import ImageError

    path = tmp_path / "x.tif"
    path.write_bytes(flip_bits(real_encodings()["tif"], [(130, 0)]))
    with pytest.raises(ImageError, match=r"^corrupt or truncated image \(Missing dimensions\)$"):
        load_gray(path, 227)


@pytest.mark.faults
def test_the_command_reports_a_damaged_file_without_the_readers_own_warnings(tmp_path):
    """Pillow warns about the damaged TIFF above ("Tag data larger than file"); tumor-infer's error row and its
    count already say what is wrong, so stderr has the kit's lines only."""
    import subprocess
    import sys

    path = tmp_path / "x.tif"
    path.write_bytes(flip_bits(real_encodings()["tif"], [(130, 0)]))
    result = subprocess.run(
        [sys.executable, "-m", "tumor_runtime", str(path), "--format", "csv"], capture_output=True, text=True
    )  # a process of its own: pytest catches warnings
    assert result.returncode == 1 and "corrupt or truncated image" in result.stdout
    assert "Warning" not in result.stderr and "warn" not in result.stderr, result.stderr


@pytest.fixture
def images(tmp_path) -> Path:
    return make_dataset(tmp_path / "imgs", per_class=3)


def test_preprocessing_matches_training_transform():
    """Runtime numpy preprocessing vs an independent training-side transform: torchvision's
    Grayscale + Resize(bilinear) on the PIL image, then ToTensor + Normalize (the reference recipe)."""
    torch = pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    from tumor_runtime.imaging.transform import normalize

    files = sorted((REPO / "artifacts" / "samples").rglob("*.jpg"))
    assert len(files) >= 8, "real sample images are committed under artifacts/samples"
    reference = transforms.Compose(
        [
            transforms.Grayscale(),
            transforms.Resize((227, 227), antialias=True),
            transforms.ToTensor(),
            transforms.Normalize([0.18], [0.2]),
        ]
    )
    expected = torch.stack([reference(Image.open(f).convert("RGB")) for f in files]).numpy()
    runtime_side = np.stack([normalize(load_gray(f, 227), 0.18, 0.2) for f in files])
    # One 8-bit level is 1/255/0.2 = 0.0196 after normalisation; draft-mode JPEG decoding may differ by one.
    assert np.abs(runtime_side - expected).max() <= 1.01 / 255 / 0.2
    assert np.abs(runtime_side - expected).mean() < 0.1 / 255 / 0.2
    # And the training cache holds exactly the runtime's pixels.
    from tumor_train.data import decode_images, to_input

    train_side = decode_images(files, np.zeros(len(files), np.int64), 227)
    np.testing.assert_allclose(
        to_input(torch.from_numpy(train_side.images), 0.18, 0.2).numpy(), runtime_side, atol=1e-6
    )
