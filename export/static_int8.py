"""ONNX Runtime static int8 quantization: QDQ format, per-channel int8 weights.

Softmax always stays in float: quantizing probabilities to 256 levels would blur the
tumor probability that the screening threshold reads. So does the `cam` head (signed maps).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from tumor_runtime.core.contract import CAM_OUTPUT

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
ACTIVATION_TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
QUANTIZABLE = ("Conv", "Gemm", "MatMul")  # layers the fallback search may keep in float
FLOAT_CONVOLUTIONS = ("Conv", "FusedConv", "NhwcFusedConv")  # how ONNX Runtime's optimised graph names them
PROVIDERS = ["CPUExecutionProvider"]  # the fusion check reads the graph the CPU provider would run


@contextlib.contextmanager
def quiet_logging():
    """The quantizer logs every node at INFO through the root logger: raise its level for this call only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def prepare_graph(fp32_path: Path, out_path: Path) -> None:
    """quant_pre_process: symbolic shape inference and graph optimisation before quantizing."""
    with quiet_logging(), contextlib.redirect_stdout(io.StringIO()):
        # Shapes are known after export; symbolic inference stays on in case a graph has dynamic ones.
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)  # pragma: no mutate (equivalent)


def quantizable_nodes(path: Path) -> list[str]:
    """Names of the compute nodes, in graph order (the candidates to keep in float)."""
    always_float = set(float_only_nodes(path))
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZABLE and n.name not in always_float]


def describe_nodes(path: Path) -> dict[str, str]:
    """A readable name for each candidate node, for messages: 'layer 3 of 12 (Conv 5x5, 40->80 channels)'
    instead of the exporter's 'node_Conv_92'. The report keeps the node names too (they reproduce a run)."""
    graph = onnx.load(str(path)).graph
    weights = {w.name: list(w.dims) for w in graph.initializer}
    names = quantizable_nodes(path)
    by_name = {n.name: n for n in graph.node}
    labels = {}
    for i, name in enumerate(names, 1):
        node = by_name[name]
        dims = weights.get(node.input[1], []) if len(node.input) > 1 else []
        if node.op_type == "Conv" and len(dims) == 4:  # (out, in / groups, kh, kw)
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kind = "depthwise " if group > 1 and group == dims[0] else ""
            shape = f"{kind}{node.op_type} {dims[2]}x{dims[3]}, {dims[1] * group}->{dims[0]} channels"
        elif len(dims) == 2:
            shape = f"{node.op_type}, {dims[1] if node.op_type == 'Gemm' else dims[0]} inputs"
        else:
            shape = node.op_type
        labels[name] = f"layer {i} of {len(names)} ({shape})"
    return labels


# Layout nodes ahead of the first convolution (the space-to-depth stem): in int8 the image would be quantized
# before them and again after them, two roundings where the stem had one.
FLOAT_LAYOUT = ("Pad", "SpaceToDepth")


def float_only_nodes(path: Path) -> list[str]:
    """Softmax, the node that makes the `cam` output (a heat-map has signed values that u8 activations would
    clip, and its 1x1 convolution costs next to nothing in float) and the stem's FLOAT_LAYOUT nodes."""
    graph = onnx.load(str(path)).graph
    return [n.name for n in graph.node if n.op_type == "Softmax" or CAM_OUTPUT in n.output or n.op_type in FLOAT_LAYOUT]


def quantize_int8(
    prepared: Path,
    out_path: Path,
    reader,
    method: str = "minmax",
    activation: str = "u8",
    keep_float: Sequence[str] = (),
) -> None:
    """Write a QDQ int8 model to `out_path`; `keep_float` names nodes left in FP32."""
    reader.rewind()
    with quiet_logging(), contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared),
            str(out_path),
            reader,
            per_channel=True,
            quant_format=QuantFormat.QDQ,  # pragma: no mutate (defaults: the fusion check expects QDQ)
            activation_type=ACTIVATION_TYPES[activation],
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            nodes_to_exclude=[*float_only_nodes(prepared), *keep_float],
            # A dedicated Q/DQ pair per consumer: the `cam` head shares the last feature map with the
            # classifier, and must not change how the classifier's path is quantized and fused.
            extra_options={
                "ActivationSymmetric": activation == "s8",
                "DedicatedQDQPair": True,
                "WeightSymmetric": True,
            },  # pragma: no mutate (defaults: s8 weights are symmetric)
        )


def int8_convolutions(int8_path: Path, prepared: Path, keep_float: list[str]) -> dict:
    """How ONNX Runtime runs the int8 file's convolutions: the optimised graph (hardware-independent level)
    must fuse every Conv into an int8 QLinearConv but those left in float on purpose (the CAM head and
    the gate's choices); ExportError otherwise, so a silently float "int8" model never ships."""
    import tempfile

    import onnxruntime as ort

    from tumor_export.onnx_export import ExportError

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")  # pragma: no mutate (any name)
        options.log_severity_level = 3  # pragma: no mutate (warnings only)
        ort.InferenceSession(str(int8_path), options, providers=PROVIDERS)
        optimized = onnx.load(options.optimized_model_filepath)
    kinds = [n.op_type for n in optimized.graph.node]
    meant_float = {
        n.name
        for n in onnx.load(str(prepared)).graph.node
        if n.op_type == "Conv" and n.name in {*float_only_nodes(prepared), *keep_float}
    }
    # A float convolution followed by its ReLU is fused into one FusedConv: it counts as float too.
    floats = sum(kinds.count(kind) for kind in FLOAT_CONVOLUTIONS)
    counts = {"QLinearConv": kinds.count("QLinearConv"), "Conv": floats, "float_by_design": len(meant_float)}
    if counts["Conv"] > len(meant_float):
        raise ExportError(
            f"{counts['Conv'] - len(meant_float)} convolution(s) of the int8 model would run in float in "
            "ONNX Runtime (not fused into QLinearConv)"
        )
    return counts
