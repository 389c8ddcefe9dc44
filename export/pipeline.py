"""The whole export: FP32 ONNX, checks, threshold, int8 behind the parity gate, report, manifest.

Files are built in a scratch folder inside the output folder and renamed into place only
when every check has passed, so a failed or interrupted export changes nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_export import gate
from tumor_export.calibration import ArrayReader, load_inputs, sample_files
from tumor_export.metadata import model_metadata, tool_versions, write_metadata
from tumor_export.onnx_export import INPUT_NAME, check_against_torch, export_fp32
from tumor_export.quantize import preprocess
from tumor_export.threshold import choose_threshold, screening_stats
from tumor_runtime.fileio import atomic_write_text, sha256_file
from tumor_runtime.model import MANIFEST
from tumor_train.checkpoint import load_model
from tumor_train.data import DataError, list_images

PARITY_SAMPLES = 8  # real validation inputs on which ONNX Runtime must match torch to 1e-4


@dataclass
class ExportOptions:
    checkpoint: Path = Path("artifacts/model.pth")  # model.pth written by tumor-train
    out: Path | None = None  # output folder; default: the checkpoint's folder
    int8: bool = False  # also write model.int8.onnx (static QDQ int8)
    calibration: Path | None = None  # calibration images; default: the training folder in the checkpoint
    calibration_size: int = 256  # images drawn (sorted list, fixed seed) for calibration
    calibration_method: str = "percentile"  # percentile (99.999th), minmax or entropy
    activation_type: str = "u8"  # u8 or s8 activations; weights are always per-channel s8
    eval: Path | None = None  # labelled folder DIR/<class>/ for the gate; default: the checkpoint's validation split
    max_f2_drop: float = 0.005  # the most macro F2 that int8 may lose against FP32
    seed: int = 0  # seeds the calibration sample


class GateError(Exception):
    """int8 could not meet the parity gate; nothing was written."""


def evaluation_set(opts: ExportOptions, ckpt: dict) -> tuple[list[Path], np.ndarray]:
    classes = ckpt["classes"]
    if opts.eval is not None:
        if not Path(opts.eval).is_dir():
            raise DataError(f"--eval folder {opts.eval} does not exist")
        return list_images(Path(opts.eval), classes)
    root = Path(ckpt["data"]["root"])
    files = [root / f for f in ckpt["data"]["val_files"]]
    if not files or not all(f.is_file() for f in files[:5]):
        raise DataError(f"the validation images recorded in the checkpoint are not under {root}; pass --eval DIR")
    return files, np.array([classes.index(f.parent.name) for f in files])


def calibration_inputs(opts: ExportOptions, ckpt: dict, exclude: list[Path]) -> tuple[np.ndarray, list[Path]]:
    folder = opts.calibration or Path(ckpt["data"]["train_dir"])
    if not Path(folder).is_dir():
        raise DataError(f"calibration folder {folder} does not exist; pass --calibration DIR")
    pre = ckpt["preprocess"]
    files = sample_files(Path(folder), opts.calibration_size, opts.seed, {p.resolve() for p in exclude})
    return load_inputs(files, pre["size"], pre["mean"], pre["std"]), files


def run_export(opts: ExportOptions, log=print) -> dict:
    """Export (and with opts.int8 quantize); returns the report written to export_report.json."""
    tic = time.perf_counter()
    model, ckpt = load_model(opts.checkpoint)
    out = Path(opts.out or Path(opts.checkpoint).parent)
    out.mkdir(parents=True, exist_ok=True)
    classes, pre = ckpt["classes"], ckpt["preprocess"]
    eval_files, labels = evaluation_set(opts, ckpt)
    eval_inputs = load_inputs(eval_files, pre["size"], pre["mean"], pre["std"])
    if len(eval_inputs) != len(labels):
        raise DataError("some evaluation images could not be read")
    is_tumor = labels != classes.index(ckpt["negative_class"])
    report = {"checkpoint": str(opts.checkpoint), "arch": ckpt["arch"], "classes": classes,
              "evaluation": {"source": str(opts.eval or "validation split in checkpoint"), "images": len(labels)},
              "versions": tool_versions()}
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as scratch:
        scratch = Path(scratch)
        fp32_path = scratch / "model.onnx"
        log("Exporting FP32 ONNX ...")
        export_fp32(model, pre["size"], fp32_path)
        report["torch_parity_max_abs_diff"] = check_against_torch(fp32_path, model, eval_inputs[:PARITY_SAMPLES])
        fp32 = gate.score(fp32_path, eval_inputs, labels, classes)
        threshold = choose_threshold(1 - fp32.probabilities[:, classes.index(ckpt["negative_class"])], is_tumor)
        meta = model_metadata(ckpt, threshold)
        write_metadata(fp32_path, meta | {"precision": "fp32"})
        report["fp32"] = summary(fp32, is_tumor, threshold, classes, ckpt)
        report["tumor_threshold"] = threshold
        written = {"model.onnx": fp32_path}
        if opts.int8:
            written["model.int8.onnx"] = quantize(opts, ckpt, scratch, fp32, eval_inputs, labels, eval_files,
                                                  meta, report, is_tumor, log)
        for name, path in written.items():
            report.setdefault("files", {})[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for name, path in written.items():
            os.replace(path, out / name)  # same folder: each rename is atomic
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    manifest["files"].update({name: info["sha256"] for name, info in report["files"].items()})
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    report["seconds"] = round(time.perf_counter() - tic, 2)
    atomic_write_text(out / "export_report.json", json.dumps(report, indent=2))
    return report


def summary(scored: gate.Scored, is_tumor: np.ndarray, threshold: float, classes: list[str], ckpt: dict) -> dict:
    tumor_p = 1 - scored.probabilities[:, classes.index(ckpt["negative_class"])]
    return {"f2_macro": scored.f2, "accuracy": scored.summary["accuracy"],
            "tumor_sensitivity": scored.summary["tumor_sensitivity"],
            "confusion_matrix": scored.summary["confusion_matrix"],
            "screening": screening_stats(tumor_p, is_tumor, threshold)}


def quantize(opts: ExportOptions, ckpt: dict, scratch: Path, fp32: gate.Scored, eval_inputs: np.ndarray,
             labels: np.ndarray, eval_files: list[Path], meta: dict, report: dict, is_tumor, log) -> Path:
    """Calibrate, quantize behind the gate and return the int8 path in `scratch`; GateError if it fails."""
    classes = ckpt["classes"]
    calib, calib_files = calibration_inputs(opts, ckpt, eval_files)
    log(f"Calibrating int8 ({opts.calibration_method}, {opts.activation_type}) on {len(calib)} images ...")
    prepared, int8_path = scratch / "model.pre.onnx", scratch / "model.int8.onnx"
    preprocess(scratch / "model.onnx", prepared)
    int8, kept, trials = gate.quantize_with_gate(prepared, int8_path, ArrayReader(calib, INPUT_NAME), fp32,
                                                 eval_inputs, labels, classes, opts.max_f2_drop,
                                                 opts.calibration_method, opts.activation_type, log=log)
    report["calibration"] = {"folder": str(opts.calibration or ckpt["data"]["train_dir"]), "images": len(calib),
                             "seed": opts.seed, "method": opts.calibration_method,
                             "activation_type": opts.activation_type, "weight_type": "s8 per-channel",
                             "format": "QDQ", "first_files": [str(f) for f in calib_files[:3]]}
    report["int8"] = summary(int8, is_tumor, report["tumor_threshold"], classes, ckpt)
    report["parity"] = {"f2_drop": fp32.f2 - int8.f2, "max_f2_drop": opts.max_f2_drop,
                        "top1_agreement": gate.agreement(fp32, int8),
                        "max_probability_diff": float(np.abs(fp32.probabilities - int8.probabilities).max()),
                        "nodes_kept_float": kept, "trials": trials}
    if fp32.f2 - int8.f2 > opts.max_f2_drop:
        raise GateError(f"int8 macro F2 {int8.f2:.4f} is {fp32.f2 - int8.f2:.4f} below FP32 {fp32.f2:.4f} "
                        f"(allowed {opts.max_f2_drop}) even with {len(kept)} layers in float; nothing written")
    write_metadata(int8_path, meta | {"precision": "int8", "calibration": json.dumps(report["calibration"])})
    return int8_path
