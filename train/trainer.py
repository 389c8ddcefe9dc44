"""A full training run: data -> model -> epochs with checkpoints -> model.pth and reports.

The loop's parts (schedule, EMA, resumable state, `train_one_epoch`) are in `engine`; the
data preparation is in `data`. Everything that could fail after training (folders,
file names, classes) is checked before the first epoch, and the weights of a finished
run are in checkpoint.pth before any output is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tumor_runtime.core import provenance
from tumor_runtime.core.contract import (
    EXPORT_REPORT,
    FP32_MODEL,
    HISTORY,
    INT8_MODEL,
    MANIFEST,
    METRICS,
    MODEL_FILE,
    QUANTIZED_FILE,
    RESUME_FILE,
)
from tumor_runtime.core.errors import OutputError
from tumor_runtime.core.fileio import atomic_write_text
from tumor_runtime.core.scoring import NEGATIVE_CLASS
from tumor_runtime.core.signals import Terminated
from tumor_runtime.imaging.transform import RESIZE_METHOD
from tumor_train import plots
from tumor_train.config import TrainConfig
from tumor_train.data import ImageSet, PreparedData, pixel_stats, prepare_data
from tumor_train.distributed import Placement, setup, teardown
from tumor_train.dynamic_int8 import save_quantized
from tumor_train.engine import TrainingState, cpu_has_native_bf16, cpu_state, evaluate, train_one_epoch
from tumor_train.model_file import FORMAT, CheckpointError, save_atomic
from tumor_train.models import count_parameters, model_args_for

CHECKPOINT = RESUME_FILE  # resumable state, rewritten atomically after every epoch


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during training; the message says where the last checkpoint is (if any)."""

    def __init__(self, message: str, terminated: bool = False):
        super().__init__(message)
        self.terminated = terminated


def versions() -> dict:
    from tumor_runtime.core.system import tool_versions

    return tool_versions("torch")


def check_writable(out: Path) -> None:
    """Create `out` and a file in it now, not after an hour of training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None


LOCK = ".tumor-train.lock"


@contextlib.contextmanager
def lock_output(out: Path, enabled: bool = True):
    """One run per output folder: a second tumor-train on the same --out stops at once (an advisory lock that
    the operating system drops when the process ends, however it ends)."""
    if not enabled:
        yield
        return
    import fcntl

    with open(out / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"another tumor-train is writing to {out}: wait for it to end, or choose another --out"
            ) from None
        try:
            yield
        finally:
            (out / LOCK).unlink(missing_ok=True)  # the folder keeps only the run's outputs


def run_epoch(
    cfg: TrainConfig,
    state: TrainingState,
    tensors: dict,
    classes: list[str],
    stats: tuple[float, float],
    bf16: bool,
    epoch: int,
) -> dict:
    """Train one epoch, validate the weight average; returns the history row. `tensors` holds the
    uint8 images and labels of both splits, already on the training device."""
    tic = time.perf_counter()
    steps = math.ceil(len(tensors["train_labels"]) / cfg.batch_size)
    with tqdm(
        total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, disable=not state.place.is_main
    ) as bar:
        fit = train_one_epoch(state, tensors["train_images"], tensors["train_labels"], stats, cfg, bf16, classes, bar)
    seconds = time.perf_counter() - tic
    row = {
        "epoch": epoch,
        "lr": state.scheduler.get_last_lr()[0],
        "train_loss": fit["loss"],
        "train_accuracy": fit["accuracy"],
        "train_f2": fit["f2"],
        "val_loss": None,
        "val_accuracy": None,
        "val_f2": None,
        "seconds": seconds,
    }
    if len(tensors["val_labels"]):  # a final fit has no validation split
        val_stats, _ = evaluate(state.ema.module, tensors["val_images"], tensors["val_labels"], *stats, classes)
        row |= {"val_loss": val_stats["loss"], "val_accuracy": val_stats["accuracy"], "val_f2": val_stats["f2_macro"]}
    if state.place.is_main:
        val_text = (
            "no validation (final fit)"
            if row["val_f2"] is None
            else f"validation (EMA) loss {row['val_loss']:.4f} F2 {row['val_f2']:.4f}"
        )
        tqdm.write(f"epoch {epoch}: train loss {fit['loss']:.4f} F2 {fit['f2']:.4f} | {val_text} | {seconds:.1f}s")
    return row


def train_epochs(
    cfg: TrainConfig, state: TrainingState, data: PreparedData, stats, bf16: bool, start: int, history: list, best: dict
) -> dict:
    """Epochs start+1 .. cfg.epochs, a checkpoint after each (rank 0); returns the best epoch's record."""
    out, epoch, device = Path(cfg.out), start, state.place.device
    tensors = {
        "train_images": torch.from_numpy(data.train.images).to(device),
        "train_labels": torch.from_numpy(data.train.labels).to(device),
        "val_images": torch.from_numpy(data.val.images).to(device),
        "val_labels": torch.from_numpy(data.val.labels),
    }
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            history.append(run_epoch(cfg, state, tensors, data.classes, stats, bf16, epoch))
            # The best validation F2 (the same decision on every rank); a final fit keeps the last epoch.
            if history[-1]["val_f2"] is None or history[-1]["val_f2"] > best["f2"]:
                weights = cpu_state(state.ema.module.state_dict())
                best = {"epoch": epoch, "f2": history[-1]["val_f2"] or -1.0, "state_dict": weights}
            if state.place.is_main:
                save_checkpoint(state.checkpoint(cfg, epoch, history, best, data.classes), out / CHECKPOINT, epoch)
    except KeyboardInterrupt as exc:
        saved = (
            (
                f"the checkpoint after epoch {epoch - 1} is in {out / CHECKPOINT}: continue with "
                f"tumor-train --out {out} --resume"
            )
            if epoch > 1
            else "no checkpoint was written yet (none is saved before epoch 1 ends)"
        )
        raise Interrupted(f"interrupted in epoch {epoch}; {saved}", terminated=isinstance(exc, Terminated)) from None
    return best


