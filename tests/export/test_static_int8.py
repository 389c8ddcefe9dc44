"""Every convolution of the int8 model really runs as an int8 kernel in ONNX Runtime (or is float on purpose)."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.onnx_fakes import conv_model, metadata, save_model
from tumor_export.calibration import ArrayReader
from tumor_export.onnx_export import ExportError
from tumor_export.static_int8 import (
    float_only_nodes,
    int8_convolutions,
    prepare_graph,
    quantizable_nodes,
    quantize_int8,
    quiet_logging,
)


def test_the_export_reports_fused_int8_convolutions(exported):
    report = json.loads((exported / "export_report.json").read_text())
    kernels = report["int8_kernels"]
    assert kernels["QLinearConv"] >= 5 and kernels["Conv"] == kernels["float_by_design"] == 1  # the CAM head


# The quantizer's settings, read off the written graph (a stand-in model: no training).


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("q")
    prepare_graph(conv_model(folder / "m.onnx"), folder / "pre.onnx")
    return folder / "pre.onnx"


def calibration():
    return ArrayReader(np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32), "image")


def nodes(path):
    return onnx.load(str(path)).graph


def test_softmax_is_float_by_design_and_the_rest_are_candidates(prepared):
    assert float_only_nodes(prepared) == ["softmax"]
    assert quantizable_nodes(prepared) == ["conv1", "conv2", "gemm"]


def test_quiet_logging_silences_the_root_logger_only_meanwhile():
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        with pytest.raises(RuntimeError):
            with quiet_logging():
                assert root.level == logging.ERROR
                raise RuntimeError
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)


@pytest.mark.parametrize("activation, zero_point_type", [("u8", onnx.TensorProto.UINT8), ("s8", onnx.TensorProto.INT8)])
def test_qdq_with_per_channel_int8_weights_and_the_asked_activation_type(
    prepared, tmp_path, activation, zero_point_type
):
    reader = calibration()
    while reader.get_next() is not None:  # a spent reader: quantize_int8 rewinds it
        pass
    quantize_int8(prepared, tmp_path / "q.onnx", reader, activation=activation)
    graph = nodes(tmp_path / "q.onnx")
    init = {i.name: i for i in graph.initializer}
    weight_dq = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and init.get(n.input[0]) is not None
        and init[n.input[0]].data_type == onnx.TensorProto.INT8
        and len(init[n.input[0]].dims) == 4
    ]
    assert len(weight_dq) == 2  # both convolutions' weights
    assert all(numpy_helper.to_array(init[n.input[1]]).shape == (4,) for n in weight_dq)  # one scale per channel
    assert all(not numpy_helper.to_array(init[n.input[2]]).any() for n in weight_dq)  # symmetric: zero points 0
    activation_q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activation_q and all(init[n.input[2]].data_type == zero_point_type for n in activation_q)
    if activation == "s8":  # symmetric activations: every zero point is 0
        assert all(not numpy_helper.to_array(init[n.input[2]]).any() for n in activation_q)
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == softmax.output[0] for n in graph.node)


def test_keep_float_leaves_a_named_layer_unquantized(prepared, tmp_path):
    quantize_int8(prepared, tmp_path / "q.onnx", calibration(), keep_float=["conv1"])
    graph = nodes(tmp_path / "q.onnx")
    conv1 = next(n for n in graph.node if n.name == "conv1")
    assert conv1.input[1] == "W1"  # its float weight, not a dequantized one
    assert next(n for n in graph.node if n.name == "conv2").input[1] != "W2"


def test_calibration_methods_give_different_ranges(prepared, tmp_path):
    scales = {}
    for method in ("minmax", "percentile"):
        quantize_int8(prepared, tmp_path / f"{method}.onnx", calibration(), method=method)
        graph = nodes(tmp_path / f"{method}.onnx")
        init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        scales[method] = sorted(
            float(init[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear" and init[n.input[1]].ndim == 0
        )
    assert scales["minmax"] != scales["percentile"]


def test_a_convolution_left_in_float_unannounced_is_refused(prepared, tmp_path):
    quantize_int8(prepared, tmp_path / "q.onnx", calibration(), keep_float=["conv1"])
    counts = int8_convolutions(tmp_path / "q.onnx", prepared, ["conv1"])
    assert counts == {"QLinearConv": 1, "Conv": 1, "float_by_design": 1}
    with pytest.raises(ExportError) as caught:
        int8_convolutions(tmp_path / "q.onnx", prepared, [])
    assert str(caught.value) == (
        "1 convolution(s) of the int8 model would run in float in ONNX Runtime (not fused into QLinearConv)"
    )
    quantize_int8(prepared, tmp_path / "both.onnx", calibration(), keep_float=["conv1", "conv2"])
    with pytest.raises(ExportError, match="^1 convolution"):  # two in float, one of them announced
        int8_convolutions(tmp_path / "both.onnx", prepared, ["conv1"])
    quantize_int8(prepared, tmp_path / "all.onnx", calibration())
    assert int8_convolutions(tmp_path / "all.onnx", prepared, []) == {"QLinearConv": 2, "Conv": 0, "float_by_design": 0}


def test_a_tensor_read_by_two_layers_gets_a_quantization_pair_for_each(tmp_path):
    """The CAM head shares the last feature map with the classifier: its own Q/DQ pair keeps the classifier's
    path quantized (and fused) exactly as without the head."""
    rng = np.random.default_rng(1)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
        for name, shape in (
            ("W1", (4, 1, 3, 3)),
            ("W2", (4, 4, 1, 1)),
            ("W3", (4, 4, 1, 1)),
            ("W4", (4, 4)),
            ("B4", (4,)),
        )
    ]
    nodes = [
        helper.make_node("Conv", ["image", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["shared"], name="relu1"),
        helper.make_node("Conv", ["shared", "W2"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["shared", "W3"], ["c3"], name="conv3"),
        helper.make_node("Add", ["c2", "c3"], ["sum"], name="add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "W4", "B4"], ["logits"], name="gemm", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        init,
    )
    prepare_graph(save_model(graph, tmp_path / "m.onnx", metadata(input_size=32)), tmp_path / "pre.onnx")
    quantize_int8(tmp_path / "pre.onnx", tmp_path / "q.onnx", calibration())
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    shared = next(n.output[0] for n in graph.node if n.op_type == "Relu" or n.name == "conv1")  # fused or not
    pairs = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == shared]
    assert len(pairs) == 2


def test_the_fusion_check_leaves_no_file_behind(prepared, tmp_path, monkeypatch):
    """ONNX Runtime writes the optimised graph it is asked for: into a temporary folder, never the working one."""
    quantize_int8(prepared, tmp_path / "int8.onnx", calibration())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert int8_convolutions(tmp_path / "int8.onnx", prepared, [])["Conv"] == 0
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "work"]


def test_what_the_quantizer_prints_stays_off_the_users_terminal(tmp_path, monkeypatch, capsys):
    """onnxruntime's quantization tools print progress and advice with print(): tumor-export's output (and a
    JSON report piped from it) must not carry them."""
    from tumor_export import static_int8

    def chatty(real):
        def call(*args, **kwargs):
            print("quantizer chatter")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(static_int8, "quant_pre_process", chatty(static_int8.quant_pre_process))
    monkeypatch.setattr(static_int8, "quantize_static", chatty(static_int8.quantize_static))
    prepare_graph(conv_model(tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    quantize_int8(tmp_path / "pre.onnx", tmp_path / "int8.onnx", calibration())
    assert (tmp_path / "int8.onnx").is_file() and "chatter" not in capsys.readouterr().out
