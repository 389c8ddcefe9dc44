"""The whole export: FP32 ONNX, checks, threshold, int8 behind the parity gate, report, manifest.

Files are built in a scratch folder inside the output folder. The commit keeps the folder
usable at every instant (see `commit`): a failed, interrupted or killed export never
leaves a model that the manifest does not vouch for, nor one it wrongly vouches for.
Scratch folders of killed exports are removed by the next export.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_export import gate, heldout
from tumor_export.calibration import (
    ArrayReader,
    load_slices,
)
from tumor_export.inputs import calibration_folder, calibration_inputs, evaluation_set, relative_name
from tumor_export.metadata import model_metadata, tool_versions, write_metadata
from tumor_export.onnx_export import (
    check_against_torch,
    check_onnx,
    export_fp32,
    fixed_inputs,
)
from tumor_export.options import ExportOptions
from tumor_export.scratch import open_scratch, remove_stale_scratch
from tumor_export.static_int8 import describe_nodes, int8_convolutions, prepare_graph
from tumor_runtime.core import scoring
from tumor_runtime.core.contract import EXPORT_REPORT, FP32_MODEL, INPUT_NAME, INT8_MODEL, MODEL_FILES
from tumor_runtime.core.errors import EXIT_PARTIAL, KitError
from tumor_runtime.core.fileio import atomic_write_text, sha256_file
from tumor_runtime.imaging.transform import normalize
from tumor_runtime.model.manifest import commit
from tumor_train.data import DataError
from tumor_train.model_file import load_model

PARITY_SAMPLES = 8  # inputs on which ONNX Runtime must match torch to 1e-4


class GateError(KitError):
    """int8 could not meet the parity gate; nothing was written."""

    exit_code = EXIT_PARTIAL  # the work ran and the int8 model failed its check


def run_export(opts: ExportOptions, log=print) -> dict:
    """Export (and with opts.int8 quantize); returns the report written to export_report.json."""
    tic = time.perf_counter()
    opts.check()
    model, ckpt = load_model(opts.checkpoint)
    out = Path(opts.out or Path(opts.checkpoint).parent)
    with open_scratch(out) as scratch:
        remove_stale_scratch(out, log)
        report = export_into(Path(scratch), opts, model, ckpt, log)
        commit(
            out,
            {name: Path(scratch) / name for name in report["files"]},
            stale=[] if opts.int8 else [INT8_MODEL],
            log=log,
        )
    report["seconds"] = round(time.perf_counter() - tic, 2)
    atomic_write_text(out / EXPORT_REPORT, json.dumps(report, indent=2))
    return report


def export_into(scratch: Path, opts: ExportOptions, model, ckpt: dict, log) -> dict:
    """Build model.onnx (and model.int8.onnx) in `scratch`, every check passed; returns the report."""
    pre = ckpt["preprocess"]
    labelled = evaluation_set(opts, ckpt, required=opts.int8)
    # required=True for int8: evaluation_set raises rather than give None. Calibration errors come first.
    calibration = calibration_inputs(opts, ckpt, labelled[0]) if opts.int8 and labelled is not None else None
    if labelled is None and opts.cv is not None:
        raise DataError("--cv needs labelled evaluation images too (the checkpoint's validation split or --eval)")
    if labelled is None and opts.temperature is not None:
        raise DataError("--temperature needs labelled evaluation images (the checkpoint's validation split or --eval)")
    held_out = heldout.measure(Path(opts.cv), ckpt, scratch, opts.seed, log) if opts.cv is not None else None
    report = {
        "checkpoint": str(opts.checkpoint),
        "arch": ckpt["arch"],
        "classes": ckpt["classes"],
        "versions": tool_versions(),
        "fp32": None,
    }
    fp32_path = scratch / FP32_MODEL
    log("Exporting FP32 ONNX ...")
    report["cam_output"] = export_fp32(model, pre["size"], fp32_path)
    if not report["cam_output"]:
        log(f"{ckpt['arch']} has no global-average-pool head: exported without the 'cam' heat-map output")
    evaluation = read_evaluation(labelled, pre) if labelled is not None else None
    if evaluation is None:
        log("No evaluation images at hand: FP32 checked against torch on fixed inputs, not scored.")
    source = str(opts.eval_dir or "validation split in checkpoint")
    report["evaluation"] = None if evaluation is None else {"source": source, "images": len(evaluation.labels)}
    parity_inputs = evaluation.inputs[:PARITY_SAMPLES] if evaluation else fixed_inputs(pre["size"], PARITY_SAMPLES)
    report["torch_parity_max_abs_diff"] = check_against_torch(fp32_path, model, parity_inputs)
    threshold, fp32 = ckpt.get("tumor_threshold", scoring.MAX_THRESHOLD), None
    if evaluation is not None:
        fp32 = gate.score(fp32_path, evaluation.inputs, evaluation.labels, ckpt["classes"])
        threshold = confidence_and_threshold(opts, ckpt, fp32, evaluation.labels, held_out, report)
    meta = model_metadata(ckpt, threshold)
    if report.get("temperature") and report["temperature"]["value"] != 1.0:
        meta["temperature"] = repr(report["temperature"]["value"])
    write_metadata(fp32_path, meta | {"precision": "fp32"})
    report["tumor_threshold"] = threshold
    if opts.int8:
        assert calibration is not None and evaluation is not None and fp32 is not None  # int8 requires them
        quantize(opts, ckpt, scratch, fp32, evaluation.inputs, evaluation.labels, calibration, meta, report, log)
    validation = None if evaluation is None else (evaluation.files, evaluation.slices)
    margins = held_out.margins if held_out else None
    report["ood"] = out_of_distribution(scratch, opts, ckpt, validation, margins, log) if report["cam_output"] else None
    report["files"] = {
        name: {"bytes": (scratch / name).stat().st_size, "sha256": sha256_file(scratch / name)}
        for name in MODEL_FILES
        if (scratch / name).is_file()
    }
    return report


@dataclass(frozen=True)
class Evaluation:
    """The labelled evaluation images, decoded once: the parity gate, the threshold and the OOD check use them."""

    files: list[Path]
    labels: np.ndarray  # (N,) class indices
    slices: np.ndarray  # uint8 (N, S, S), the runtime's transform
    inputs: np.ndarray  # float32 (N, 1, S, S), normalised


def read_evaluation(labelled: tuple[list[Path], np.ndarray], pre: dict) -> Evaluation:
    """DataError unless every evaluation image can be read: a score over fewer images would not say so."""
    files, labels = labelled
    slices = load_slices(files, pre["size"], pre.get("crop", "none"))
    if len(slices) != len(labels):
        raise DataError(f"{len(labels) - len(slices)} of the {len(labels)} evaluation images could not be read")
    return Evaluation(files, labels, slices, normalize(slices, pre["mean"], pre["std"]))


def confidence_and_threshold(
    opts: ExportOptions, ckpt: dict, fp32: gate.Scored, labels: np.ndarray, held_out, report: dict
) -> float:
    """The temperature and the tumor threshold, on held-out predictions when a --cv run gives them, else on the
    evaluation images'; records them (and FP32's summary) in `report` and returns the threshold."""
    probabilities, truth = (held_out.probabilities, held_out.labels) if held_out else (fp32.probabilities, labels)
    report["temperature"] = temperature_of(opts, ckpt, probabilities, truth)
    calibrated_p = scoring.calibrated(probabilities, report["temperature"]["value"])
    tumor_p = scoring.tumor_probability(calibrated_p, ckpt["classes"], ckpt["negative_class"])
    threshold = scoring.choose_threshold(tumor_p, is_tumor(truth, ckpt))  # on what the runtime gives: calibrated
    if held_out:
        screening = scoring.screening_stats(tumor_p, is_tumor(truth, ckpt), threshold)
        report["held_out"] = held_out.report() | {"screening": screening}
    report["fp32"] = summary(fp32, labels, threshold, ckpt, report["temperature"]["value"])
    return threshold


def out_of_distribution(
    scratch: Path,
    opts: ExportOptions,
    ckpt: dict,
    validation: tuple[list[Path], np.ndarray] | None,
    margins: dict[str, float] | None,
    log,
) -> dict | None:
    """Fit the out-of-distribution score into each model file (tumor_export.ood_fit); None, said in the log,
    without training and validation images at hand (the models then carry no flag, as older exports).
    `validation`: (the evaluation files, their uint8 slices (N, S, S)); the files are left out of training.
    `margins`: from a --cv run (tumor_export.heldout): the thresholds are set for unseen slices."""
    from tumor_export import ood_fit

    folder = calibration_folder(opts, ckpt)
    if validation is None or folder is None or not folder.is_dir():
        log("No training and validation images at hand: exported without the out-of-distribution flag.")
        return None
    log("Fitting the out-of-distribution score ...")
    exclude = {p.resolve() for p in validation[0]}
    train = ood_fit.training_sample(folder, ckpt["classes"], ckpt["preprocess"], opts.seed + 1, exclude)
    if len(train[1]) < 2 * len(ckpt["classes"]):
        log(f"Only {len(train[1])} training images under {folder}: exported without the out-of-distribution flag.")
        return None
    trained = ood_fit.trained_sample(folder, ckpt["preprocess"], opts.seed + 1, exclude) if margins else None
    held_out = (margins, trained) if margins and trained is not None else None
    return {
        name: ood_fit.attach(scratch / name, train, validation[1], ckpt["preprocess"], held_out)
        for name in MODEL_FILES
        if (scratch / name).is_file()
    }


def is_tumor(labels: np.ndarray, ckpt: dict) -> np.ndarray:
    return np.asarray(labels) != ckpt["classes"].index(ckpt["negative_class"])


def temperature_of(opts: ExportOptions, ckpt: dict, probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """The temperature to store, and the calibration error before and after it on `probabilities` (N, C): the
    --cv run's out-of-fold predictions, else the evaluation images'. "fit" fits it on the evaluation images, so
    those must be images the model never trained on: not a final fit's own split."""
    if opts.cv is not None:
        value = scoring.fit_temperature(probabilities, labels)
        source = f"fitted on the out-of-fold predictions of the {len(labels)} images of {opts.cv}"
    elif opts.temperature is None:
        value, source = 1.0, "none"
    elif opts.temperature == "fit":
        if opts.eval_dir is None and ckpt.get("data", {}).get("final_fit"):
            raise DataError(
                "--temperature fit needs images the model never trained on: a final fit has none; "
                "give --cv DIR, the tumor-train --cv run of its recipe, or --eval DIR"
            )
        value, source = scoring.fit_temperature(probabilities, labels), "fitted on the evaluation images"
    else:
        value, source = float(opts.temperature), "given"
    return {
        "value": value,
        "source": source,
        "ece_before": scoring.expected_calibration_error(probabilities, labels),
        "ece_after": scoring.expected_calibration_error(scoring.calibrated(probabilities, value), labels),
    }