def save_checkpoint(state: dict, path: Path, epoch: int) -> None:
    """The resumable checkpoint after `epoch`; OutputError (the previous one intact) if the disk refuses it."""
    try:
        save_atomic(state, path)
    except OSError as exc:
        kept = (
            f"the checkpoint of epoch {epoch - 1} in {path} is intact: free space, then tumor-train --out "
            f"{path.parent} --resume"
            if epoch > 1
            else "no checkpoint was written yet"
        )
        raise OutputError(
            f"could not save the checkpoint after epoch {epoch} ({exc.strerror or exc}); {kept}"
        ) from None


def run(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train, select the epoch with the best validation macro F2, and write every output into cfg.out.
    Under torchrun, every process calls this; rank 0 writes the files and returns the metrics."""
    cfg.check()
    out = Path(cfg.out)
    place = setup(cfg.device)  # DeviceError before anything else
    try:
        if resume:
            from tumor_train.model_file import read_checkpoint

            read_checkpoint(out / CHECKPOINT)  # missing or corrupt: say so before decoding the data
        check_writable(out)
        with lock_output(out, place.is_main):
            return train_on(cfg, prepare_data(cfg), resume, place)
    finally:
        teardown()


def use_bf16(cfg: TrainConfig, place: Placement) -> bool:
    if not cfg.bf16:
        return False
    return torch.cuda.is_bf16_supported() if place.device.type == "cuda" else cpu_has_native_bf16()


def train_on(
    cfg: TrainConfig, data: PreparedData, resume: bool = False, place: Placement = Placement(torch.device("cpu"))
) -> dict:
    """The run on prepared data (cross-validation calls this once per fold); only rank 0 writes files."""
    out = Path(cfg.out)
    check_writable(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if place.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    torch.manual_seed(cfg.seed)
    bf16 = use_bf16(cfg, place)
    stats = pixel_stats(data.train.images)
    args = model_args_for(cfg.arch, len(data.classes), cfg.width, cfg.dropout)
    state = TrainingState.create(
        cfg, args, math.ceil(len(data.train.labels) / cfg.batch_size), place, fresh=not resume, classes=data.classes
    )
    if cfg.teachers:
        from tumor_train.distill import Teachers

        state.teachers = Teachers.load(
            cfg.teachers, cfg.crop, data.classes, cfg.distill_temperature, cfg.distill_weight, place.device
        )
    history: list[dict] = []  # one row per epoch: history.csv
    best: dict[str, Any] = {"epoch": 0, "f2": -1.0, "state_dict": None}
    start = 0
    if resume:
        start, history, best = state.restore(out / CHECKPOINT, cfg, data.classes)
        print(
            f"Resuming after epoch {start} of {cfg.epochs}."
            if start < cfg.epochs
            else f"All {cfg.epochs} epochs are done: writing the outputs of the best epoch."
        )
    if place.is_main:
        print(
            f"{cfg.arch}: {count_parameters(state.model):,} parameters; {len(data.train.labels)} train / "
            f"{len(data.val.labels)} validation images; {place.device}"
            f"{f'; distilling from {len(cfg.teachers)} teachers' if cfg.teachers else ''}"
            f"{f' x {place.world} processes' if place.world > 1 else ''}; bf16 autocast {'on' if bf16 else 'off'}."
        )
    best = train_epochs(cfg, state, data, stats, bf16, start, history, best)
    if best["state_dict"] is None:
        raise CheckpointError(f"{out / CHECKPOINT} holds no trained weights")
    if not place.is_main:
        return {"rank": place.rank}
    model = state.model.to("cpu").to(memory_format=torch.contiguous_format)  # the outputs are CPU files
    model.load_state_dict(best["state_dict"])
    try:
        return write_outputs(cfg, model, args, data, history, best, stats, bf16, place)
    except KeyboardInterrupt as exc:
        raise Interrupted(
            f"interrupted while writing the outputs; the trained weights are in {out / CHECKPOINT}: "
            f"tumor-train --out {out} --resume writes them again",
            terminated=isinstance(exc, Terminated),
        ) from None
    except OSError as exc:
        raise OutputError(
            f"training finished but the outputs could not be written ({exc.strerror or exc}); the "
            f"trained weights are in {out / CHECKPOINT}: tumor-train --out {out} --resume writes "
            "them again"
        ) from None


EXPORTS = (INT8_MODEL, FP32_MODEL, MANIFEST, EXPORT_REPORT)


def remove_stale_exports(out: Path) -> None:
    """ONNX models beside a new model.pth were exported from the weights it replaced: the runtime would
    run the old model under the new run's name. They go (the manifest first, so nothing vouches for them)."""
    stale = [name for name in EXPORTS if (out / name).exists()]
    for name in sorted(stale, key=lambda n: n != MANIFEST):
        (out / name).unlink()
    if stale:
        print(
            f"Removed {', '.join(stale)}: exported from the weights this run replaced. Export again: "
            f"tumor-export --checkpoint {out / 'model.pth'} --int8"
        )


def split_report(model, split: ImageSet, mean: float, std: float, classes: list[str]) -> tuple[dict, np.ndarray]:
    stats, probs = evaluate(model, torch.from_numpy(split.images), torch.from_numpy(split.labels), mean, std, classes)
    return stats, probs.argmax(1)


def write_outputs(
    cfg: TrainConfig,
    model,
    args: dict,
    data: PreparedData,
    history: list,
    best: dict,
    stats: tuple[float, float],
    bf16: bool,
    place: Placement = Placement(torch.device("cpu")),
) -> dict:
    """model.pth first (the file later stages need), then the dynamic int8 model, metrics and plots."""
    out, (mean, std), classes = Path(cfg.out), stats, data.classes
    save_atomic(
        {
            "format": FORMAT,
            "arch": cfg.arch,
            "model_args": args,
            "state_dict": model.state_dict(),
            "classes": classes,
            "negative_class": NEGATIVE_CLASS,
            "preprocess": {
                "size": cfg.image_size,
                "mean": mean,
                "std": std,
                "grayscale": True,
                "resize": RESIZE_METHOD,
                "crop": cfg.crop,
            },
            "data": {
                "root": str(data.root),
                "train_dir": str(data.train_dir),
                "val_files": data.val_files,
                "train_files": [
                    provenance.key(classes[label], path) for path, label in zip(data.train.paths, data.train.labels)
                ],
            },
            "best_epoch": best["epoch"],
            "val_f2": best["f2"],
            "versions": versions(),
        },
        out / MODEL_FILE,
    )
    remove_stale_exports(out)
    save_quantized(model, cfg.arch, args, out / QUANTIZED_FILE)
    final_fit = len(data.val.labels) == 0
    validation, val_pred = (None, None) if final_fit else split_report(model, data.val, mean, std, classes)
    test = split_report(model, data.test, mean, std, classes)[0] if data.test is not None else None
    seconds = [h["seconds"] for h in history]
    metrics = {
        "config": asdict(cfg),
        "classes": classes,
        "parameters": count_parameters(model),
        "bf16_autocast": bf16,
        "placement": place.describe(),
        "effective_batch_size": cfg.batch_size,
        "best_epoch": best["epoch"],
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
        "data": {
            "train_images": len(data.train.labels),
            "validation_images": len(data.val.labels),
            "test_images": len(data.test.labels) if data.test is not None else 0,
            "mean": mean,
            "std": std,
            **data.info,
            "skipped_count": len(data.info["skipped_files"]),
        },
        "history": history,
        "validation": validation,
        "test": test,
        "versions": versions(),
    }
    if final_fit:
        metrics["note"] = (
            "final fit: every image trained for a fixed number of epochs and the last weight average "
            "is the model; there is no validation split. The evidence is the cross-validation report "
            "(tumor-train --cv) of the same recipe."
        )
    atomic_write_text(out / METRICS, json.dumps(metrics, indent=2))
    plots.write_history(history, out / HISTORY)
    plots.plot_curves(history, out, best["epoch"])
    if not final_fit:
        assert validation is not None and val_pred is not None  # every run but a final fit validates
        plots.plot_confusion(validation["confusion_matrix"], classes, out / "confusion_matrix.png")
        plots.plot_predictions(data.val.images, data.val.labels, val_pred, classes, out / "predictions.png")
    return metrics
