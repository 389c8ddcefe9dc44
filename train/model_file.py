"""The files later stages read. Everything is loaded with weights_only=True: no pickled code.

model.pth = {"format", "arch", "model_args", "state_dict", "classes", "negative_class",
             "preprocess": {"size", "mean", "std", "grayscale", "resize"},
             "data": {"root", "train_dir", "val_files"}, "best_epoch", "val_f2", "versions"}
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from tumor_runtime.core.errors import KitError
from tumor_runtime.core.fileio import atomic_write_bytes
from tumor_runtime.imaging.decode import file_kind
from tumor_train.models import build_model

FORMAT = "tumor-kit/model-v1"


class CheckpointError(KitError):
    """Missing or incompatible checkpoint, reported in one line."""


def save_atomic(obj, path: Path) -> None:
    """torch.save into memory, then an atomic rename: a crash never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def torch_load(path: Path, missing: str, what: str) -> object:
    """weights_only torch.load; CheckpointError with `missing` or "not a readable <what>" instead of a traceback."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a device (/dev/null), a FIFO: never read
        kind = file_kind(path.stat().st_mode) or "not a regular file"
        raise CheckpointError(f"{path} is a {kind}, not a {what} file")
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable {what} ({type(exc).__name__})") from None


def read_checkpoint(path: Path) -> dict:
    """The resumable training state (checkpoint.pth); CheckpointError if it is missing or unreadable."""
    state = torch_load(path, f"nothing to resume: {path} does not exist", "training checkpoint")
    needed = ("epoch", "config", "model", "ema", "optimizer", "scheduler", "generator", "history", "best")
    if not isinstance(state, dict) or not all(k in state for k in needed) or not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is not a tumor-train resumable checkpoint")
    return state


def load_file(path: Path) -> dict:
    obj = torch_load(
        path, f"checkpoint {path} does not exist; train one with tumor-train or pass --checkpoint", "torch checkpoint"
    )
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tumor-kit model checkpoint (format {FORMAT} expected)")
    return obj


def load_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from model.pth alone: returns (model in eval mode, the checkpoint dict)."""
    ckpt = load_file(path)
    try:
        model = build_model(ckpt["arch"], **ckpt["model_args"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path} does not match its architecture: {str(exc).splitlines()[0]}") from None
    check_labels(path, model.eval(), ckpt)
    return model, ckpt


def check_preprocess(path: Path, pre: dict) -> None:
    """The preprocessing record by the runtime's own rule (`check_transform`, which ModelInfo.check applies), so that
    an export never writes a model the runtime refuses; a record without resize/grayscale is an older one."""
    from tumor_runtime.core.errors import OptionError
    from tumor_runtime.imaging.transform import RESIZE_METHOD, check_transform

    size, mean, std = pre["size"], pre["mean"], pre["std"]
    if not (type(size) is int and type(mean) in (int, float) and type(std) in (int, float)):
        raise CheckpointError(
            f"{path}: its preprocessing record has size {size!r}, mean {mean!r}, std {std!r}: numbers expected"
        )
    if pre.get("resize", RESIZE_METHOD) != RESIZE_METHOD or pre.get("grayscale", True) is not True:
        raise CheckpointError(
            f"{path}: its preprocessing (resize {pre.get('resize')!r}, grayscale "
            f"{pre.get('grayscale')!r}) is not the runtime's ({RESIZE_METHOD!r}, grayscale)"
        )
    try:
        check_transform(size, float(mean), float(std), str(pre.get("crop", "none")))
    except OptionError as exc:
        raise CheckpointError(f"{path}: its record {exc}") from None


def check_labels(path: Path, model: torch.nn.Module, ckpt: dict) -> None:
    """Classes, negative class and preprocessing that the runtime can trust: the model's output width is
    the number of class names, the negative class is one of them. Checked by a dry run, not by reading."""
    classes, negative, pre = ckpt.get("classes"), ckpt.get("negative_class"), ckpt.get("preprocess")
    if not (
        isinstance(classes, list)
        and len(classes) >= 2
        and all(isinstance(c, str) and c for c in classes)
        and len(set(classes)) == len(classes)
    ):
        raise CheckpointError(f"{path} lists no valid class names ({classes!r})")
    if negative not in classes:
        raise CheckpointError(f"{path}: its negative class {negative!r} is not one of its classes {classes}")
    if not isinstance(pre, dict) or not all(k in pre for k in ("size", "mean", "std")):
        raise CheckpointError(f"{path} has no preprocessing record (size, mean, std)")
    check_preprocess(path, pre)
    with torch.no_grad():
        width = model(torch.zeros(1, 1, int(pre["size"]), int(pre["size"]))).shape[-1]
    if width != len(classes):
        raise CheckpointError(f"{path} names {len(classes)} classes but the model gives {width} outputs")
