"""torch -> ONNX FP32 with softmax in the graph, then the checks every export must pass."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from tumor_export.space_to_depth import with_space_to_depth_stem
from tumor_runtime.core.contract import (
    CAM_OUTPUT,
    FEATURES_OUTPUT,
    INPUT_NAME,
    OUTPUT_NAMES,
    PROBABILITIES,
)
from tumor_runtime.core.errors import EXIT_PARTIAL, KitError

OPSET = 18


class ExportError(KitError):
    """An export that failed a check; nothing is written at the target path."""

    exit_code = EXIT_PARTIAL  # the exported graph failed a check


def supports_cam(model: nn.Module) -> bool:
    """Class activation maps are exact for a global-average-pool + linear head (the compact model)."""
    head = getattr(model, "head", None)
    return (
        hasattr(model, "features")
        and isinstance(head, nn.Sequential)
        and isinstance(head[0], nn.AdaptiveAvgPool2d)
        and isinstance(head[-1], nn.Linear)
    )


class WithProbabilities(nn.Module):
    """(N, 1, H, W) -> probabilities (N, classes), logits (N, classes) [, cam (N, classes, h, w),
    features (N, k)].

    CAM (Zhou et al. 2016): cam_c = sum_k W[c, k] * A_k, where A (N, k, h, w) is the last feature
    map and W the head's weights: a 1x1 convolution of A, so it lives in the graph, torch-free.
    `features` are the pooled activations the head reads: the runtime's out-of-distribution score
    (`tumor_runtime.model.ood`) measures how far they are from the training slices'.
    """

    def __init__(self, model: Any, cam: bool):  # a registry architecture: .features and .head with CAM
        super().__init__()
        self.model, self.cam = model, cam

    def forward(self, image: torch.Tensor):
        if not self.cam:
            logits = self.model(image)
            return torch.softmax(logits, dim=1), logits
        features = self.model.features(image)  # (N, k, h, w)
        pooled = self.model.head[:-1](features)  # (N, k): pool, flatten, dropout (identity in eval)
        logits = self.model.head[-1](pooled)
        weight = self.model.head[-1].weight  # (classes, k)
        cam = nn.functional.conv2d(features, weight[:, :, None, None])  # (N, classes, h, w)
        return torch.softmax(logits, dim=1), logits, cam, pooled


def export_fp32(model: nn.Module, size: int, path: Path) -> bool:
    """Write `path` with the current (dynamo) exporter and a dynamic batch axis; returns whether the
    graph has the `cam` output (compact model: yes; the reference AlexNet has no GAP head: no)."""
    cam = supports_cam(model)
    # The stem as SpaceToDepth + a 3x3 convolution (`space_to_depth`): the same outputs, a faster graph.
    wrapped = WithProbabilities(with_space_to_depth_stem(model.eval(), size), cam).eval()
    example = (torch.zeros(2, 1, size, size),)  # pragma: no mutate (any batch above 1 traces the same graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            example,
            input_names=[INPUT_NAME],  # pragma: no mutate (equivalent: the wrapper's argument has this name)
            output_names=list(OUTPUT_NAMES) + ([CAM_OUTPUT, FEATURES_OUTPUT] if cam else []),
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            opset_version=OPSET,
            verbose=False,  # the exporter's default opset is newer; verbose prints a report
            dynamo=True,
        )  # pragma: no mutate (the default, stated: the dynamo exporter is the one checked here)
    assert program is not None  # the dynamo exporter returns its program
    program.save(str(path))
    return cam


def torch_cam(model: Any, inputs: torch.Tensor) -> torch.Tensor:
    """The CAM computed in torch, independently of the export wrapper: (N, classes, h, w)."""
    with torch.no_grad():
        features = model.eval().features(inputs)
        return torch.einsum("ck,nkhw->nchw", model.head[-1].weight, features)


def check_onnx(path: Path) -> None:
    """onnx.checker with full shape inference; ExportError if it rejects the file."""
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected {Path(path).name}: {str(exc).splitlines()[0]}") from None


def check_against_torch(path: Path, model: Any, inputs: np.ndarray, atol: float = 1e-4) -> float:
    """onnx.checker (full), then ONNX Runtime vs torch on `inputs` (N, 1, H, W); returns max |dp|."""
    from tumor_runtime.model.session import create_session

    check_onnx(path)
    session = create_session(path)
    ort_probs = session.run([PROBABILITIES], {INPUT_NAME: inputs.astype(np.float32)})[0]
    with torch.no_grad():
        torch_probs = torch.softmax(model.eval()(torch.from_numpy(inputs)), 1).numpy()
    diff = float(np.abs(ort_probs - torch_probs).max())
    if not diff <= atol:
        raise ExportError(f"ONNX Runtime and torch disagree by {diff:.2e} (allowed {atol:.0e})")
    if CAM_OUTPUT in [o.name for o in session.get_outputs()]:
        ort_cam = session.run([CAM_OUTPUT], {INPUT_NAME: inputs.astype(np.float32)})[0]
        expected = torch_cam(model, torch.from_numpy(inputs)).numpy()
        cam_diff = float(np.abs(ort_cam - expected).max() / max(1.0, float(np.abs(expected).max())))
        if not cam_diff <= 1e-4:
            raise ExportError(f"ONNX Runtime and torch class activation maps disagree by {cam_diff:.2e} (relative)")
    if FEATURES_OUTPUT in [o.name for o in session.get_outputs()]:
        ort_features = session.run([FEATURES_OUTPUT], {INPUT_NAME: inputs.astype(np.float32)})[0]
        with torch.no_grad():
            expected = model.head[:-1](model.features(torch.from_numpy(inputs))).numpy()
        feature_diff = float(np.abs(ort_features - expected).max() / max(1.0, float(np.abs(expected).max())))
        if not feature_diff <= 1e-4:
            raise ExportError(f"ONNX Runtime and torch pooled features disagree by {feature_diff:.2e} (relative)")
    return diff


def fixed_inputs(size: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs (count, 1, size, size): the parity check when no images are at hand."""
    return np.random.default_rng(seed).standard_normal((count, 1, size, size)).astype(np.float32)
