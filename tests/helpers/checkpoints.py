"""A small trained model.pth for the export and training tests."""

from __future__ import annotations

from pathlib import Path


def model_checkpoint(
    path: Path,
    size: int = 32,
    width: int = 4,
    crop: str = "brain",
    seed: int = 0,
    classes=("glioma", "meningioma", "notumor", "pituitary"),
    mean: float = 0.2,
    std: float = 0.25,
) -> Path:
    """A model.pth as tumor-train writes it, around an untrained compact model (seeded): for tests of the
    stages that read checkpoints, without training one."""
    import torch

    from tumor_train.model_file import FORMAT, save_atomic
    from tumor_train.models import build_model, model_args_for

    torch.manual_seed(seed)
    args = model_args_for("compact", len(classes), width, 0.1)
    model = build_model("compact", **args)
    save_atomic(
        {
            "format": FORMAT,
            "arch": "compact",
            "model_args": args,
            "state_dict": model.state_dict(),
            "classes": list(classes),
            "negative_class": "notumor",
            "preprocess": {
                "size": size,
                "mean": mean,
                "std": std,
                "grayscale": True,
                "resize": "pil-bilinear",
                "crop": crop,
            },
            "data": {"root": "", "train_dir": "", "val_files": []},
            "best_epoch": 1,
            "val_f2": 0.5,
            "versions": {},
        },
        Path(path),
    )
    return Path(path)
