"""The architecture registry: what each `--arch` is and what input it takes. Torch-free, so `tumor-train
--help` and option checks work on a runtime-only install; `tumor_train.models` holds the networks."""

from __future__ import annotations

from dataclasses import dataclass

from tumor_runtime.core.errors import OptionError


@dataclass(frozen=True)
class Architecture:
    """A registry entry."""

    module: str  # the nn.Module class in tumor_train.models
    summary: str  # for --help
    input_size: int | None = None  # the only input side it accepts (its flatten layer fixes it); None: any
    pretrained: bool = False  # ImageNet weights exist for it (--pretrained imagenet)


ARCHITECTURES = {
    "compact": Architecture("CompactNet", "~0.9M parameters at width 40, from scratch"),
    "alexnet": Architecture("AlexNet", "the ~58M reference; 227 px only", input_size=227),
    "mobilenet_v2": Architecture(
        "MobileNetV2Trunk", "ImageNet MobileNetV2 to block 13, ~0.6M parameters", pretrained=True
    ),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise OptionError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def check_input_size(arch: str, size: int) -> None:
    """OptionError when `arch` takes only one input side and `size` is another (before any training)."""
    fixed = architecture(arch).input_size
    if fixed is not None and size != fixed:
        raise OptionError(
            f"--arch {arch} takes {fixed} px inputs only (its classifier's input is fixed), "
            f"not --size {size}: leave --size out or give --size {fixed}"
        )
