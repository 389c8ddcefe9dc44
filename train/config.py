"""Every training knob in one dataclass; `tumor-train --help` mirrors these fields."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class TrainConfig:
    data: str = "Data"  # dataset root: DIR/Train (or Training), optional Validation, Testing; or DIR/<class>/
    out: str = ""  # where model.pth, metrics.json, plots and the resumable checkpoint go; "" = runs/<time>/
    arch: str = "compact"  # registry key (train/models.py): "compact" (default), "alexnet" (reference), "mobilenet_v2"
    pretrained: str = "none"  # "imagenet": start from torchvision's ImageNet weights (mobilenet_v2 only); "none"
    init: str = ""  # a model.pth to start from (same arch, width and classes), e.g. artifacts/model.pth; "" = none
    width: int = 40  # compact only: channels of the stem; later stages use 2x, 4x, 8x (40: ~0.9M parameters)
    dropout: float = 0.3  # dropout before the classifier (alexnet uses 0.5 as the original)
    epochs: int = 60  # passes over the training split (about 16 minutes for the default model here)
    batch_size: int = 32  # the reference recipe's batch size
    lr: float = 2e-3  # peak AdamW learning rate (the reference used Adam at 3e-4; see --lr)
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    warmup_epochs: float = 2.0  # linear warm-up before the cosine decay
    label_smoothing: float = 0.05  # softens one-hot targets; helps calibration of the tumor threshold
    image_size: int = 160  # square input side (--size), stored in the checkpoint and the ONNX metadata
    crop: str = "brain"  # "brain": cut each slice to the square around the head before resizing; "none": whole frame
    val_fraction: float = 0.15  # share carved for validation when there is no Validation folder; 0 = final fit
    val_list: str = ""  # text file of validation images (paths relative to --data, one a line): a fixed split
    dup_threshold: float = 0.92  # Pearson correlation of 48x48 thumbnails at or above which two images are one group
    rotation: float = 15.0  # augmentation: max rotation in degrees
    translate: float = 0.1  # augmentation: max shift as a fraction of the side
    scale: float = 0.1  # augmentation: zoom in [1 - scale, 1 + scale]
    hflip: float = 0.5  # augmentation: probability of a horizontal flip
    intensity: float = 0.15  # augmentation: gamma and contrast in [1 - x, 1 + x] (MRI sequences differ); 0 = off
    ema_decay: float = 0.998  # weights are also averaged per step (EMA); validation and export use the average
    seed: int = 0  # seeds the split, the initial weights, the batch order and the augmentation
    bf16: bool = True  # bf16 autocast on GPUs that support it and on CPUs with native bf16 (AVX512-BF16 / AMX)
    device: str = "auto"  # auto (CUDA when available, else CPU), cpu, cuda or cuda:N; torchrun: each rank its GPU
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default (all cores this process may use)
    max_per_class: int = 0  # cap on training images per class, for quick trials; 0 = all
    teachers: list = field(default_factory=list)  # model.pth files to distil from (train/distill.py); [] = none
    distill_weight: float = 0.5  # share of the distillation term in the loss when there are teachers
    distill_temperature: float = 2.0  # softening of teacher and student probabilities for that term

    # The one declaration of each numeric knob's range: TrainConfig.check and tumor-train's options both read it.
    # (low, high) for every integer knob:
    INT_RANGES = {
        "width": (4, 4096),
        "epochs": (1, 100_000),
        "batch_size": (1, 65_536),
        "image_size": (32, 1024),
        "threads": (0, 4096),
        "max_per_class": (0, 1 << 30),
    }
    # (low, high, low_open) for every float knob: NaN or out-of-range values are refused, not trained with.
    FLOAT_RANGES = {
        "dropout": (0.0, 1.0, False),
        "lr": (0.0, 10.0, True),
        "weight_decay": (0.0, 10.0, False),
        "warmup_epochs": (0.0, 1e6, False),
        "label_smoothing": (0.0, 1.0, False),
        "val_fraction": (0.0, 0.9, False),
        "dup_threshold": (0.0, 1.0, False),
        "rotation": (0.0, 180.0, False),
        "translate": (0.0, 1.0, False),
        "scale": (0.0, 0.9, False),
        "hflip": (0.0, 1.0, False),
        "intensity": (0.0, 0.9, False),
        "ema_decay": (0.0, 1.0, False),
        "distill_weight": (0.0, 1.0, False),
        "distill_temperature": (0.0, 100.0, True),
    }

    def check(self) -> None:
        """ValueError naming the first field that is not finite and in range."""
        from tumor_runtime.core.contract import CROPS
        from tumor_runtime.core.errors import OptionError
        from tumor_runtime.core.options import finite_in_range, int_in_range

        if self.pretrained not in ("imagenet", "none"):
            raise OptionError(f"pretrained must be imagenet or none, not {self.pretrained!r}")
        if self.crop not in CROPS:
            raise OptionError(f"crop must be one of {', '.join(CROPS)}, not {self.crop!r}")

        for name, (low, high, low_open) in self.FLOAT_RANGES.items():
            finite_in_range(name, getattr(self, name), low, high, low_open)
        for name, (low, high) in self.INT_RANGES.items():
            int_in_range(name, getattr(self, name), low, high)

    @classmethod
    def known(cls, options: dict) -> dict:
        """The entries of `options` that are TrainConfig fields (older checkpoints may hold others)."""
        names = {f.name for f in fields(cls)}
        return {k: v for k, v in options.items() if k in names}


FLAGS = {"image_size": "--size", "teachers": "--teacher", "folds": "--cv"}  # fields whose flag is not their name
# Fields of the recipe that no option sets (they change only in this file): messages name them as fields.
NO_OPTION = {
    "dropout",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "rotation",
    "translate",
    "scale",
    "hflip",
    "intensity",
    "ema_decay",
}


def flag(field: str) -> str:
    """How messages name a config field: its tumor-train option (image_size -> --size), or the field itself."""
    if field in NO_OPTION:
        return f"{field} (in train/config.py)"
    return FLAGS.get(field, "--" + field.replace("_", "-"))
