"""torch -> ONNX FP32 and the checks every export passes (`export/onnx_export.py`), on an untrained model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tests.helpers.checkpoints import model_checkpoint
from tumor_export import onnx_export
from tumor_export.onnx_export import (
    ExportError,
    check_against_torch,
    check_onnx,
    export_fp32,
    fixed_inputs,
    supports_cam,
    torch_cam,
)
from tumor_runtime.model import session as runtime_model
from tumor_train.model_file import load_model
from tumor_train.models import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, path of its FP32 ONNX export at 32 px)."""
    folder = tmp_path_factory.mktemp("onnx")
    model, _ = load_model(model_checkpoint(folder / "model.pth", seed=4))
    has_cam = export_fp32(model, 32, folder / "model.onnx")
    assert has_cam is True
    return model, folder / "model.onnx"


def test_the_graph_has_the_contract_names_and_any_batch_size(exported):
    model, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["probabilities", "logits", "cam", "features"]
    assert {o.name: o.type.tensor_type.shape.dim[0].dim_param for o in graph.output}["probabilities"]
    session = runtime_model.create_session(path)
    probs, logits, cam, features = session.run(None, {"image": fixed_inputs(32, count=3)})
    x = torch.from_numpy(fixed_inputs(32, count=3))
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(probs, torch.softmax(expected, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(cam, torch_cam(model, x).numpy(), atol=1e-4)
    assert features.shape == (3, model.head[-1].in_features)


def test_an_export_agrees_with_torch_and_the_gap_is_returned(exported):
    model, path = exported
    diff = check_against_torch(path, model, fixed_inputs(32))
    assert 0 <= diff <= 1e-4


def test_a_graph_that_answers_otherwise_is_refused(exported, tmp_path):
    model, path = exported
    other, _ = load_model(model_checkpoint(tmp_path / "other.pth", seed=5))
    with pytest.raises(ExportError, match=r"^ONNX Runtime and torch disagree by \d\.\d\de[-+]\d\d \(allowed 1e-04\)$"):
        check_against_torch(path, other, fixed_inputs(32))
    with pytest.raises(ExportError, match="class activation maps disagree"):  # probabilities pass at a loose
        check_against_torch(path, other, fixed_inputs(32), atol=1.0)  # tolerance; the maps are checked next


class Skewed:
    """A session whose `name` output is off by `by` (a graph whose CAM or features branch is wrong)."""

    def __init__(self, session, name, by):
        self.session, self.name, self.by = session, name, by

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feeds):
        out = self.session.run(names, feeds)
        return [o + self.by if n == self.name else o for n, o in zip(names, out)]


@pytest.mark.parametrize("output, message", [("cam", "class activation maps"), ("features", "pooled features")])
def test_a_wrong_cam_or_features_branch_is_refused(exported, monkeypatch, output, message):
    model, path = exported
    real = runtime_model.create_session
    monkeypatch.setattr(runtime_model, "create_session", lambda p: Skewed(real(p), output, 0.01))
    with pytest.raises(ExportError, match=rf"^ONNX Runtime and torch {message} disagree by 1\.00e-02 \(relative\)$"):
        check_against_torch(path, model, fixed_inputs(32))
    monkeypatch.setattr(runtime_model, "create_session", lambda p: Skewed(real(p), output, 5e-5))
    check_against_torch(path, model, fixed_inputs(32))  # within 1e-4 of the largest value: passes


def test_the_checker_refusal_names_the_file(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="^onnx.checker rejected broken.onnx: "):
        check_onnx(tmp_path / "broken.onnx")


def test_fixed_inputs_are_seeded_standard_normal():
    a = fixed_inputs(16, count=5, seed=3)
    assert a.shape == (5, 1, 16, 16) and a.dtype == np.float32
    assert np.array_equal(a, fixed_inputs(16, count=5, seed=3)) and not np.array_equal(a, fixed_inputs(16, 5, 4))
    assert fixed_inputs(16).shape[0] == 8 and np.array_equal(fixed_inputs(16)[:1], fixed_inputs(16, 1, 0))
    assert abs(float(fixed_inputs(64, 16).std()) - 1) < 0.05


def test_cam_needs_a_pooled_linear_head():
    assert supports_cam(build_model("compact", num_classes=4, width=4))
    assert not supports_cam(build_model("alexnet", num_classes=4))
    assert not supports_cam(torch.nn.Linear(2, 2))
    assert onnx_export.OPSET == 18


def test_without_a_cam_head_the_wrapper_gives_probabilities_and_logits():
    model = build_model("compact", num_classes=4, width=4).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        outputs = onnx_export.WithProbabilities(model, cam=False)(x)
        logits = model(x)
    assert len(outputs) == 2
    torch.testing.assert_close(outputs[1], logits)
    torch.testing.assert_close(outputs[0], torch.softmax(logits, dim=1))


def test_the_graph_uses_the_kits_opset(exported):
    _, path = exported
    versions = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert versions[""] == onnx_export.OPSET == 18


def test_the_checker_message_carries_the_checkers_reason(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError) as caught:
        check_onnx(tmp_path / "broken.onnx")
    reason = str(caught.value).split(": ", 1)[1]
    assert reason and reason != "None" and "\n" not in reason


def test_a_model_without_a_cam_head_exports_probabilities_and_logits_only(tmp_path):
    """The reference AlexNet's case (no pooled linear head), on a tiny stand-in: two outputs, checked against torch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    assert export_fp32(model, 32, tmp_path / "plain.onnx") is False
    assert [o.name for o in onnx.load(str(tmp_path / "plain.onnx")).graph.output] == ["probabilities", "logits"]
    assert check_against_torch(tmp_path / "plain.onnx", model, fixed_inputs(32, count=3)) <= 1e-5


def test_an_export_names_its_batch_axis_and_prints_nothing(tmp_path, capsys):
    """Any batch size, on an axis named "batch" (what Netron and ONNX tools show); the exporter's own report
    (printed unless told otherwise) must not reach tumor-export's output."""
    model = build_model("compact", num_classes=4, width=4).eval()
    assert export_fp32(model, 32, tmp_path / "m.onnx") is True
    assert capsys.readouterr().out == ""
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim][0] == "batch"
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == [1, 32, 32]


def test_the_cam_and_feature_checks_are_relative_to_their_scale(exported):
    """Large activations (an input 1e5 times brighter than a normalised one) put ONNX Runtime and torch more
    than 1e-4 apart in absolute terms (float32 rounding: about 1.5e-4 on features near 300) but not relatively:
    a correct export is accepted."""
    model, path = exported
    assert check_against_torch(path, model, fixed_inputs(32, count=4) * np.float32(1e5)) <= 1e-4


def test_the_checker_runs_full_shape_inference(tmp_path):
    """A graph whose declared shapes contradict its operators passes onnx's basic check, not the full one."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])  # x + x cannot have 3 elements
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "bad.onnx"))
    onnx.checker.check_model(onnx.load(str(tmp_path / "bad.onnx")))  # the basic check lets it through
    with pytest.raises(ExportError, match=r"^onnx.checker rejected bad.onnx: \[ShapeInferenceError\]"):
        check_onnx(tmp_path / "bad.onnx")
