"""The one deterministic image transform of the kit: decode, grayscale, (brain crop), resize, normalise.

Training caches `load_gray` output and normalises with `normalize`; the runtime calls the
same two functions, driven by the model's metadata, so both sides see identical pixels.
Models exported with `crop: brain` in their metadata first cut the slice to the square
around the head (`brain_box`); older models keep the plain resize.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_runtime.core.contract import CROPS
from tumor_runtime.core.errors import ImageError, OptionError
from tumor_runtime.imaging.decode import (
    EncodedImage,
    checked_array,
    open_image,
    to_gray,
)

# Refuse images whose short side is below this: a 1x5000 strip or a 4x4 icon is not a slice (the data is 224 px).
MIN_SIDE = 32
RESIZE_METHOD = "pil-bilinear"

# Brain crop: a pixel is "head" above this share of the slice's bright level (its 99th percentile),
# and never below BRAIN_MIN_LEVEL (JPEG noise in a black border reaches a few levels).
BRAIN_LEVEL = 0.1
BRAIN_MIN_LEVEL = 10
BRAIN_LINE_SHARE = 0.02  # a row/column counts only if this share of it is head: isolated specks do not
BRAIN_MIN_SIDE = 0.25  # a box smaller than this share of the frame's short side is a speck, not a head: no crop
BRAIN_MARGIN = 0.04  # added around the box, as a share of its long side
BRAIN_GAP_SHARE = 0.03  # dark rows/columns inside the head (up to this share of the side) do not split it


def _head_span(counts: np.ndarray, minimum: float) -> tuple[tuple[int, int] | None, int]:
    """(first and last index (inclusive) of the run that holds the head, how many runs there were): the run of
    counts reaching `minimum` (gaps of up to BRAIN_GAP_SHARE of the side bridged) with the most head pixels;
    (None, 0) if no count does. A bright frame border, a corner label or a line of burned-in text is a run of
    its own, apart from the head, so it no longer stretches the box to the whole frame."""
    hits = np.flatnonzero(counts >= minimum)
    if not hits.size:
        return None, 0
    breaks = np.flatnonzero(np.diff(hits) > BRAIN_GAP_SHARE * len(counts) + 1)
    if not breaks.size:  # one run, as in most slices: no more work
        return (int(hits[0]), int(hits[-1])), 1
    starts = np.concatenate((hits[:1], hits[breaks + 1]))
    ends = np.concatenate((hits[breaks], hits[-1:]))
    total = np.cumsum(counts)
    best = int(np.argmax(total[ends] - total[starts] + counts[starts]))  # the run with the most head pixels
    return (int(starts[best]), int(ends[best])), len(starts)


def brain_box(gray: np.ndarray, histogram: list[int] | None = None) -> tuple[int, int, int, int] | None:
    """The square (left, top, right, bottom) around the head of a uint8 slice (H, W), or None: keep the frame.

    Head pixels are those above max(BRAIN_MIN_LEVEL, BRAIN_LEVEL x the 99th percentile level); rows and
    columns with fewer than BRAIN_LINE_SHARE of head pixels are border (noise, text, specks). The
    box grows by BRAIN_MARGIN and is squared around its centre; it may reach past the frame (black
    padding). None for a blank or constant slice, a box below BRAIN_MIN_SIDE of the frame (a speck),
    or a box that already covers the frame. `histogram`: the 256 counts of `gray`, if at hand (PIL's is
    twice as fast as numpy's).
    """
    h, w = gray.shape
    counts = np.bincount(gray.ravel(), minlength=256) if histogram is None else histogram
    bright = int(np.searchsorted(np.cumsum(counts), 0.99 * gray.size))  # the 99th percentile level
    # The head mask as float32: its row and column counts are matrix-vector products (BLAS), exact to 2**24.
    mask = (gray > max(BRAIN_MIN_LEVEL, BRAIN_LEVEL * bright)).astype(np.float32)
    row_min, col_min = max(1.0, BRAIN_LINE_SHARE * w), max(1.0, BRAIN_LINE_SHARE * h)
    rows, _ = _head_span(mask @ np.ones(w, np.float32), row_min)
    if rows is None:
        return None
    # Columns counted within the head's rows, then rows within its columns: a label beside the head in one
    # direction is a separate run in the other.
    cols, _ = _head_span(np.ones(rows[1] - rows[0] + 1, np.float32) @ mask[rows[0] : rows[1] + 1], col_min)
    if cols is None:
        return None
    rows = _head_span(mask[:, cols[0] : cols[1] + 1] @ np.ones(cols[1] - cols[0] + 1, np.float32), row_min)[0] or rows
    box_h, box_w = rows[1] - rows[0] + 1, cols[1] - cols[0] + 1
    if max(box_h, box_w) < BRAIN_MIN_SIDE * min(h, w):
        return None
    side = int(round(max(box_h, box_w) * (1 + 2 * BRAIN_MARGIN)))
    if side >= max(h, w) and h == w:
        return None  # the head fills a square frame: the crop would be the frame itself
    left = (cols[0] + cols[1] + 1 - side) // 2
    top = (rows[0] + rows[1] + 1 - side) // 2
    return left, top, left + side, top + side


def check_content(gray: Image.Image, histogram: list[int] | None = None) -> None:
    """Refuse what cannot be a slice: a side below MIN_SIDE, or one gray level everywhere (blank, or a
    DICOM whose rescale or window maps every pixel to one value). `histogram`: `gray`'s, if at hand."""
    if min(gray.size) < MIN_SIDE:
        raise ImageError(f"image too small ({gray.width}x{gray.height} pixels; the minimum is {MIN_SIDE} on each side)")
    if histogram is None:
        low, high = gray.getextrema()
    else:  # the first and last level with a pixel: a quarter of the cost of a second pass over the pixels
        levels = np.flatnonzero(histogram)
        low, high = int(levels[0]), int(levels[-1])
    if low == high:
        raise ImageError(f"constant image (every pixel is {low}): nothing to classify")


MAX_INPUT_SIZE = 4096  # the largest model input side the runtime accepts


def check_transform(size: int, mean: float, std: float, crop: str) -> None:
    """The transform's parameters as a model records them (its metadata, or a checkpoint's preprocessing record):
    OptionError unless this runtime can apply them. The one rule that export, training and the runtime share."""
    if not 0 < size <= MAX_INPUT_SIZE:
        raise OptionError(f"input_size {size} is not in 1..{MAX_INPUT_SIZE}")
    if crop not in CROPS:
        raise OptionError(
            f"asks for crop {crop!r}, which this runtime does not know ({', '.join(CROPS)}): upgrade tumor-kit"
        )
    if not (math.isfinite(mean) and math.isfinite(std) and 0 <= mean <= 1 and 0 < std <= 1):
        raise OptionError(
            f"mean {mean} / std {std} is invalid (pixels are scaled to [0, 1]: the mean must be "
            "in [0, 1] and the std in (0, 1])"
        )


def load_gray(source, size: int, crop: str = "none") -> np.ndarray:
    """Path, PIL image or array -> uint8 array (size, size): grayscale, optional brain crop, PIL bilinear resize."""
    if crop not in CROPS:
        raise OptionError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")
    if isinstance(source, np.ndarray):
        img = Image.fromarray(checked_array(source))
    elif isinstance(source, Image.Image):
        img = source
    else:
        from tumor_runtime.imaging.dicom import single_frame_gray
        from tumor_runtime.imaging.formats import (
            is_dicom_file,  # one file rule for every stage
        )

        if not isinstance(source, EncodedImage) and is_dicom_file(Path(source)):
            img = Image.fromarray(single_frame_gray(Path(source)))
        else:  # draft decoding shrinks by the frame; a crop needs the full frame's detail
            img = open_image(source, size if crop == "none" else None)
    gray = to_gray(img)
    histogram = gray.histogram() if crop == "brain" else None
    check_content(gray, histogram)
    box = brain_box(np.asarray(gray), histogram) if crop == "brain" else None
    if box is not None:
        gray = gray.crop(box)  # parts outside the frame come back black
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def normalize(gray: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (..., H, W) -> float32 (..., 1, H, W) scaled to [0, 1] then standardised."""
    x = gray.astype(np.float32)[..., None, :, :] / np.float32(255.0)
    return (x - np.float32(mean)) / np.float32(std)
