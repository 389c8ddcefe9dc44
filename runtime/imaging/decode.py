"""Decode a file, bytes or array into a PIL image safely: regular files only, size and decoded-memory limits
before the pixels are read, one frame, EXIF orientation, and any mode to 8-bit gray (deep images by their white
point). Damaged input is an `ImageError` with the reason, never a crash."""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tumor_runtime.core.errors import ImageError
from tumor_runtime.imaging.colour import SAMPLE_SIDE, refuse_colour

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 50_000_000
# Refuse images whose decoding would take more memory than this (an upload's bytes do not bound it: a 343 KB
# deflated 7000x7000 float TIFF took 2.3 GB), counted before the pixels are decoded (`decode_cost`).
MAX_DECODE_BYTES = 256 * 2**20
# Bytes per pixel of each PIL mode once decoded, and what the conversion to 8-bit gray adds per pixel: deep
# images are rescaled through float64 (`rescale_to_8bit`: the values and a temporary), the others in place.
MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "I;16": 2,
    "I;16L": 2,
    "I;16B": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBX": 4,
    "RGBa": 4,
    "CMYK": 4,
    "I": 4,
    "F": 4,
}
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


HOT_PIXEL_PERCENTILE = 99.9  # above this rank, a maximum more than twice as bright is a hot pixel or a marker
HOT_PIXEL_FALLBACK = 99.99  # where the 99.9th percentile is still background (a tiny bright object)
BIT_DEPTHS = (8, 10, 12, 14, 16, 20, 24, 31)
EMPTY_FILE = "empty file"  # the error row of a file (or upload) of no bytes


def white_point(values: np.ndarray, integer: bool) -> float:
    """The value that maps to 255.

    The brightest pixel sets it, unless fewer than 0.1 % of the pixels are brighter than half
    of it (hot pixels, or a burned-in marker: a 3x3 one is 0.014 % of a 256 x 256 slice): then the
    99.9th percentile does (the 99.99th where that is still the black background). Integer images are
    then scaled by the smallest bit depth that holds it (8, 10, 12, 14, 16 ... bits), because MRI
    exports store 12-bit data in 16 bits: the same slice stored as 8-bit, 12-in-16 or full
    16-bit gives the same pixels (to rounding) and the same answer. Float images use the value.
    """
    brightest = float(values.max())
    typical = float(np.percentile(values, HOT_PIXEL_PERCENTILE, method="higher"))
    if typical <= 0:
        typical = float(np.percentile(values, HOT_PIXEL_FALLBACK, method="higher"))
    white = typical if typical < brightest / 2 else brightest
    if integer:
        return float(next((2**bits - 1 for bits in BIT_DEPTHS if white <= 2**bits - 1), white))
    return white


def rescale_to_8bit(values: np.ndarray) -> np.ndarray:
    """Deep intensities (16-bit, 32-bit, float) -> uint8: [min(0, darkest), white_point] onto 0..255, clipped.
    Zero stays black (the MRI background)."""
    arr = np.asarray(values)
    integer = np.issubdtype(arr.dtype, np.integer)
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, np.uint8)
    low = min(0.0, float(finite.min()))
    high = white_point(finite, integer)
    if high <= low:
        return np.zeros(arr.shape, np.uint8)
    span = high - low
    shifted = np.nan_to_num(arr, nan=low, posinf=high, neginf=low) - low
    with np.errstate(over="ignore"):
        factor = 255.0 / span
    # A denormal span (factor inf: 0 * inf is NaN) or one past the float range: divide instead.
    scaled = shifted * factor if np.isfinite(factor) and np.isfinite(span) else shifted / span * 255.0
    return np.rint(scaled.clip(0, 255)).astype(np.uint8)


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit grayscale ("L"): deep images rescaled by `rescale_to_8bit`, alpha composited on black."""
    if img.mode == "L":
        return img
    if img.mode in DEEP_MODES:
        return Image.fromarray(rescale_to_8bit(np.asarray(img)))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "YCbCr":  # a colour JPEG as `open_image` decodes it: its gray is its Y plane
        refuse_colourful(img)
        return img.convert("L")
    rgb = img if img.mode == "RGB" else img.convert("RGB")  # RGB, CMYK, P, ...
    refuse_colourful(rgb)
    return rgb.convert("L")


def refuse_colourful(img: Image.Image) -> None:
    """ImageError if an RGB or YCbCr image is colourful: an MRI slice is not (`colour`). Measured on a sample of
    SAMPLE_SIDE x SAMPLE_SIDE pixels (cheap), in RGB."""
    side = min(img.width, img.height, SAMPLE_SIDE)
    sample = img.resize((side, side), Image.Resampling.NEAREST)
    refuse_colour(np.asarray(sample if sample.mode == "RGB" else sample.convert("RGB")))


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("FIFO", "character device", ...): those are never read."""
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def require_regular_file(path: Path) -> None:
    """ImageError for a FIFO, a device or a socket (a FIFO blocks a reader forever, /dev/zero never ends)."""
    kind = file_kind(path.stat().st_mode)
    if kind is not None:
        raise ImageError(f"not a regular file ({kind})")


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes held in memory (an upload), with the name its row gets."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


