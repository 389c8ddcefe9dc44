"""`train_one_epoch` and `evaluate`: short functions with explicit arguments."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from tumor_runtime.metrics import summarize
from tumor_train.data import augment, to_input


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 autocast speeds training up instead of slowing it down."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def train_one_epoch(model: nn.Module, ema, images: torch.Tensor, labels: torch.Tensor, optimizer, scheduler,
                    criterion, generator: torch.Generator, mean: float, std: float, batch_size: int,
                    aug: dict, bf16: bool, classes: list[str], progress=None) -> dict:
    """One pass over uint8 `images` (N, H, W) in a seeded random order, updating the weight average
    `ema` after each step; returns loss, accuracy and macro F2 of the training batches."""
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    total_loss, preds, seen = 0.0, [], []
    for step, start in enumerate(range(0, len(order), batch_size)):
        index = order[start:start + batch_size]
        x = augment(to_input(images[index], 0.0, 1.0), generator, **aug)  # warp in [0, 1] so padding is black
        x = (x - mean) / std
        y = labels[index]
        with autocast(bf16):
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        total_loss += loss.item() * len(y)
        preds.append(logits.argmax(1))
        seen.append(y)
        if progress is not None:
            progress.update(1)
            if step % 10 == 0:
                running = summarize(torch.cat(seen).numpy(), torch.cat(preds).numpy(), classes)
                progress.set_postfix(loss=f"{total_loss / sum(map(len, seen)):.3f}", f2=f"{running['f2_macro']:.3f}")
    stats = summarize(torch.cat(seen).numpy(), torch.cat(preds).numpy(), classes)
    return {"loss": total_loss / len(order), "accuracy": stats["accuracy"], "f2": stats["f2_macro"]}


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, mean: float, std: float, batch_size: int = 128) -> torch.Tensor:
    """Class probabilities (N, classes) in FP32 for uint8 images (N, H, W)."""
    model.eval()
    out = [torch.softmax(model(to_input(images[i:i + batch_size], mean, std)), 1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float,
             classes: list[str]) -> tuple[dict, np.ndarray]:
    """FP32 evaluation (as the exported model runs): summary dict with 'loss', and the probabilities."""
    probs = predict(model, images, mean, std)
    loss = nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item()
    stats = summarize(labels.numpy(), probs.argmax(1).numpy(), classes)
    return stats | {"loss": loss}, probs.numpy()
