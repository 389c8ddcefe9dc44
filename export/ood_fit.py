"""Fit the out-of-distribution score (`tumor_runtime.model.ood`) to an exported model and store it in its metadata.

Each model file gets its own fit, from its own `features` output (the int8 file's features differ
slightly from FP32's): parameters from a seeded sample of training images, the thresholds from the
validation (evaluation) images, so that `ood.PASS_SHARE` of real validation slices pass each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tumor_export.calibration import sample_files
from tumor_export.metadata import read_metadata, write_metadata
from tumor_runtime.core.contract import FEATURES_OUTPUT, INPUT_NAME
from tumor_runtime.core.errors import ImageError
from tumor_runtime.imaging.descriptors import image_descriptors
from tumor_runtime.imaging.listing import class_of
from tumor_runtime.imaging.transform import load_gray, normalize
from tumor_runtime.model.ood import fit_ood, with_thresholds

SAMPLE = 1024  # training images the score is fitted on (decoded in about a second)


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


def attach(path: Path, train: tuple[np.ndarray, np.ndarray], validation: np.ndarray, pre: dict) -> dict:
    """Fit, set the thresholds, write "ood" into `path`'s metadata; returns what the export report records."""
    gray, labels = train
    model = fit_ood(*measurements(path, gray, pre), labels)
    val_features, val_descriptors = measurements(path, validation, pre)
    model = with_thresholds(model, val_features, val_descriptors)
    write_metadata(path, read_metadata(path) | {"ood": model.to_metadata()})
    flagged = float(model.flags(model.score(val_features, val_descriptors)).mean())
    return {
        "method": "mahalanobis-ppca on pooled features and image descriptors",
        "training_images": int(len(labels)),
        "validation_images": int(len(validation)),
        "validation_flagged": flagged,
    }
