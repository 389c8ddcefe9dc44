"""A full training run: data -> model -> epochs with checkpoints -> model.pth and reports."""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from tumor_runtime.fileio import atomic_write_text
from tumor_runtime.metrics import NEGATIVE_CLASS
from tumor_runtime.preprocess import RESIZE_METHOD
from tumor_train import report
from tumor_train.checkpoint import FORMAT, CheckpointError, save_atomic
from tumor_train.config import TrainConfig
from tumor_train.data import DataError, ImageSet, class_names, decode_images, find_splits, list_images, pixel_stats
from tumor_train.dedup import duplicate_groups, grouped_split
from tumor_train.engine import cpu_has_native_bf16, evaluate, train_one_epoch
from tumor_train.models import build_model, count_parameters, model_args_for
from tumor_train.quantize import save_quantized

CHECKPOINT = "checkpoint.pth"  # resumable state, rewritten atomically after every epoch


class Interrupted(Exception):
    """Ctrl-C during training; the message says where the last checkpoint is."""


def load_split(folder: Path, classes: list[str], cfg: TrainConfig, name: str, limit: int = 0) -> ImageSet:
    paths, labels = list_images(folder, classes, limit)
    with tqdm(total=len(paths), desc=f"decode {name}", unit="img", leave=False) as bar:
        return decode_images(paths, labels, cfg.image_size, bar)


