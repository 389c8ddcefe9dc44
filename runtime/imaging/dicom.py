"""DICOM input (the optional [dicom] extra: pydicom): files, frames, pixels to the kit's 8-bit gray.

Pixels, by pydicom's own functions: the Modality LUT (Rescale Slope/Intercept or the Modality
LUT Sequence), then the VOI LUT (the VOI LUT Sequence, or the first Window Center/Width with
its VOILUTFunction) mapped onto 0..255 by the LUT's own output range, or without either the
rule for deep images (`decode.rescale_to_8bit`); MONOCHROME1 is inverted; PALETTE COLOR
goes through its palette; colour is reduced with the luma weights. Then the normal preprocessing.
A multi-frame file gives one row per frame, named `path#frame` (frames count from 1); each
frame is decoded on its own (not the whole file per frame), and a NumberOfFrames that the
pixel data cannot hold is one error row for the file.
Transfer syntaxes: uncompressed (implicit/explicit VR, little and big endian), deflated and
RLE Lossless, which pydicom decodes itself; JPEG baseline and JPEG 2000 where Pillow's codecs
decode them. Others (JPEG-LS, JPEG lossless) get an error row naming the syntax.
Only three header fields reach the outputs, to join results back: SOP Instance UID, Series
Instance UID and Instance Number; never a patient's name or ID.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_runtime.core.errors import ImageError
from tumor_runtime.core.system import installed, missing_extra
from tumor_runtime.imaging.colour import refuse_colour
from tumor_runtime.imaging.decode import refuse_costly_decode, refuse_too_many_pixels, rescale_to_8bit

MISSING_EXTRA = missing_extra("DICOM input", "dicom")


@dataclass(frozen=True)
class DicomFrame:
    """One frame of a DICOM file: the unit that gets a row."""

    path: Path
    frame: int | None  # 1-based frame number in a multi-frame file, None for a single frame

    def __str__(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path}#{self.frame}"


def read_header(path: Path):
    """The data set with large values (the pixels) left on disk until used."""
    import pydicom

    try:
        return pydicom.dcmread(path, defer_size=4096, force=True)
    except Exception as exc:  # pydicom raises many types for a damaged file
        raise ImageError(f"not a readable DICOM file ({type(exc).__name__})") from None


def frames_of(path: Path) -> list[DicomFrame]:
    """The frames of a DICOM file; ImageError for a file without pixel data (SR, RT structure ...) or a
    frame count that is not one the pixel data holds."""
    if not installed("pydicom"):
        raise ImageError(MISSING_EXTRA)
    from tumor_runtime.imaging.decode import require_regular_file

    require_regular_file(Path(path))
    header = read_header(path)
    require_pixel_data(header)
    count = frame_count(header)
    return [DicomFrame(Path(path), None)] if count == 1 else [DicomFrame(Path(path), i) for i in range(1, count + 1)]


def require_pixel_data(header) -> None:
    """ImageError unless the data set has integer pixel data, the kind MR slices are stored in."""
    if "PixelData" in header:
        return
    if "FloatPixelData" in header or "DoubleFloatPixelData" in header:
        raise ImageError("DICOM float pixel data (a parametric map, not an MR slice) is not supported")
    kind = getattr(header, "Modality", None) or getattr(header, "SOPClassUID", None)
    raise ImageError(f"DICOM file without pixel data{f' ({kind})' if kind else ''}: nothing to classify")


def frame_count(header) -> int:
    """NumberOfFrames, checked against what the pixel data can hold (a lying header would list
    millions of frames from a few bytes)."""
    raw = getattr(header, "NumberOfFrames", None)
    try:
        count = 1 if raw in (None, "") else int(raw)
    except (TypeError, ValueError):
        raise ImageError(f"DICOM NumberOfFrames {raw!r} is not a number") from None
    if count < 1:
        raise ImageError(f"DICOM NumberOfFrames is {count}: not a frame count")
    if count > 1 and count > frames_held(header):
        raise ImageError(
            f"DICOM NumberOfFrames says {count}, but the pixel data holds at most {frames_held(header)} frame(s)"
        )
    return count


def frames_held(header) -> int:
    """How many frames the pixel data can hold: its length over one frame's bytes (native), or its
    fragments (compressed: every frame has at least one)."""
    element = header.get_item("PixelData")
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if element is None:
        return 1
    if syntax is not None and syntax.is_compressed:
        from pydicom.encaps import parse_basic_offsets, parse_fragments

        try:
            buffer = io.BytesIO(header.PixelData)
            parse_basic_offsets(buffer)  # the first item is the offset table, not a fragment
            return max(1, parse_fragments(buffer)[0])
        except Exception:  # damaged encapsulation: the decoder will say so for the first frame
            return 1
    length = element.length if hasattr(element, "length") else len(element.value or b"")
    try:
        bits = (
            int(header.Rows)
            * int(header.Columns)
            * int(getattr(header, "SamplesPerPixel", 1) or 1)
            * int(header.BitsAllocated)
        )
    except (AttributeError, TypeError, ValueError):
        return 1
    return (8 * int(length)) // bits if bits > 0 else 1


def context(ds) -> dict:
    """The identifiers a user needs to join a row back to the study; nothing else from the header."""
    return {
        "sop_instance_uid": str(getattr(ds, "SOPInstanceUID", "")) or None,
        "series_instance_uid": str(getattr(ds, "SeriesInstanceUID", "")) or None,
        "instance_number": instance_number(ds),
    }


def instance_number(ds) -> int | None:
    """InstanceNumber as an integer; None when absent or malformed (a header field to join rows back by must not
    turn a readable image into an error row)."""
    try:
        value = getattr(ds, "InstanceNumber", None)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError, OverflowError, AttributeError):  # "abc", "1.5e3", a multi-value, a bad tag
        return None


def first(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def rescale_number(ds, keyword: str) -> float | None:
    """RescaleSlope or RescaleIntercept as one finite number, None where the file has none; ImageError for text,
    several values or a non-finite one, which pydicom would hand to numpy (an error naming a numpy type)."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    values = [value] if isinstance(value, str | bytes) or not hasattr(value, "__len__") else list(value)
    if len(values) != 1:
        raise ImageError(f"DICOM {keyword} holds {len(values)} values, not one number")
    try:
        number = float(values[0])
    except (TypeError, ValueError):
        raise ImageError(f"DICOM {keyword} is {str(values[0]).strip()!r}, not a number") from None
    if not np.isfinite(number):
        raise ImageError(f"DICOM {keyword} is {number}, not a finite number")
    return number


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) of any depth -> uint8 gray with the luma weights, as for RGB images."""
    from PIL import Image

    if rgb.dtype != np.uint8:
        rgb = np.rint(rgb.astype(np.float64) / 257).clip(0, 255) if rgb.dtype == np.uint16 else rescale_to_8bit(rgb)
    rgb = rgb.astype(np.uint8)
    refuse_colour(rgb)  # an ultrasound or a screenshot in colour is not an MRI slice
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))


def has_voi(ds) -> bool:
    """A VOI LUT Sequence, or a usable window; ImageError for a window that is not finite and positive."""
    if "VOILUTSequence" in ds:
        return True
    center, width = first(getattr(ds, "WindowCenter", None)), first(getattr(ds, "WindowWidth", None))
    if center is None or width is None:
        return False
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise ImageError(f"DICOM VOI window is not usable (center {center}, width {width})")
    return True


def voi_to_8bit(values: np.ndarray, ds) -> np.ndarray:
    """pydicom's VOI LUT or window, then its output range (found by applying it to the extremes) onto 0..255."""
    from pydicom.pixels import apply_voi_lut

    out = apply_voi_lut(values, ds, index=0).astype(np.float64)
    extremes = np.array([np.finfo(np.float32).min, 0.0, np.finfo(np.float32).max], np.float64)
    if np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(values.dtype)
        extremes = np.array([info.min, 0, info.max], dtype=values.dtype)
    ends = apply_voi_lut(extremes, ds, index=0).astype(np.float64)
    low, high = float(ends.min()), float(ends.max())
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low or not np.isfinite(out).all():
        raise ImageError("DICOM VOI LUT gives no usable range of values")
    return np.rint((out - low) * (255.0 / (high - low))).clip(0, 255).astype(np.uint8)


