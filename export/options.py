"""`tumor-export`'s options, as one dataclass that the command fills from click and the pipeline reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tumor_runtime.core import scoring
from tumor_runtime.core.errors import OptionError
from tumor_runtime.core.options import finite_in_range, int_in_range


@dataclass
class ExportOptions:
    checkpoint: Path  # model.pth written by tumor-train
    out: Path | None = None  # output folder; default: the checkpoint's folder
    int8: bool = False  # also write model.int8.onnx (static QDQ int8)
    calibration: Path | None = None  # calibration images; default: the training folder in the checkpoint
    calibration_size: int = 256  # images drawn (sorted list, fixed seed) for calibration
    calibration_method: str = "percentile"  # percentile (99.999th), minmax or entropy
    activation_type: str = "u8"  # u8 or s8 activations; weights are always per-channel s8
    eval_dir: Path | None = None  # labelled folder for the gate; default: the validation split in the checkpoint
    max_f2_drop: float = 0.005  # the most macro F2 that int8 may lose against FP32, in [0, 1]
    seed: int = 0  # seeds the calibration sample
    temperature: str | None = None  # "fit" (on held-out evaluation images) or a number
    cv: Path | None = None  # the recipe's --cv run: temperature, tumor and OOD thresholds from its held-out images

    def check(self) -> None:
        """ValueError for options that would silently disable a check (NaN or negative allowed drop)."""
        finite_in_range("--max-f2-drop", self.max_f2_drop, 0.0, 1.0)
        if self.cv is not None and self.temperature is not None:
            raise OptionError("--cv fits the temperature on its out-of-fold predictions: give --cv or --temperature")
        if self.temperature not in (None, "fit"):
            try:
                value = float(self.temperature)
            except ValueError:
                raise OptionError(f"--temperature must be fit or a number, got {self.temperature!r}") from None
            finite_in_range("--temperature", value, *scoring.TEMPERATURE_RANGE)
        int_in_range("--calibration-size", self.calibration_size, 1, 1_000_000)
