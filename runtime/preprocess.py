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


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit grayscale ("L"): 16-bit scaled to 0..255, alpha composited on black."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) intensities: scale the full 16-bit range onto 0..255, never clip at 255.
        arr = np.asarray(img, dtype=np.float64).clip(0, 65535) / 257.0
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
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
