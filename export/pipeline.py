"""The whole export: FP32 ONNX, checks, threshold, int8 behind the parity gate, report, manifest.

Files are built in a scratch folder inside the output folder. The commit keeps the folder
usable at every instant (see `commit`): a failed, interrupted or killed export never
leaves a model that the manifest does not vouch for, nor one it wrongly vouches for.
Scratch folders of killed exports are removed by the next export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_export import gate, heldout
from tumor_export.calibration import (
    ArrayReader,
    CalibrationError,
    load_inputs,
    load_slices,
    sample_files,
)
from tumor_export.metadata import model_metadata, tool_versions, write_metadata
from tumor_export.onnx_export import (
    check_against_torch,
    check_onnx,
    export_fp32,
    fixed_inputs,
)
from tumor_export.static_int8 import describe_nodes, int8_convolutions, prepare_graph
from tumor_runtime.core import scoring
from tumor_runtime.core.contract import EXPORT_REPORT, FP32_MODEL, INPUT_NAME, INT8_MODEL, MODEL_FILES
from tumor_runtime.core.errors import EXIT_PARTIAL, KitError, OptionError, OutputError
from tumor_runtime.core.fileio import atomic_write_text, sha256_file
from tumor_runtime.core.options import finite_in_range, int_in_range
from tumor_runtime.imaging.listing import class_of
from tumor_runtime.imaging.transform import normalize
from tumor_runtime.model.manifest import commit
from tumor_train.data import DataError
from tumor_train.model_file import load_model

PARITY_SAMPLES = 8  # inputs on which ONNX Runtime must match torch to 1e-4
SCRATCH_PREFIX = ".export-"


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


class GateError(KitError):
    """int8 could not meet the parity gate; nothing was written."""

    exit_code = EXIT_PARTIAL  # the work ran and the int8 model failed its check


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


def remove_stale_scratch(out: Path, log) -> None:
    """Scratch folders left by killed exports (their process is gone) are deleted."""
    for folder in out.glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name[len(SCRATCH_PREFIX) :].split("-")[0]
        if folder.is_dir() and not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            log(f"Removed {folder.name}, left by an interrupted export")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_scratch(out: Path) -> tempfile.TemporaryDirectory:
    """The scratch folder, created before any work so that an unwritable output folder fails first."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(dir=out, prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None


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
    classes, pre = ckpt["classes"], ckpt["preprocess"]
    labelled = evaluation_set(opts, ckpt, required=opts.int8)
    # required=True for int8: evaluation_set raises rather than give None. Calibration errors come first.
    calibration = calibration_inputs(opts, ckpt, labelled[0]) if opts.int8 and labelled is not None else None
    if opts.cv is not None and labelled is None:
        raise DataError("--cv needs labelled evaluation images too (the checkpoint's validation split or --eval)")
    held_out = heldout.measure(Path(opts.cv), ckpt, scratch, opts.seed, log) if opts.cv is not None else None
    report = {
        "checkpoint": str(opts.checkpoint),
        "arch": ckpt["arch"],
        "classes": classes,
        "versions": tool_versions(),
        "fp32": None,
    }
    fp32_path = scratch / FP32_MODEL
    log("Exporting FP32 ONNX ...")
    report["cam_output"] = export_fp32(model, pre["size"], fp32_path)
    if not report["cam_output"]:
        log(f"{ckpt['arch']} has no global-average-pool head: exported without the 'cam' heat-map output")
    if labelled is None:
        log("No evaluation images at hand: FP32 checked against torch on fixed inputs, not scored.")
        report["evaluation"] = None
        parity_inputs, threshold = (
            fixed_inputs(pre["size"], PARITY_SAMPLES),
            ckpt.get("tumor_threshold", scoring.MAX_THRESHOLD),
        )
    else:
        eval_files, labels = labelled
        eval_slices = load_slices(eval_files, pre["size"], pre.get("crop", "none"))  # uint8, decoded once
        if len(eval_slices) != len(labels):
            raise DataError(
                f"{len(labels) - len(eval_slices)} of the {len(labels)} evaluation images could not be read"
            )
        eval_inputs = normalize(eval_slices, pre["mean"], pre["std"])
        report["evaluation"] = {"source": str(opts.eval_dir or "validation split in checkpoint"), "images": len(labels)}
        parity_inputs = eval_inputs[:PARITY_SAMPLES]
    report["torch_parity_max_abs_diff"] = check_against_torch(fp32_path, model, parity_inputs)
    if labelled is not None:
        fp32 = gate.score(fp32_path, eval_inputs, labels, classes)
        # Temperature and tumor threshold: on held-out predictions when a --cv run gives them, else these images'.
        probabilities, truth = (held_out.probabilities, held_out.labels) if held_out else (fp32.probabilities, labels)
        report["temperature"] = temperature_of(opts, ckpt, probabilities, truth)
        calibrated_p = scoring.calibrated(probabilities, report["temperature"]["value"])
        tumor_p = scoring.tumor_probability(calibrated_p, classes, ckpt["negative_class"])
        threshold = scoring.choose_threshold(tumor_p, is_tumor(truth, ckpt))  # on what the runtime gives: calibrated
        if held_out:
            report["held_out"] = held_out.report() | {
                "screening": scoring.screening_stats(tumor_p, is_tumor(truth, ckpt), threshold)
            }
        report["fp32"] = summary(fp32, labels, threshold, ckpt, report["temperature"]["value"])
    elif opts.temperature is not None:
        raise DataError("--temperature needs labelled evaluation images (the checkpoint's validation split or --eval)")
    meta = model_metadata(ckpt, threshold)
    if report.get("temperature") and report["temperature"]["value"] != 1.0:
        meta["temperature"] = repr(report["temperature"]["value"])
    write_metadata(fp32_path, meta | {"precision": "fp32"})
    report["tumor_threshold"] = threshold
    if opts.int8:
        assert calibration is not None  # made above for every int8 export
        quantize(opts, ckpt, scratch, fp32, eval_inputs, labels, calibration, meta, report, log)
    validation = None if labelled is None else (labelled[0], eval_slices)
    margins = held_out.margins if held_out else None
    report["ood"] = out_of_distribution(scratch, opts, ckpt, validation, margins, log) if report["cam_output"] else None
    report["files"] = {
        name: {"bytes": (scratch / name).stat().st_size, "sha256": sha256_file(scratch / name)}
        for name in MODEL_FILES
        if (scratch / name).is_file()
    }
    return report


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
