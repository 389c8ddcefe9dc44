"""What a `tumor-train --cv` run of a model's recipe says about images its models never trained on.

A final fit trains on every image, so nothing it can be scored on is unseen: a temperature fitted on its
own images is too cold, and out-of-distribution thresholds set on them are too tight (a trained image
sits closer to its class than a new one). Each fold model of the recipe's --cv run, exported here to
FP32 ONNX exactly as the final model is, is measured on its own validation images instead:

- the pooled out-of-fold probabilities, every image of the folds once, fit the temperature and the
  tumor threshold of the final model;
- per out-of-distribution measurement, the margin: how far beyond the `ood_fit.TRAINED_SHARE` quantile of the
  distances of images the fold model trained on one must set the threshold for `HELD_OUT_SHARE` of its
  held-out slices to pass. The final model's threshold is that margin times the same quantile of its
  own trained images' distances (`ood.with_thresholds(..., margins)`), so it is set for unseen slices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_export import gate, ood_fit
from tumor_export.calibration import load_slices
from tumor_export.inputs import evaluation_set
from tumor_export.onnx_export import export_fp32
from tumor_export.ood_fit import TRAINED_SHARE
from tumor_export.options import ExportOptions
from tumor_runtime.core.contract import CV_REPORT, MODEL_FILE
from tumor_runtime.imaging.transform import normalize
from tumor_runtime.model.ood import MEASUREMENTS, fit_ood
from tumor_train.data import DataError
from tumor_train.model_file import load_model

HELD_OUT_SHARE = 0.995  # per measurement on unseen slices: together at most 1 % flagged


@dataclass
class HeldOut:
    folder: Path  # the --cv run
    probabilities: np.ndarray  # (N, C) FP32 out-of-fold softmax, every image of the folds once
    labels: np.ndarray  # (N,)
    margins: dict[str, float]  # per measurement: threshold / TRAINED_SHARE quantile of trained distances

    def report(self) -> dict:
        return {"folder": str(self.folder), "images": int(len(self.labels)), "ood_margins": self.margins}


def fold_models(folder: Path) -> list[Path]:
    """fold-<k>/model.pth of the complete --cv run in `folder`; DataError otherwise."""
    record = folder / CV_REPORT
    if not record.is_file():
        raise DataError(f"--cv {folder} holds no {CV_REPORT}: give the folder of a finished tumor-train --cv run")
    cv = json.loads(record.read_text())
    if not cv.get("complete"):
        raise DataError(f"--cv {folder}: its {CV_REPORT} is not complete; run the same tumor-train --cv command again")
    models = [folder / f"fold-{k}" / MODEL_FILE for k in range(1, cv["k"] + 1)]
    for path in models:
        if not path.is_file():
            raise DataError(f"--cv {folder}: {path} is missing")
    return models


def transform(ckpt: dict) -> dict:
    """The preprocessing, less the normalisation: each model has the mean and std of its own training images."""
    return {key: value for key, value in ckpt["preprocess"].items() if key not in ("mean", "std")}


def validation_split(path: Path, fold: dict, k: int, folder: Path) -> tuple[list[Path], np.ndarray]:
    """The files and labels of fold k's validation images, as its checkpoint at `path` recorded them."""
    try:
        labelled = evaluation_set(ExportOptions(checkpoint=path), fold, required=True)
    except DataError:  # its message is about --int8 and --eval, which a fold has nothing to do with
        raise DataError(
            f"--cv {folder}: the validation images of fold {k} are not under {fold['data'].get('root')} on this machine"
        ) from None
    assert labelled is not None  # required=True raises instead
    return labelled


def measure(folder: Path, ckpt: dict, scratch: Path, seed: int, log) -> HeldOut:
    """Export, score and measure every fold model of the --cv run in `folder` on its own validation images."""
    probabilities, labels = [], []
    ratios: dict[str, list[np.ndarray]] = {name: [] for name in MEASUREMENTS}
    for k, path in enumerate(fold_models(folder), start=1):
        model, fold = load_model(path)
        if (fold["classes"], fold["arch"], transform(fold)) != (ckpt["classes"], ckpt["arch"], transform(ckpt)):
            raise DataError(f"--cv {folder}: fold {k} has other classes, architecture or preprocessing than the model")
        files, fold_labels = validation_split(path, fold, k, folder)
        log(f"Held-out check: fold {k} of {folder} on its {len(files)} validation images ...")
        pre, onnx_path = fold["preprocess"], scratch / f"fold-{k}.onnx"
        export_fp32(model, pre["size"], onnx_path)
        slices = load_slices(files, pre["size"], pre.get("crop", "none"))
        scored = gate.score(onnx_path, normalize(slices, pre["mean"], pre["std"]), fold_labels, fold["classes"])
        probabilities.append(scored.probabilities)
        labels.append(fold_labels)
        for name, ratio in fold_ratios(onnx_path, fold, (files, slices), seed).items():
            ratios[name].append(ratio)
        onnx_path.unlink()
    margins = {name: float(np.quantile(np.concatenate(r), HELD_OUT_SHARE)) for name, r in ratios.items()}
    return HeldOut(folder, np.concatenate(probabilities), np.concatenate(labels), margins)


def fold_ratios(onnx_path: Path, fold: dict, held_out: tuple[list[Path], np.ndarray], seed: int) -> dict:
    """Per measurement, the (N,) held-out distances over the TRAINED_SHARE quantile of trained-image distances,
    with the OOD score fitted and measured as the export does it (ood_fit, same seeds).
    `held_out`: the validation files and their uint8 slices (N, S, S)."""
    pre, classes, train_dir = fold["preprocess"], fold["classes"], Path(fold["data"]["train_dir"])
    exclude = {p.resolve() for p in held_out[0]}
    gray, labels = ood_fit.training_sample(train_dir, classes, pre, seed + 1, exclude)
    ood = fit_ood(*ood_fit.measurements(onnx_path, gray, pre), labels)
    trained = ood.distances(
        *ood_fit.measurements(onnx_path, ood_fit.trained_sample(train_dir, pre, seed + 1, exclude), pre)
    )
    unseen = ood.distances(*ood_fit.measurements(onnx_path, held_out[1], pre))
    return {name: unseen[name] / np.quantile(trained[name], TRAINED_SHARE) for name in MEASUREMENTS}
