"""DICOM test files: written with pydicom, or pydicom's own test files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def pydicom_file(name: str) -> Path:
    path = dicom_test_files() / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this pydicom package")
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    window: tuple | None = None,
    slope_intercept: tuple | None = None,
    with_preamble: bool = True,
) -> Path:
    """A small MR data set (uncompressed) with the given pixels: (rows, cols) or (frames, rows, cols)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.InstanceNumber, ds.Modality = 7, "MR"
    ds.PatientName, ds.PatientID = "SECRET^PATIENT", "ID-424242"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if slope_intercept:
        ds.RescaleSlope, ds.RescaleIntercept = slope_intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=with_preamble)
    return path


def dicom_test_files() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"  # shipped inside the package
