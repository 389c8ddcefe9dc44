"""Fit the out-of-distribution score (`tumor_runtime.ood`) to an exported model and store it in its metadata.

Each model file gets its own fit, from its own `features` output (the int8 file's features differ
slightly from FP32's): parameters from a seeded sample of training images, the threshold from the
validation (evaluation) images, so that `ood.PASS_SHARE` of real validation slices pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tumor_export.calibration import sample_files
from tumor_export.metadata import read_metadata, write_metadata
from tumor_runtime.contract import FEATURES_OUTPUT, INPUT_NAME
from tumor_runtime.ood import OodModel, fit, threshold_for
from tumor_runtime.preprocess import ImageError, load_gray, normalize

SAMPLE = 1024  # training images the score is fitted on (decoded in about a second)


def training_sample(folder: Path, classes: list[str], pre: dict, seed: int, exclude: set[Path]):
    """(inputs (N, 1, S, S), labels (N,)) of up to SAMPLE training images whose class folder is known."""
    images, labels = [], []
    for path in sample_files(folder, SAMPLE, seed, exclude):
        name = path.parent.name
        if name not in classes:
            continue
        try:
            images.append(load_gray(path, pre["size"], pre.get("crop", "none")))
        except (ImageError, OSError):
            continue
        labels.append(classes.index(name))
    gray = np.stack(images) if images else np.zeros((0, pre["size"], pre["size"]), np.uint8)
    return normalize(gray, pre["mean"], pre["std"]), np.asarray(labels)


def features_of(path: Path, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    from tumor_runtime.model import create_session

    session = create_session(path)
    return np.concatenate([session.run([FEATURES_OUTPUT], {INPUT_NAME: inputs[i:i + batch]})[0]
                           for i in range(0, len(inputs), batch)])


def attach(path: Path, train: tuple[np.ndarray, np.ndarray], validation: np.ndarray) -> dict:
    """Fit, set the threshold, write "ood" into `path`'s metadata; returns what the export report records."""
    inputs, labels = train
    model = fit(features_of(path, inputs), labels)
    model = OodModel.from_metadata(model.to_metadata())  # as stored (float16): the threshold must fit that
    val_features = features_of(path, validation)
    model = threshold_for(model, val_features)
    write_metadata(path, read_metadata(path) | {"ood": model.to_metadata()})
    flagged = float(model.flags(model.score(val_features)).mean())
    return {"method": "mahalanobis-ppca", "components": int(model.directions.shape[1]),
            "training_images": int(len(labels)), "validation_images": int(len(validation)),
            "threshold": model.threshold, "validation_flagged": flagged}
