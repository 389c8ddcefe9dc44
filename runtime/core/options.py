"""Argument checks shared by the Python API and the commands: no NaN, no infinity, no out-of-range.

A NaN threshold would silently turn every tumor flag off (every comparison with NaN is
False); these checks refuse it instead.
"""

from __future__ import annotations

import math
import numbers

from tumor_runtime.core.errors import OptionError

# The runtime's limits, declared once: the commands' options and the Python API both read them.
MAX_BATCH_SIZE = 4096  # images per batch (tumor-infer --batch-size, Classifier.load(batch_size=...))
MAX_UPLOAD_MB = 20.0  # tumor-serve's default request-body limit (--max-upload-mb, create_app)
UPLOAD_MB_RANGE = (0.001, 4096.0)
# Work one tumor-serve request may ask for: a 20 MB DICOM can hold 20,000 tiny frames (minutes of both cores), and
# bodies held at once bound the server's memory (each up to --max-upload-mb; the rest wait, unread).
MAX_FRAMES_PER_REQUEST = 1000
MAX_CONCURRENT_BODIES = 8


def finite_in_range(
    name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    """`value` as a float that is finite and within [low, high] (or (low, high]); ValueError otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {value!r}") from None
    below = low is not None and (number <= low if low_open else number < low)
    if not math.isfinite(number) or below or (high is not None and number > high):
        bounds = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise OptionError(f"{name} must be a finite number in {bounds}, got {value!r}")
    return number


def int_in_range(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise OptionError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)
