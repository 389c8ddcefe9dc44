"""The reproducible image sample that static quantization calibrates on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from tumor_runtime.preprocess import ImageError, is_image_file, load_gray, normalize


def sample_files(folder: Path, count: int, seed: int = 0, exclude: set[Path] = frozenset()) -> list[Path]:
    """`count` image files drawn with a fixed seed from the sorted recursive listing of `folder`."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p) and p.resolve() not in exclude)
    if not files:
        raise FileNotFoundError(f"no images under {folder}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), size=min(count, len(files)), replace=False)
    return [files[i] for i in sorted(chosen)]


def load_inputs(files: list[Path], size: int, mean: float, std: float) -> np.ndarray:
    """float32 (N, 1, size, size) model inputs; unreadable files are left out."""
    images = []
    for path in files:
        try:
            images.append(load_gray(path, size))
        except (ImageError, OSError):
            continue
    return normalize(np.stack(images), mean, std)


class ArrayReader(CalibrationDataReader):
    """Feeds pre-decoded inputs one batch at a time; `rewind` lets one sample serve many trials."""

    def __init__(self, inputs: np.ndarray, input_name: str, batch_size: int = 16):
        self.inputs, self.input_name, self.batch_size = inputs, input_name, batch_size
        self.position = 0

    def get_next(self):
        if self.position >= len(self.inputs):
            return None
        batch = self.inputs[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.position = 0
