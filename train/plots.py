"""Human-readable outputs of a run: history.csv and the four plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tumor_runtime.core.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402

HISTORY_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "train_f2",
    "val_loss",
    "val_accuracy",
    "val_f2",
    "seconds",
]


def write_history(history: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_curves(history: list[dict], out: Path, best_epoch: int | None = None) -> None:
    """f2.png (the headline metric), accuracy.png and loss.png: train and validation against epochs, with
    the epoch whose weights were kept marked."""
    epochs = [h["epoch"] for h in history]
    labels = {
        "f2": ("train macro F2 (augmented batches)", "validation macro F2 (EMA weights)"),
        "accuracy": ("train (augmented batches)", "validation (EMA weights)"),
        "loss": ("train: label-smoothed cross-entropy", "validation: plain cross-entropy (EMA weights)"),
    }
    for key in ("f2", "accuracy", "loss"):
        fig, ax = plt.subplots(figsize=(6, 4))  # pragma: no mutate (layout)
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label=labels[key][0])
        if any(h[f"val_{key}"] is not None for h in history):  # a final fit has no validation curve
            ax.plot(epochs, [h[f"val_{key}"] for h in history], label=labels[key][1])
        if best_epoch:
            ax.axvline(best_epoch, color="gray", linestyle="--", linewidth=1, label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("macro F2" if key == "f2" else key)
        if key != "loss":
            ax.set_ylim(max(0.0, min(h[f"val_{key}"] or 1 for h in history[len(history) // 4 :]) - 0.05), 1.0)
        ax.grid(alpha=0.3)  # pragma: no mutate (layout)
        ax.legend(loc="lower right" if key != "loss" else "upper right", fontsize=8)
        save_figure(fig, out / f"{key}.png")


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "Validation") -> None:
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(5, 4.5))  # pragma: no mutate (layout)
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30)  # pragma: no mutate (layout)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} confusion matrix (EMA weights, FP32)")
    save_figure(fig, path)


def plot_predictions(
    images: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    classes: list[str],
    path: Path,
    count: int = 16,
    seed: int = 0,
) -> None:
    """A grid of validation images titled true/predicted: up to half mistakes (in red), the rest correct."""
    rng = np.random.default_rng(seed)
    wrong = rng.permutation(np.flatnonzero(true != pred))[: count // 2]
    right = rng.permutation(np.flatnonzero(true == pred))[: count - len(wrong)]
    chosen = np.concatenate([wrong, right])
    cols = 4
    rows = max(1, int(np.ceil(len(chosen) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.6))  # pragma: no mutate (layout)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), chosen):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ok = true[i] == pred[i]
        ax.set_title(f"true {classes[true[i]]}\npred {classes[pred[i]]}", fontsize=8, color="black" if ok else "red")
    save_figure(fig, path)
