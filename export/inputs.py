"""The images an export reads: the labelled evaluation set (parity gate, thresholds) and the calibration sample,
from the options or from what the checkpoint recorded of its training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tumor_export.calibration import CalibrationError, load_inputs, sample_files
from tumor_export.options import ExportOptions
from tumor_runtime.imaging.listing import class_of
from tumor_train.data import DataError


def eval_images(folder: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """--eval DIR by the kit's one labelled-folder rule (as tumor-infer --evaluate reads it)."""
    from tumor_runtime.core.errors import UsageError
    from tumor_runtime.imaging.listing import readable_labelled

    try:
        files, labels = readable_labelled(folder, classes)
    except UsageError as exc:
        raise DataError(f"--eval: {exc}") from None
    return files, np.asarray(labels)


def evaluation_set(opts: ExportOptions, ckpt: dict, required: bool) -> tuple[list[Path], np.ndarray] | None:
    """Labelled images for the gate and the threshold: --eval, else the checkpoint's validation split.
    None when neither is at hand and the export does not need them (FP32 only)."""
    classes = ckpt["classes"]
    if opts.eval_dir is not None:
        if not Path(opts.eval_dir).is_dir():
            raise DataError(f"--eval folder {opts.eval_dir} does not exist")
        return eval_images(Path(opts.eval_dir), classes)
    root = recorded_folder(ckpt, "root")
    files = [root / f for f in ckpt.get("data", {}).get("val_files", [])] if root else []
    named = [class_of(f, classes) for f in ckpt.get("data", {}).get("val_files", [])]
    if files and all(f.is_file() for f in files) and None not in named:
        return files, np.array([classes.index(name) for name in named])
    if required:
        where = f"recorded in the checkpoint is not under {root}" if files else "is not recorded in the checkpoint"
        raise DataError(
            f"--int8 needs labelled images for the parity gate and images to calibrate on; the "
            f"validation split {where}: pass --eval DIR (DIR/<class>/...) and --calibration DIR"
        )
    return None


def recorded_folder(ckpt: dict, key: str) -> Path | None:
    """A folder the checkpoint recorded under "data" ("root", "train_dir"); None if it recorded none, as older
    checkpoints (never Path(""), which would be the working directory)."""
    value = ckpt.get("data", {}).get(key)
    return Path(value) if value else None


def calibration_folder(opts: ExportOptions, ckpt: dict) -> Path | None:
    """--calibration, else the training folder the checkpoint recorded (also the OOD fit's training images)."""
    return Path(opts.calibration) if opts.calibration else recorded_folder(ckpt, "train_dir")


def relative_name(path: Path, folder: Path) -> str:
    """`path` relative to `folder` (POSIX separators), or its name alone when it lies elsewhere."""
    try:
        return Path(path).resolve().relative_to(Path(folder).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def calibration_inputs(opts: ExportOptions, ckpt: dict, exclude: list[Path]) -> tuple[np.ndarray, list[Path]]:
    folder = calibration_folder(opts, ckpt)
    if folder is None:
        raise DataError("the checkpoint records no training folder to calibrate on; pass --calibration DIR")
    if not folder.is_dir():
        raise DataError(f"calibration folder {folder} does not exist; pass --calibration DIR")
    pre = ckpt["preprocess"]
    files = sample_files(folder, opts.calibration_size, opts.seed, {p.resolve() for p in exclude})
    inputs = load_inputs(files, pre["size"], pre["mean"], pre["std"], pre.get("crop", "none"))
    if len(inputs) == 0:
        raise CalibrationError(f"none of the {len(files)} calibration images drawn from {folder} could be read")
    return inputs, files
