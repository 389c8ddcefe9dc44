"""The export's `cam` output: exact against torch in FP32, close in int8, absent where the head has no CAM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from tumor_runtime.inference.classifier import Classifier
from tumor_runtime.model.session import create_session


def test_cam_output_matches_torch(trained, exported):
    """ONNX FP32 `cam` vs torch's own computation (einsum of the head weights and the last feature map):
    relative difference at most 1e-4 of the map's largest magnitude."""
    import torch

    from tumor_export.onnx_export import torch_cam
    from tumor_train.model_file import load_model

    model, ckpt = load_model(trained / "model.pth")
    size = ckpt["preprocess"]["size"]
    x = np.random.default_rng(2).normal(0, 1, (3, 1, size, size)).astype(np.float32)
    session = create_session(exported / "model.onnx")
    cam, logits = session.run(["cam", "logits"], {"image": x})
    expected = torch_cam(model, torch.from_numpy(x)).numpy()
    assert cam.shape == expected.shape and cam.shape[:2] == (3, 4) and cam.shape[2] == cam.shape[3] > 1
    assert np.abs(cam - expected).max() <= 1e-4 * np.abs(expected).max()
    # The CAM is exact for a GAP + linear head: its spatial mean plus the bias gives the logits.
    bias = model.head[-1].bias.detach().numpy()
    np.testing.assert_allclose(cam.mean(axis=(2, 3)) + bias, logits, atol=1e-4)


def test_int8_cam_is_close_and_probabilities_do_not_change(trained, exported, tmp_path):
    """The int8 model has the `cam` output too, and adding it did not change the int8 probabilities:
    the same graph without `cam`, quantized with the same calibration, gives the same probabilities."""
    from tumor_export.calibration import ArrayReader, load_inputs, sample_files
    from tumor_export.static_int8 import prepare_graph, quantize_int8

    session = create_session(exported / "model.int8.onnx")
    assert "cam" in [o.name for o in session.get_outputs()]
    report = json.loads((exported / "export_report.json").read_text())
    no_cam = onnx.load(str(exported / "model.onnx"))
    keep = [o for o in no_cam.graph.output if o.name != "cam"]
    del no_cam.graph.output[:]
    no_cam.graph.output.extend(keep)
    onnx.save(no_cam, str(tmp_path / "nocam.onnx"))
    prepare_graph(tmp_path / "nocam.onnx", tmp_path / "nocam.pre.onnx")
    import torch

    ckpt = torch.load(trained / "model.pth", weights_only=True)
    excluded = {(Path(ckpt["data"]["root"]) / f).resolve() for f in ckpt["data"]["val_files"]}
    files = sample_files(Path(ckpt["data"]["train_dir"]), 32, 0, excluded)  # as the export drew them
    assert report["calibration"]["folder"] == Path(ckpt["data"]["train_dir"]).name
    info = Classifier.load(exported / "model.int8.onnx").info
    calib = load_inputs(files, info.input_size, info.mean, info.std, info.crop)
    quantize_int8(tmp_path / "nocam.pre.onnx", tmp_path / "nocam.int8.onnx", ArrayReader(calib, "image"), "percentile")
    x = calib[:8]
    with_cam = session.run(["probabilities"], {"image": x})[0]
    without = create_session(tmp_path / "nocam.int8.onnx").run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(with_cam, without, atol=1e-6)
    fp32_cam = create_session(exported / "model.onnx").run(["cam"], {"image": x})[0]
    int8_cam = session.run(["cam"], {"image": x})[0]
    # int8 features clip their rare brightest activations (percentile calibration), so the maps are
    # compared by shape: the correlation of each image's predicted-class map, int8 against FP32.
    predicted = with_cam.argmax(1)
    corr = [np.corrcoef(fp32_cam[i, c].ravel(), int8_cam[i, c].ravel())[0, 1] for i, c in enumerate(predicted)]
    print("int8 vs FP32 CAM correlation", np.round(corr, 3))
    assert np.mean(corr) >= 0.9 and min(corr) >= 0.7


def test_alexnet_exports_without_cam(tmp_path):
    from tumor_export.onnx_export import export_fp32, supports_cam
    from tumor_train.models import build_model

    alexnet, compact = build_model("alexnet", num_classes=4), build_model("compact", num_classes=4, width=8)
    assert not supports_cam(alexnet) and supports_cam(compact)
    assert export_fp32(compact, 227, tmp_path / "c.onnx") is True
    assert [o.name for o in onnx.load(str(tmp_path / "c.onnx")).graph.output] == [
        "probabilities",
        "logits",
        "cam",
        "features",
    ]
