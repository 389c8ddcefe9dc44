"""torch -> ONNX FP32 with softmax in the graph, then the checks every export must pass."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ["probabilities", "logits"]


class ExportError(Exception):
    """An export that failed a check; nothing is written at the target path."""


class WithProbabilities(nn.Module):
    """(N, 1, H, W) -> (probabilities (N, classes), logits (N, classes))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits = self.model(image)
        return torch.softmax(logits, dim=1), logits


def export_fp32(model: nn.Module, size: int, path: Path) -> None:
    """Write `path` with the current (dynamo) exporter and a dynamic batch axis."""
    wrapped = WithProbabilities(model).eval()
    example = (torch.zeros(2, 1, size, size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, example, input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
                                    dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
                                    opset_version=OPSET, dynamo=True, verbose=False)
    program.save(str(path))


def check_against_torch(path: Path, model: nn.Module, inputs: np.ndarray, atol: float = 1e-4) -> float:
    """onnx.checker (full), then ONNX Runtime vs torch on `inputs` (N, 1, H, W); returns max |dp|."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the export: {str(exc).splitlines()[0]}") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_probs = session.run(["probabilities"], {INPUT_NAME: inputs.astype(np.float32)})[0]
    with torch.no_grad():
        torch_probs = torch.softmax(model.eval()(torch.from_numpy(inputs)), 1).numpy()
    diff = float(np.abs(ort_probs - torch_probs).max())
    if not diff <= atol:
        raise ExportError(f"ONNX Runtime and torch disagree by {diff:.2e} (allowed {atol:.0e})")
    return diff
