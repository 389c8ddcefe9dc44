"""Fit the out-of-distribution score (`tumor_runtime.model.ood`) to an exported model and store it in its metadata.

Each model file gets its own fit, from its own `features` output (the int8 file's features differ
slightly from FP32's): parameters from a seeded sample of training images, the thresholds from the
validation (evaluation) images, so that `ood.PASS_SHARE` of real validation slices pass each. With a --cv
run of the recipe (`tumor_export.heldout`), the thresholds are set for unseen slices instead: its margins
times the distances of other images the model trained on (`trained_sample`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tumor_export.calibration import CalibrationError, load_slices, sample_files
from tumor_export.metadata import read_metadata, write_metadata
from tumor_runtime.core.contract import FEATURES_OUTPUT, INPUT_NAME
from tumor_runtime.core.errors import ImageError
from tumor_runtime.imaging.descriptors import image_descriptors
from tumor_runtime.imaging.listing import class_of
from tumor_runtime.imaging.transform import load_gray, normalize
from tumor_runtime.model.ood import fit_ood, with_thresholds

SAMPLE = 1024  # training images the score is fitted on (decoded in about a second)
TRAINED_SAMPLE = 1024  # other training images whose distances, times held-out margins, set the thresholds
TRAINED_SHARE = 0.99  # the quantile of those distances a threshold is a multiple of (about the 10th largest)


def training_sample(folder: Path, classes: list[str], pre: dict, seed: int, exclude: set[Path]):
    """(uint8 model inputs (N, S, S), labels (N,)) of up to SAMPLE training images of a known class folder."""
    images, labels = [], []
    for path in sample_files(folder, SAMPLE, seed, exclude):
        name = class_of(path.relative_to(folder), classes)
        if name is None:
            continue
        try:
            images.append(load_gray(path, pre["size"], pre.get("crop", "none")))
        except (ImageError, OSError):
            continue
        labels.append(classes.index(name))
    size = pre["size"]
    return (np.stack(images) if images else np.zeros((0, size, size), np.uint8)), np.asarray(labels)


def trained_sample(folder: Path, pre: dict, seed: int, exclude: set[Path]) -> np.ndarray:
    """uint8 inputs (N, S, S) of up to TRAINED_SAMPLE images under `folder` that `training_sample(folder, ...,
    seed, exclude)` did not draw, nor `exclude` holds: trained on, but not fitted on. A folder that the fit
    sample takes whole gives that sample (the same rule for the fold models and the final one)."""
    fitted = {p.resolve() for p in sample_files(folder, SAMPLE, seed, exclude)}  # the files training_sample read
    try:
        files = sample_files(folder, TRAINED_SAMPLE, seed + 1, exclude | fitted)
    except CalibrationError:  # nothing left besides the fit sample
        files = sample_files(folder, TRAINED_SAMPLE, seed + 1, exclude)
    return load_slices(files, pre["size"], pre.get("crop", "none"))


def measurements(path: Path, gray: np.ndarray, pre: dict, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, k) from the model at `path`, image descriptors (N, 23)) of uint8 inputs (N, S, S)."""
    from tumor_runtime.model.session import create_session

    session = create_session(path)
    features = np.concatenate(
        [
            session.run([FEATURES_OUTPUT], {INPUT_NAME: normalize(gray[i : i + batch], pre["mean"], pre["std"])})[0]
            for i in range(0, len(gray), batch)
        ]
    )
    return features, np.concatenate([image_descriptors(gray[i : i + batch]) for i in range(0, len(gray), batch)])


def attach(
    path: Path,
    train: tuple[np.ndarray, np.ndarray],
    validation: np.ndarray,
    pre: dict,
    held_out: tuple[dict[str, float], np.ndarray] | None = None,
) -> dict:
    """Fit, set the thresholds, write "ood" into `path`'s metadata; returns what the export report records.
    `held_out`: (the margins of tumor_export.heldout, `trained_sample`'s inputs): the thresholds are those
    margins times the TRAINED_SHARE quantile of the trained inputs' distances, not validation's."""
    gray, labels = train
    model = fit_ood(*measurements(path, gray, pre), labels)
    val_features, val_descriptors = measurements(path, validation, pre)
    if held_out is None:
        model = with_thresholds(model, val_features, val_descriptors)
    else:
        margins, trained = held_out
        model = with_thresholds(model, *measurements(path, trained, pre), TRAINED_SHARE, margins)
    write_metadata(path, read_metadata(path) | {"ood": model.to_metadata()})
    flagged = float(model.flags(model.score(val_features, val_descriptors)).mean())
    return {
        "method": "mahalanobis-ppca on pooled features and image descriptors",
        "training_images": int(len(labels)),
        "validation_images": int(len(validation)),
        "validation_flagged": flagged,
    }
