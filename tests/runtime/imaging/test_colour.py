"""A colourful image is refused as not an MRI slice (`tumor_runtime.imaging.colour`); gray ones pass, however stored."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from tests.helpers.datasets import SAMPLES
from tumor_runtime.core.errors import ImageError
from tumor_runtime.imaging.colour import COLOUR_LIMIT, colourfulness, refuse_colour
from tumor_runtime.imaging.decode import EncodedImage
from tumor_runtime.imaging.transform import load_gray
from tumor_runtime.inference.classifier import Classifier


def portrait() -> Path:
    """matplotlib's colour photograph of a person (Grace Hopper), the case the issue names."""
    matplotlib = pytest.importorskip("matplotlib")
    return Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"


@given(arrays(np.uint8, st.tuples(st.integers(1, 80), st.integers(1, 80))))
@settings(max_examples=60, deadline=None)
def test_any_gray_image_stored_as_rgb_has_no_colour(gray):
    rgb = np.repeat(gray[..., None], 3, axis=2)
    assert colourfulness(rgb) == pytest.approx(0.0, abs=1e-3)
    refuse_colour(rgb)  # no error


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
@settings(max_examples=60, deadline=None)
def test_a_flat_colour_counts_by_its_distance_from_gray(r, g, b):
    """One colour everywhere: no spread, so 0.3 times the length of its opponent-colour mean."""
    value = colourfulness(np.full((8, 8, 3), (r, g, b), np.uint8))
    assert value == pytest.approx(0.3 * np.hypot(r - g, (r + g) / 2 - b), rel=1e-4, abs=1e-3)


def test_a_colour_photo_of_a_person_is_its_own_error_row_and_the_samples_pass():
    classifier = Classifier.load()
    samples = sorted(SAMPLES.rglob("*.jpg"))
    assert any(Image.open(s).mode == "RGB" for s in samples)  # slices stored in colour JPEGs are among them
    rows = classifier.predict([str(portrait()), *map(str, samples)])
    assert rows[0]["label"] is None and rows[0]["error"].startswith("a colour image (colourfulness ")
    assert f"MRI slices stay under {COLOUR_LIMIT:.0f}): not an MRI slice" in rows[0]["error"]
    assert all(r["error"] is None for r in rows[1:])
    photo = np.asarray(Image.open(portrait()).convert("RGB"))
    with pytest.raises(ImageError, match="^a colour image"):  # an array given to the API, and bytes in memory
        load_gray(photo, 160, "brain")
    with pytest.raises(ImageError, match="^a colour image"):
        load_gray(EncodedImage("p.png", png_bytes(photo)), 160)


def test_a_colour_slice_stored_as_png_or_rgba_is_refused_and_its_gray_version_classified(tmp_path):
    photo = np.asarray(Image.open(portrait()).convert("RGB"))
    for mode in ("RGB", "RGBA", "P"):
        image = Image.fromarray(photo).convert(mode)
        image.save(tmp_path / f"p-{mode}.png")
        with pytest.raises(ImageError, match="^a colour image"):
            load_gray(tmp_path / f"p-{mode}.png", 160)
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.png")
    assert load_gray(tmp_path / "gray.png", 160).shape == (160, 160)  # gray: it is for the OOD score to judge


def test_a_colour_jpeg_slice_keeps_within_two_levels_of_its_luma():
    """Colour JPEGs are now decoded in colour (so that a photo is seen) and converted with PIL's luma weights:
    the model input stays within 2 levels of the luma-only decode the model was trained on."""
    for sample in sorted(SAMPLES.rglob("*.jpg")):
        if Image.open(sample).mode != "RGB":
            continue
        luma = Image.open(sample)
        luma.draft("L", luma.size)
        expected = load_gray(np.asarray(luma), 160, "brain")
        got = load_gray(sample, 160, "brain")
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2, sample


def test_a_colour_dicom_frame_is_refused(tmp_path):
    pytest.importorskip("pydicom")
    import pydicom

    from tests.helpers.dicom import write_dicom
    from tumor_runtime.imaging.dicom import DicomFrame, load_frame

    photo = np.asarray(Image.open(portrait()).convert("RGB").resize((64, 64)))
    for pixels, refused in ((photo, True), (np.repeat(photo[..., :1], 3, axis=2), False)):
        path = write_dicom(tmp_path / "us.dcm", np.zeros((64, 64), np.uint16))
        ds = pydicom.dcmread(path)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.save_as(path)
        if refused:
            with pytest.raises(ImageError, match="^a colour image"):
                load_frame(DicomFrame(path, None))
        else:
            assert load_frame(DicomFrame(path, None))[0].shape == (64, 64)


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()