def prepare_data(cfg: TrainConfig) -> dict:
    """Decode the splits; without a Validation folder, carve one with duplicate groups kept whole."""
    splits = find_splits(Path(cfg.data))
    classes = class_names(splits["train"])
    train = load_split(splits["train"], classes, cfg, "train", cfg.max_per_class)
    skipped = list(train.skipped)
    info = {"train_dir": str(splits["train"]), "duplicate_groups": None}
    if splits["validation"] is not None:
        val = load_split(splits["validation"], classes, cfg, "validation")
        skipped += val.skipped
    else:
        groups = duplicate_groups(train.paths, train.images, cfg.dup_threshold)
        sizes = np.unique(groups, return_counts=True)[1]
        info["duplicate_groups"] = int((sizes > 1).sum())
        info["images_in_duplicate_groups"] = int(sizes[sizes > 1].sum())
        print(f"Found {info['duplicate_groups']} duplicate groups ({info['images_in_duplicate_groups']} images); "
              "each group stays on one side of the split.")
        train_idx, val_idx = grouped_split(train.labels, groups, cfg.val_fraction, cfg.seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    test = None
    if splits["test"] is not None:
        test = load_split(splits["test"], classes, cfg, "test")
        skipped += test.skipped
    if len(train.labels) == 0 or len(val.labels) == 0:
        raise DataError("no readable images left for training or validation")
    info["skipped_files"] = [{"file": f, "reason": r} for f, r in skipped]
    return {"classes": classes, "train": train, "val": val, "test": test, "info": info}


def ema_update(decay: float):
    """EMA step with warm-up: the decay grows as (1 + n) / (10 + n) up to `decay`, so short runs
    are not dominated by the random initial weights."""

    def update(average: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        d = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
        return d * average + (1.0 - d) * current

    return update


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero, per optimizer step."""
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    total = max(warmup + 1, cfg.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    return factor


def versions() -> dict:
    import tumor_runtime

    return {"tumor_kit": tumor_runtime.__version__, "torch": str(torch.__version__), "python": platform.python_version()}


@dataclass
class TrainingState:
    """Everything that changes during training and goes into the resumable checkpoint."""

    model: nn.Module
    ema: AveragedModel  # the weight average that is validated, selected and exported
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator  # batch order and augmentation

    @classmethod
    def create(cls, cfg: TrainConfig, model_args: dict, steps_per_epoch: int) -> "TrainingState":
        model = build_model(cfg.arch, **model_args)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return cls(model, AveragedModel(model, avg_fn=ema_update(cfg.ema_decay), use_buffers=True), optimizer,
                   torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch)),
                   torch.Generator().manual_seed(cfg.seed))

    def checkpoint(self, cfg: TrainConfig, epoch: int, history: list, best: dict) -> dict:
        return {"epoch": epoch, "config": asdict(cfg), "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "history": history, "best": best}

    def restore(self, path: Path, cfg: TrainConfig) -> tuple[int, list, dict]:
        """Load the resumable checkpoint; returns (epochs done, history, best)."""
        if not path.is_file():
            raise CheckpointError(f"nothing to resume: {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("config", {}).get("arch") != cfg.arch:
            raise CheckpointError(f"{path} was trained with --arch {state.get('config', {}).get('arch')}, not {cfg.arch}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return state["epoch"], state["history"], state["best"]


def run_epoch(cfg: TrainConfig, state: TrainingState, data: dict, stats: tuple[float, float], bf16: bool,
              epoch: int) -> dict:
    """Train one epoch, validate the weight average; returns the history row."""
    train, val, classes, (mean, std) = data["train"], data["val"], data["classes"], stats
    aug = {k: getattr(cfg, k) for k in ("rotation", "translate", "scale", "hflip", "intensity")}
    tic = time.perf_counter()
    with tqdm(total=math.ceil(len(train.labels) / cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}",
              unit="batch", leave=False) as bar:
        fit = train_one_epoch(state.model, state.ema, torch.from_numpy(train.images), torch.from_numpy(train.labels),
                              state.optimizer, state.scheduler, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                              state.generator, mean, std, cfg.batch_size, aug, bf16, classes, bar)
    seconds = time.perf_counter() - tic
    val_stats, _ = evaluate(state.ema.module, torch.from_numpy(val.images), torch.from_numpy(val.labels), mean, std,
                            classes)
    tqdm.write(f"epoch {epoch}: train loss {fit['loss']:.4f} F2 {fit['f2']:.4f} | validation (EMA) loss "
               f"{val_stats['loss']:.4f} F2 {val_stats['f2_macro']:.4f} | {seconds:.1f}s")
    return {"epoch": epoch, "lr": state.scheduler.get_last_lr()[0], "train_loss": fit["loss"],
            "train_accuracy": fit["accuracy"], "train_f2": fit["f2"], "val_loss": val_stats["loss"],
            "val_accuracy": val_stats["accuracy"], "val_f2": val_stats["f2_macro"], "seconds": seconds}


def run(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train, select the epoch with the best validation macro F2, and write every output into cfg.out."""
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    bf16 = cfg.bf16 and cpu_has_native_bf16()
    data = prepare_data(cfg)
    stats = pixel_stats(data["train"].images)
    args = model_args_for(cfg.arch, len(data["classes"]), cfg.width, cfg.dropout)
    state = TrainingState.create(cfg, args, math.ceil(len(data["train"].labels) / cfg.batch_size))
    start, history, best = 0, [], {"epoch": 0, "f2": -1.0, "state_dict": None}
    if resume:
        start, history, best = state.restore(out / CHECKPOINT, cfg)
        print(f"Resuming after epoch {start} of {cfg.epochs}.")
    print(f"{cfg.arch}: {count_parameters(state.model):,} parameters; {len(data['train'].labels)} train / "
          f"{len(data['val'].labels)} validation images; bf16 autocast {'on' if bf16 else 'off'}.")
    epoch = start
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            history.append(run_epoch(cfg, state, data, stats, bf16, epoch))
            if history[-1]["val_f2"] > best["f2"]:
                weights = {k: v.clone() for k, v in state.ema.module.state_dict().items()}
                best = {"epoch": epoch, "f2": history[-1]["val_f2"], "state_dict": weights}
            save_atomic(state.checkpoint(cfg, epoch, history, best), out / CHECKPOINT)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted in epoch {epoch}; the checkpoint after epoch {epoch - 1} is in "
                          f"{out / CHECKPOINT}: continue with --resume") from None
    if best["state_dict"] is None:
        raise CheckpointError(f"no epochs to run: {out / CHECKPOINT} already holds {start} of {cfg.epochs} epochs")
    state.model.load_state_dict(best["state_dict"])
    return write_outputs(cfg, state.model, args, data, history, best, stats, bf16)


def split_report(model, split: ImageSet, mean: float, std: float, classes: list[str]) -> tuple[dict, np.ndarray]:
    stats, probs = evaluate(model, torch.from_numpy(split.images), torch.from_numpy(split.labels), mean, std, classes)
    return stats, probs.argmax(1)


def write_outputs(cfg: TrainConfig, model, args: dict, data: dict, history: list, best: dict,
                  stats: tuple[float, float], bf16: bool) -> dict:
    out, (mean, std), classes = Path(cfg.out), stats, data["classes"]
    root = Path(cfg.data).resolve()
    val_files = [str(Path(p).resolve().relative_to(root)) for p in data["val"].paths]
    save_atomic({"format": FORMAT, "arch": cfg.arch, "model_args": args, "state_dict": model.state_dict(),
                 "classes": classes, "negative_class": NEGATIVE_CLASS,
                 "preprocess": {"size": cfg.image_size, "mean": mean, "std": std, "grayscale": True,
                                "resize": RESIZE_METHOD},
                 "data": {"root": str(root), "train_dir": data["info"]["train_dir"], "val_files": val_files},
                 "best_epoch": best["epoch"], "val_f2": best["f2"], "versions": versions()}, out / "model.pth")
    save_quantized(model, cfg.arch, args, out / "model_quantized.pth")
    validation, val_pred = split_report(model, data["val"], mean, std, classes)
    test = split_report(model, data["test"], mean, std, classes)[0] if data["test"] is not None else None
    seconds = [h["seconds"] for h in history]
    metrics = {
        "config": asdict(cfg), "classes": classes, "parameters": count_parameters(model), "bf16_autocast": bf16,
        "best_epoch": best["epoch"], "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
        "data": {"train_images": len(data["train"].labels), "validation_images": len(data["val"].labels),
                 "test_images": len(data["test"].labels) if data["test"] is not None else 0,
                 "mean": mean, "std": std, **data["info"], "skipped_count": len(data["info"]["skipped_files"])},
        "history": history, "validation": validation, "test": test, "versions": versions(),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    report.write_history(history, out / "history.csv")
    report.plot_curves(history, out)
    report.plot_confusion(validation["confusion_matrix"], classes, out / "confusion_matrix.png")
    report.plot_predictions(data["val"].images, data["val"].labels, val_pred, classes, out / "predictions.png")
    return metrics