def voi_gray(values: np.ndarray, ds) -> np.ndarray:
    try:
        return voi_to_8bit(values, ds)
    except ImageError:
        raise
    except Exception as exc:  # a damaged VOI LUT Sequence, as for the Modality LUT
        raise ImageError(f"DICOM VOI LUT cannot be applied ({type(exc).__name__})") from None


def to_8bit(ds, pixels: np.ndarray) -> np.ndarray:
    """One frame's stored values (rows, cols) or (rows, cols, 3) -> uint8 gray, by the module's rule."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR" and pixels.ndim == 2:
        try:
            return rgb_to_gray(apply_color_lut(pixels, ds))
        except Exception as exc:
            raise ImageError(f"DICOM palette cannot be applied ({type(exc).__name__})") from None
    if pixels.ndim == 3:
        return rgb_to_gray(pixels)
    if rescale_number(ds, "RescaleSlope") == 0:
        raise ImageError("DICOM RescaleSlope is 0.0: every pixel would map to one value")
    rescale_number(ds, "RescaleIntercept")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, without numpy's words
            values = apply_modality_lut(pixels, ds)
    except Exception as exc:  # a damaged Modality LUT Sequence (an item without LUTDescriptor or LUTData)
        raise ImageError(f"DICOM Modality LUT cannot be applied ({type(exc).__name__})") from None
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ImageError("DICOM rescale gives values that are not finite")
    gray = voi_gray(values, ds) if has_voi(ds) else rescale_to_8bit(values)
    if photometric == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: low values are white
    return gray


def single_frame_gray(path: Path) -> np.ndarray:
    """uint8 gray of a one-frame DICOM file, for the stages that take one image per file (training,
    calibration, export's --eval); ImageError for a multi-frame file, whose frames only tumor-infer lists."""
    frames = frames_of(Path(path))
    if len(frames) != 1:
        raise ImageError(
            f"multi-frame DICOM ({len(frames)} frames): training and calibration take one image per "
            "file; tumor-infer and --evaluate classify every frame"
        )
    return load_frame(frames[0])[0]


def check_frame_size(ds) -> None:
    """ImageError before a frame is decoded when it is larger than the kit decodes (`decode.MAX_PIXELS`), or its
    pixels, rescaled through float64 to 8 bits, would take more than `decode.MAX_DECODE_BYTES`: a small
    compressed file can hold a huge frame, and the upload limit bounds only its bytes."""
    try:
        pixels = int(ds.Rows) * int(ds.Columns)
        stored = int(getattr(ds, "SamplesPerPixel", 1) or 1) * max(1, int(getattr(ds, "BitsAllocated", 16)) // 8)
    except (AttributeError, TypeError, ValueError):
        return  # pydicom's decoder reports a header that does not say
    refuse_too_many_pixels(int(ds.Rows), int(ds.Columns))
    refuse_costly_decode(int(ds.Rows), int(ds.Columns), pixels * (stored + 16))  # samples, float64 and a temporary


def load_frame(frame: DicomFrame) -> tuple[np.ndarray, dict]:
    """(uint8 gray (rows, cols), the row's DICOM context) for one frame; ImageError with the reason."""
    if not installed("pydicom"):
        raise ImageError(MISSING_EXTRA)
    from pydicom.pixels import pixel_array

    ds = read_header(frame.path)
    require_pixel_data(ds)
    check_frame_size(ds)
    try:
        # Only this frame is read and decoded: a 400-frame file costs 400 frames, not 400 files.
        with open(frame.path, "rb") as fh:
            pixels = pixel_array(fh, index=(frame.frame or 1) - 1)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise ImageError(
            f"cannot decode the DICOM pixels (transfer syntax {name}: unsupported compression "
            f"or damaged data, {type(exc).__name__})"
        ) from None
    if pixels.ndim == 3 and pixels.shape[0] == 1 and int(getattr(ds, "SamplesPerPixel", 1) or 1) == 1:
        pixels = pixels[0]
    if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) < 1:
        raise ImageError(f"DICOM pixel data of shape {pixels.shape} is not an image")
    return to_8bit(ds, np.asarray(pixels)), context(ds)