def decode_cost(mode: str, pixels: int) -> int:
    """Bytes that decoding an image of this PIL mode and size and turning it into 8-bit gray takes at its peak."""
    return pixels * (MODE_BYTES.get(mode, 8) + (16 if mode in DEEP_MODES else 1))


def refuse_too_many_pixels(width: int, height: int) -> None:
    """ImageError for a frame over MAX_PIXELS (decompression bombs), before it is decoded: PIL images and DICOM."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"image too large ({width}x{height} pixels, limit {MAX_PIXELS})")


def refuse_costly_decode(width: int, height: int, cost: int, kind: str = "") -> None:
    """ImageError when decoding a frame would take `cost` bytes, over MAX_DECODE_BYTES. `kind`: "<mode> " or ""."""
    if cost > MAX_DECODE_BYTES:
        raise ImageError(
            f"image too large to decode ({width}x{height} {kind}pixels need about {cost / 2**20:,.0f} MB, "
            f"limit {MAX_DECODE_BYTES / 2**20:,.0f} MB)"
        )


def open_image(path: str | os.PathLike | EncodedImage, size: int | None = None) -> Image.Image:
    """Open and fully decode an image file (or its bytes in memory), refusing empty files, non-images,
    bombs and multi-frame files.

    JPEGs are decoded straight to grayscale and, with `size`, at the smallest DCT scale that is
    still at least `size` pixels (PIL's draft mode): about twice as fast.
    """
    source: io.BytesIO | Path
    if isinstance(path, EncodedImage):
        source = io.BytesIO(path.data)
        if not path.data:
            raise ImageError(EMPTY_FILE)
    else:
        source = Path(path)
        require_regular_file(source)
        if source.stat().st_size == 0:
            raise ImageError(EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            img = Image.open(source)
    except Image.DecompressionBombError:
        raise ImageError(f"image too large (over {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels)") from None
    except Exception as exc:  # PIL raises several unrelated types for "not an image"
        raise ImageError(f"not a readable image ({type(exc).__name__})") from None
    with img:
        refuse_too_many_pixels(img.width, img.height)
        try:
            frames = getattr(img, "n_frames", 1)  # a TIFF walks its directories here: a damaged one raises
        except Exception as exc:
            raise ImageError(f"corrupt or truncated image ({exc})") from None
        if frames > 1:  # multi-page TIFF, animated GIF/APNG: classifying only the first frame would be silent
            raise ImageError(f"{img.format} with {frames} frames: save each slice as its own image")
        if img.format == "JPEG" and img.mode in ("L", "RGB", "YCbCr"):
            # At the smallest DCT scale still at least `size` when one is given (PIL's draft mode). A colour
            # JPEG is decoded in YCbCr, not straight to its luma (twice as fast), so that a photo is refused;
            # its Y plane is that luma to the bit (RGB converted to gray differed on 66 of 3,236 colour slices).
            img.draft("L" if img.mode == "L" else "YCbCr", (size, size) if size is not None else img.size)
        refuse_costly_decode(img.width, img.height, decode_cost(img.mode, img.width * img.height), f"{img.mode} ")
        try:
            img.load()
            # EXIF Orientation: a phone or a viewer may store the slice rotated and say so in a tag. A JPEG's
            # EXIF block is read at open, so one without it has no tag (parsing for nothing cost 30 us a slice).
            has_exif = img.format != "JPEG" or "exif" in img.info
            upright = ImageOps.exif_transpose(img) if has_exif else img
        except Exception as exc:
            raise ImageError(f"corrupt or truncated image ({exc})") from None
        if upright.mode == "P":
            return upright.convert("RGBA" if "transparency" in img.info else "RGB")
        # Leaving `with` closes the file, not the decoded pixels; only a memory-mapped file (raw BMP, TIFF)
        # is copied, so that a file changed later cannot change (or crash) the image.
        return upright.copy() if upright is img and getattr(img, "map", None) is not None else upright


def checked_array(array: np.ndarray) -> np.ndarray:
    """An array the API was given, if it can be a slice: 2-D (H, W) or (H, W, 1..4), with a finite value."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(f"not an image: an array of shape {array.shape} (give (H, W) or (H, W, channels))")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if np.issubdtype(array.dtype, np.floating) and array.size and not np.isfinite(array).any():
        raise ImageError("no finite pixel value (all NaN or infinite)")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    return array
