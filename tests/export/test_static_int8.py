"""Every convolution of the int8 model really runs as an int8 kernel in ONNX Runtime (or is float on purpose)."""

from __future__ import annotations

import json

import pytest

from tests.onnx_fakes import conv_model


def test_the_export_reports_fused_int8_convolutions(exported):
    report = json.loads((exported / "export_report.json").read_text())
    kernels = report["int8_kernels"]
    assert kernels["QLinearConv"] >= 5 and kernels["Conv"] == kernels["float_by_design"] == 1  # the CAM head


def test_a_convolution_left_in_float_unannounced_is_refused(tmp_path):
    import numpy as np
    import onnx

    from tumor_export.calibration import ArrayReader
    from tumor_export.onnx_export import ExportError
    from tumor_export.static_int8 import int8_convolutions, prepare_graph, quantize_int8

    prepare_graph(conv_model(tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    convs = [n.name for n in onnx.load(str(tmp_path / "pre.onnx")).graph.node if n.op_type == "Conv"]
    inputs = np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32)
    quantize_int8(tmp_path / "pre.onnx", tmp_path / "q.onnx", ArrayReader(inputs, "image"), keep_float=convs[:1])
    assert int8_convolutions(tmp_path / "q.onnx", tmp_path / "pre.onnx", convs[:1])["Conv"] == 1  # announced
    with pytest.raises(ExportError, match="would run in float"):
        int8_convolutions(tmp_path / "q.onnx", tmp_path / "pre.onnx", [])
