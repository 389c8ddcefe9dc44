"""The one deterministic image transform of the kit: decode, grayscale, resize, normalise.

Training caches `load_gray` output and normalises with `normalize`; the runtime calls the
same two functions, driven by the model's metadata, so both sides see identical pixels.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 50_000_000
RESIZE_METHOD = "pil-bilinear"


class ImageError(ValueError):
    """An input that cannot be turned into a model input; the message names the reason."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


HOT_PIXEL_PERCENTILE = 99.99  # above this rank, a maximum more than twice as bright is a hot pixel
BIT_DEPTHS = (8, 10, 12, 14, 16, 20, 24, 31)


def white_point(values: np.ndarray, integer: bool) -> float:
    """The value that maps to 255.

    The brightest pixel sets it, unless fewer than 0.01 % of the pixels are brighter than half
    of it (isolated hot pixels): then the 99.99th percentile does. Integer images are then
    scaled by the smallest bit depth that holds it (8, 10, 12, 14, 16 ... bits), because MRI
    exports store 12-bit data in 16 bits: the same slice stored as 8-bit, 12-in-16 or full
    16-bit gives the same pixels (to rounding) and the same answer. Float images use the value.
    """
    brightest = float(values.max())
    typical = float(np.percentile(values, HOT_PIXEL_PERCENTILE, method="higher"))
    white = typical if typical < brightest / 2 else brightest
    if integer:
        return float(next((2 ** bits - 1 for bits in BIT_DEPTHS if white <= 2 ** bits - 1), white))
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
    scaled = (np.nan_to_num(arr, nan=low, posinf=high, neginf=low) - low) * (255.0 / (high - low))
    return np.rint(scaled.clip(0, 255)).astype(np.uint8)


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit grayscale ("L"): deep images rescaled by `rescale_to_8bit`, alpha composited on black."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(rescale_to_8bit(np.asarray(img)))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    if img.mode == "1":
        return img.convert("L")
    return img.convert("RGB").convert("L")  # RGB, CMYK, YCbCr, P, ...


def open_image(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """Open and fully decode an image file, refusing empty files, non-images and bombs.

    With `size`, JPEGs are decoded straight to grayscale, at the smallest DCT scale that is
    still at least `size` pixels (PIL's draft mode): about twice as fast, same pixels here.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            img = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageError(f"image too large (over {2 * Image.MAX_IMAGE_PIXELS} pixels)") from None
    except Exception as exc:  # PIL raises several unrelated types for "not an image"
        raise ImageError(f"not a readable image ({type(exc).__name__})") from None
    with img:
        if img.width * img.height > MAX_PIXELS:
            raise ImageError(f"image too large ({img.width}x{img.height} pixels, limit {MAX_PIXELS})")
        if size is not None and img.format == "JPEG" and img.mode in ("L", "RGB", "YCbCr"):
            img.draft("L", (size, size))
        try:
            img.load()
        except Exception as exc:
            raise ImageError(f"corrupt or truncated image ({exc})") from None
        return img.copy() if img.mode != "P" else img.convert("RGBA" if "transparency" in img.info else "RGB")


def load_gray(source, size: int) -> np.ndarray:
    """Path, PIL image or array -> uint8 array (size, size): grayscale, PIL bilinear resize."""
    if isinstance(source, np.ndarray):
        img = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        img = source
    else:
        img = open_image(source, size)
    gray = to_gray(img)
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def normalize(gray: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (..., H, W) -> float32 (..., 1, H, W) scaled to [0, 1] then standardised."""
    x = gray.astype(np.float32)[..., None, :, :] / np.float32(255.0)
    return (x - np.float32(mean)) / np.float32(std)
