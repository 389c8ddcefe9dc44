"""The reference's compression: dynamic int8 quantization of the Linear layers.

Saved as {"format", "arch", "model_args", "state_dict"}; `load_quantized` rebuilds the float
model, applies the same quantization to give the modules their int8 shape, then loads
the saved int8 weights.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

from tumor_train.model_file import CheckpointError, save_atomic
from tumor_train.models import build_model

FORMAT = "tumor-kit/dynamic-int8-v1"


def quantize_linear(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model).eval()  # the caller's model keeps its mode (it may be mid-training)
    # Restates quantize_dynamic's defaults on purpose (Linear layers, int8 weights: the reference's recipe);
    # mutating them cannot change a model without RNN layers.
    # torch 2.14 warns on every call that eager-mode quantization (the reference's recipe, kept for the comparison)
    # and the tensor functions it uses are deprecated: advice for torch's maintainers, not for a user of the kit.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions", category=UserWarning)
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        return quantize_dynamic(frozen, {nn.Linear}, dtype=torch.qint8)  # pragma: no mutate (defaults)


def save_quantized(model: nn.Module, arch: str, model_args: dict, path: Path) -> None:
    state = quantize_linear(model).state_dict()
    save_atomic({"format": FORMAT, "arch": arch, "model_args": model_args, "state_dict": state}, path)


def load_quantized(path: Path) -> nn.Module:
    """model_quantized.pth -> a ready dynamic-int8 model (CPU, eval mode)."""
    # Explicitly safe and CPU-bound, whatever torch's defaults become (equal to them today: not mutated).
    obj = torch.load(path, map_location="cpu", weights_only=True)  # pragma: no mutate (defaults)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tumor-kit dynamic-int8 model")
    model = quantize_linear(build_model(obj["arch"], **obj["model_args"]))
    model.load_state_dict(obj["state_dict"])
    return model.eval()
