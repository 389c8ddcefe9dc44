"""DICOM pixel rules that a wrong order or a missing branch would break silently."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydicom")

from tests.helpers import write_dicom  # noqa: E402
from tumor_runtime.dicom import DicomFrame, load_frame  # noqa: E402


def ramp() -> np.ndarray:
    return (np.arange(64 * 64).reshape(64, 64) % 1000).astype(np.uint16)


def test_monochrome1_is_inverted_with_a_window_too(tmp_path):
    values = ramp()
    window = ("500", "1000")
    mono2 = load_frame(DicomFrame(write_dicom(tmp_path / "a.dcm", values, window=window, bits_stored=12), None))[0]
    mono1 = load_frame(DicomFrame(write_dicom(tmp_path / "b.dcm", values, "MONOCHROME1", window=window,
                                              bits_stored=12), None))[0]
    assert np.array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_rescale_is_slope_then_intercept(tmp_path):
    values = ramp()
    # stored v -> 2 v + 100; a window over [100, 2100] then maps v linearly onto 0..255
    path = write_dicom(tmp_path / "r.dcm", values, window=("1100", "2000"), slope_intercept=("2", "100"), bits_stored=12)
    expected = np.clip((2.0 * values + 100 - 100) / 2000, 0, 1) * 255
    assert np.abs(load_frame(DicomFrame(path, None))[0].astype(float) - expected).max() <= 1.5
