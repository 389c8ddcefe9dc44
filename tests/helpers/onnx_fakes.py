"""Tiny hand-built ONNX models with tumor-kit metadata, for load-time checks (no torch, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def save_model(graph, path: Path, meta: dict[str, str]) -> Path:
    """`graph` as an opset-18 ONNX file at `path` with `meta` as its metadata_props."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def metadata(**overrides) -> dict[str, str]:
    meta = {
        "classes": json.dumps(CLASSES),
        "input_size": "227",
        "mean": "0.2",
        "std": "0.2",
        "negative_class": "notumor",
        "tumor_threshold": "0.5",
        "arch": "fake",
        "precision": "fp32",
    }
    return meta | {k: str(v) for k, v in overrides.items()}


def tiny_model(path: Path, graph_size: int | str = 227, outputs: int = 4, **meta_overrides) -> Path:
    """image (N, 1, S, S) -> GlobalAveragePool -> Flatten -> Gemm (outputs) -> Softmax = "probabilities"."""
    weight = numpy_helper.from_array(np.linspace(-1, 1, outputs, dtype=np.float32).reshape(1, outputs), "W")
    bias = numpy_helper.from_array(np.zeros(outputs, np.float32), "B")
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fake",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, graph_size, graph_size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", outputs])],
        [weight, bias],
    )
    return save_model(graph, path, metadata(**meta_overrides))


def conv_model(path: Path, size: int = 32, logits_first: bool = False) -> Path:
    """image (N, 1, S, S) -> Conv 3x3 -> Relu -> Conv 1x1 -> GlobalAveragePool -> Gemm -> Softmax: three
    quantizable layers, for the parity gate's tests (a trained model is not needed)."""
    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
        for name, shape in (("W1", (4, 1, 3, 3)), ("W2", (4, 4, 1, 1)), ("W3", (4, 4)), ("B3", (4,)))
    ]
    nodes = [
        helper.make_node("Conv", ["image", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "W3", "B3"], ["logits"], name="gemm", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        ([helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])] if logits_first else [])
        + [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        init,
    )
    return save_model(graph, path, metadata(input_size=size))


def features_model(path: Path, size: int = 32) -> Path:
    """image (N, 1, S, S) -> AveragePool 8x8 -> Flatten = "features" (N, (S/8)^2) -> Gemm -> Softmax: a model with
    the `features` output the out-of-distribution score reads."""
    k = (size // 8) ** 2
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (k, 4)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "B")
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Gemm", ["features", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "features",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", k]),
        ],
        [weight, bias],
    )
    return save_model(graph, path, metadata(input_size=size))
