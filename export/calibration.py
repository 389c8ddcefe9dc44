"""The reproducible image sample that static quantization calibrates on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from tumor_runtime.core.errors import ImageError, KitError
from tumor_runtime.imaging.formats import SUPPORTED_FILES
from tumor_runtime.imaging.listing import images_in
from tumor_runtime.imaging.transform import load_gray, normalize

MAX_CALIBRATION_BATCH = 16


class CalibrationError(KitError):
    """No usable calibration images; reported in one line."""


def sample_files(folder: Path, count: int, seed: int, exclude: frozenset[Path] | set[Path] = frozenset()) -> list[Path]:
    """`count` image files drawn with a fixed seed from the sorted recursive listing of `folder`."""
    listed = images_in(Path(folder), recursive=True)
    files = sorted(p for p in listed if p.resolve() not in exclude)
    if listed and not files:
        raise CalibrationError(
            f"every image under {folder} is an evaluation image, and calibrating on the images "
            "that judge the int8 model would flatter it: pass a --calibration folder other than "
            "--eval (for example the training images)"
        )
    if not files:
        raise CalibrationError(f"no calibration images {SUPPORTED_FILES} under {folder}; pass --calibration DIR")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), size=min(count, len(files)), replace=False)
    return [files[i] for i in sorted(chosen)]


def load_slices(files: list[Path], size: int, crop: str) -> np.ndarray:
    """uint8 (N, size, size) slices as the model sees them; unreadable files are left out (N may be 0)."""
    images = []
    for path in files:
        try:
            images.append(load_gray(path, size, crop))
        except (ImageError, OSError):
            continue
    return np.stack(images) if images else np.zeros((0, size, size), np.uint8)


def load_inputs(files: list[Path], size: int, mean: float, std: float, crop: str) -> np.ndarray:
    """float32 (N, 1, size, size) model inputs; unreadable files are left out (N may be 0)."""
    return normalize(load_slices(files, size, crop), mean, std)


def batch_size_for(count: int, largest: int = MAX_CALIBRATION_BATCH) -> int:
    """The largest batch size <= `largest` that divides `count`: ONNX Runtime's histogram collectors
    (percentile, entropy) stack per-batch outputs and fail on a short last batch."""
    return next(b for b in range(min(largest, max(count, 1)), 0, -1) if count % b == 0)


class ArrayReader(CalibrationDataReader):
    """Feeds pre-decoded inputs in equal batches; `rewind` lets one sample serve many trials."""

    def __init__(self, inputs: np.ndarray, input_name: str, batch_size: int | None = None):
        if len(inputs) == 0:
            raise CalibrationError("none of the calibration images could be read")
        self.inputs, self.input_name = inputs, input_name
        self.batch_size = batch_size or batch_size_for(len(inputs))
        self.position = 0

    def get_next(self):
        if self.position >= len(self.inputs):
            return None
        batch = self.inputs[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.position = 0
