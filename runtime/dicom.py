"""DICOM input (the optional [dicom] extra: pydicom): files, frames, pixels to the kit's 8-bit gray.

Pixels: Rescale Slope/Intercept, then the VOI window (Window Center/Width, the first value
when several are given), or without one the rule for deep images (`preprocess.rescale_to_8bit`);
MONOCHROME1 is inverted; colour is reduced with the luma weights. Then the normal preprocessing.
A multi-frame file gives one row per frame, named `path#frame` (frames count from 1).
Transfer syntaxes: uncompressed (implicit/explicit VR, little and big endian), deflated and
RLE Lossless, which pydicom decodes itself; JPEG baseline and JPEG 2000 where Pillow's codecs
decode them. Others (JPEG-LS, JPEG lossless) get an error row naming the syntax.
Only three header fields reach the outputs, to join results back: SOP Instance UID, Series
Instance UID and Instance Number; never a patient's name or ID.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_runtime.preprocess import ImageError, rescale_to_8bit

DICOM_SUFFIXES = (".dcm", ".dicom")
MISSING_EXTRA = 'DICOM input needs the [dicom] extra: pip install "tumor-kit[dicom]"'


@dataclass(frozen=True)
class DicomFrame:
    """One frame of a DICOM file: the unit that gets a row."""

    path: Path
    frame: int | None  # 1-based frame number in a multi-frame file, None for a single frame

    def __str__(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path}#{self.frame}"


def has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_file(path: Path) -> bool:
    """`.dcm`/`.dicom` files, and files without an extension that start with the DICOM preamble."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix == "" and path.is_file() and has_dicom_preamble(path))


def available() -> bool:
    try:
        return importlib.util.find_spec("pydicom") is not None
    except (ImportError, ValueError):
        return False


def read_header(path: Path):
    """The data set with large values (the pixels) left on disk until used."""
    import pydicom

    try:
        return pydicom.dcmread(path, defer_size=4096, force=True)
    except Exception as exc:  # pydicom raises many types for a damaged file
        raise ImageError(f"not a readable DICOM file ({type(exc).__name__})") from None


def frames_of(path: Path) -> list[DicomFrame]:
    """The frames of a DICOM file; ImageError for a file without pixel data (SR, RT structure ...)."""
    if not available():
        raise ImageError(MISSING_EXTRA)
    header = read_header(path)
    if "PixelData" not in header and "FloatPixelData" not in header and "DoubleFloatPixelData" not in header:
        kind = getattr(header, "Modality", None) or getattr(header, "SOPClassUID", "unknown")
        raise ImageError(f"DICOM file without pixel data ({kind}): nothing to classify")
    count = int(getattr(header, "NumberOfFrames", 1) or 1)
    return [DicomFrame(Path(path), None)] if count == 1 else [DicomFrame(Path(path), i) for i in range(1, count + 1)]


def context(ds) -> dict:
    """The identifiers a user needs to join a row back to the study; nothing else from the header."""
    number = getattr(ds, "InstanceNumber", None)
    return {"sop_instance_uid": str(getattr(ds, "SOPInstanceUID", "")) or None,
            "series_instance_uid": str(getattr(ds, "SeriesInstanceUID", "")) or None,
            "instance_number": int(number) if number not in (None, "") else None}


def first(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def to_8bit(ds, pixels: np.ndarray) -> np.ndarray:
    """One frame's stored values (rows, cols) or (rows, cols, 3) -> uint8 gray, by the module's rule."""
    if pixels.ndim == 3:  # colour: luma weights, as for RGB images
        from PIL import Image

        rgb = pixels if pixels.dtype == np.uint8 else rescale_to_8bit(pixels)
        return np.asarray(Image.fromarray(rgb.astype(np.uint8), "RGB").convert("L"))
    slope, intercept = first(getattr(ds, "RescaleSlope", None)), first(getattr(ds, "RescaleIntercept", None))
    values = pixels
    if (slope not in (None, 1.0)) or (intercept not in (None, 0.0)):
        values = pixels.astype(np.float64) * (1.0 if slope is None else slope) + (intercept or 0.0)
    center, width = first(getattr(ds, "WindowCenter", None)), first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width > 0:
        low = center - width / 2
        gray = np.rint(np.clip((values.astype(np.float64) - low) / width, 0, 1) * 255).astype(np.uint8)
    else:
        gray = rescale_to_8bit(values)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: low values are white
    return gray


def load_frame(frame: DicomFrame) -> tuple[np.ndarray, dict]:
    """(uint8 gray (rows, cols), the row's DICOM context) for one frame; ImageError with the reason."""
    if not available():
        raise ImageError(MISSING_EXTRA)
    import pydicom

    try:
        ds = pydicom.dcmread(frame.path, force=True)
    except Exception as exc:
        raise ImageError(f"not a readable DICOM file ({type(exc).__name__})") from None
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        if "PixelData" not in ds:
            raise ImageError("DICOM file without pixel data: nothing to classify") from None
        raise ImageError(f"cannot decode the DICOM pixels (transfer syntax {name}: unsupported compression "
                         f"or damaged data, {type(exc).__name__})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[(frame.frame or 1) - 1]
    if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) < 1:
        raise ImageError(f"DICOM pixel data of shape {pixels.shape} is not an image")
    return to_8bit(ds, np.asarray(pixels)), context(ds)