def summary(scored: gate.Scored, labels: np.ndarray, threshold: float, ckpt: dict, temperature: float = 1.0) -> dict:
    probabilities = scoring.calibrated(scored.probabilities, temperature)  # what the runtime will give
    tumor_p = scoring.tumor_probability(probabilities, ckpt["classes"], ckpt["negative_class"])
    return {
        "f2_macro": scored.f2,
        "accuracy": scored.summary["accuracy"],
        "tumor_sensitivity": scored.summary["tumor_sensitivity"],
        "confusion_matrix": scored.summary["confusion_matrix"],
        "screening": scoring.screening_stats(tumor_p, is_tumor(labels, ckpt), threshold),
    }


def quantize(
    opts: ExportOptions,
    ckpt: dict,
    scratch: Path,
    fp32: gate.Scored,
    eval_inputs: np.ndarray,
    labels: np.ndarray,
    calibration: tuple[np.ndarray, list[Path]],
    meta: dict,
    report: dict,
    log,
) -> None:
    """Calibrate and quantize behind the gate into scratch/model.int8.onnx; GateError if it fails."""
    calib, calib_files = calibration
    log(f"Calibrating int8 ({opts.calibration_method}, {opts.activation_type}) on {len(calib)} images ...")
    prepared, int8_path = scratch / "model.pre.onnx", scratch / INT8_MODEL  # the first: a scratch file
    prepare_graph(scratch / FP32_MODEL, prepared)
    int8, kept, trials = gate.quantize_with_gate(
        prepared,
        int8_path,
        ArrayReader(calib, INPUT_NAME),
        fp32,
        gate.Evaluation(eval_inputs, labels, ckpt["classes"]),
        gate.GateSettings(opts.max_f2_drop, opts.calibration_method, opts.activation_type),
        log=log,
    )
    report["int8_kernels"] = int8_convolutions(int8_path, prepared, kept)
    kept_labels = [describe_nodes(prepared)[n] for n in kept]
    prepared.unlink()
    folder = calibration_folder(opts, ckpt)
    assert folder is not None  # the calibration images were drawn from it
    # Names only, relative to the calibration folder: the model's metadata travels, the build machine's paths do not.
    report["calibration"] = {
        "folder": folder.name,
        "images": len(calib),
        "seed": opts.seed,
        "method": opts.calibration_method,
        "activation_type": opts.activation_type,
        "weight_type": "s8 per-channel",
        "format": "QDQ",
        "first_files": [relative_name(f, folder) for f in calib_files[:3]],
    }
    report["int8"] = summary(int8, labels, report["tumor_threshold"], ckpt, report["temperature"]["value"])
    report["parity"] = {
        "f2_drop": fp32.f2 - int8.f2,
        "max_f2_drop": opts.max_f2_drop,
        "top1_agreement": gate.agreement(fp32, int8),
        "max_probability_diff": float(np.abs(fp32.probabilities - int8.probabilities).max()),
        "nodes_kept_float": kept,
        "layers_kept_float": kept_labels,
        "trials": trials,
    }
    if fp32.f2 - int8.f2 > opts.max_f2_drop:
        int8_path.unlink()
        raise GateError(
            f"int8 macro F2 {int8.f2:.4f} is {fp32.f2 - int8.f2:.4f} below FP32 {fp32.f2:.4f} "
            f"(allowed {opts.max_f2_drop}) even with {len(kept)} layers in float; nothing written"
        )
    check_onnx(int8_path)
    write_metadata(int8_path, meta | {"precision": "int8", "calibration": json.dumps(report["calibration"])})
