"""`runtime/model/session.py`: what a model file and its graph must be before the runtime trusts it."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers.onnx_fakes import metadata, tiny_model
from tests.helpers.processes import infer, one_line_error
from tumor_runtime.core.errors import ModelError
from tumor_runtime.inference.classifier import Classifier
from tumor_runtime.model import session as model_module
from tumor_runtime.model.info import ModelInfo
from tumor_runtime.model.session import check_graph

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


@pytest.mark.parametrize(
    "change, word",
    [
        ({"outputs": 3}, "3 outputs"),
        ({"graph_size": 128}, "input shape"),
        ({"std": 0}, "std"),
        ({"input_size": 0}, "input_size"),
        ({"input_size": -5}, "input_size"),
        ({"tumor_threshold": "nan"}, "threshold"),
        ({"classes": '["a"]'}, "classes"),
        ({"mean": "nan"}, "mean"),
    ],
)
def test_03_graph_and_metadata_must_agree(tmp_path, images, change, word):
    model = tiny_model(tmp_path / "bad.onnx", **change)
    with pytest.raises(ModelError, match=word):
        Classifier.load(model)
    one_line_error(infer([images, "-r", "--model", model]))


def test_03_a_consistent_fake_model_loads(tmp_path, images):
    assert Classifier.load(tiny_model(tmp_path / "ok.onnx")).predict(next(images.rglob("*.jpg")))[0]["error"] is None


@pytest.mark.parametrize("manifest", ["[1, 2]", "{not json", "folder", '{"files": [1]}'])
def test_12_bad_manifest(exported, images, tmp_path, manifest):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(exported / "model.int8.onnx", folder)
    if manifest == "folder":
        (folder / "manifest.json").mkdir()
    else:
        (folder / "manifest.json").write_text(manifest)
    result = infer([images, "-r", "--model", folder / "model.int8.onnx"])
    one_line_error(result)
    assert "manifest" in result.stderr


def write_manifest(folder, content) -> None:
    (folder / "manifest.json").write_text(content if isinstance(content, str) else json.dumps(content))


def test_create_session_takes_the_asked_threads_within_the_available_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(model_module, "available_cores", lambda: 3)
    path = tiny_model(tmp_path / "m.onnx")
    options = model_module.create_session(path, threads=2).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert model_module.create_session(path, threads=64).get_session_options().intra_op_num_threads == 3
    assert model_module.create_session(path).get_session_options().intra_op_num_threads == 3
    spinning = model_module.create_session(path, threads=1, spinning=True).get_session_options()
    with pytest.raises(RuntimeError):  # spinning: the entry is left at ONNX Runtime's default (unset)
        spinning.get_session_config_entry("session.intra_op.allow_spinning")


class FakeSession:
    """Just enough of an InferenceSession for check_graph: ports and a run that returns `answer`."""

    def __init__(
        self, shape=("N", 1, 227, 227), answer=np.full((1, 4), 0.25, np.float32), outputs=("probabilities",), inputs=1
    ):
        self.shape, self.answer, self.outputs, self.inputs, self.asked = shape, answer, outputs, inputs, []

    def get_inputs(self):
        return [SimpleNamespace(name="image", shape=list(self.shape))] * self.inputs

    def get_outputs(self):
        return [SimpleNamespace(name=name) for name in self.outputs]

    def run(self, names, feeds):
        self.asked.append((names, {k: v.shape for k, v in feeds.items()}))
        if isinstance(self.answer, Exception):
            raise self.answer
        return [self.answer]


INFO = ModelInfo.from_metadata(metadata())


def test_check_graph_feeds_one_blank_image_by_the_inputs_name_and_reads_probabilities():
    session = FakeSession(outputs=("logits", "probabilities"))
    check_graph(session, INFO)
    assert session.asked == [(["probabilities"], {"image": (1, 1, 227, 227)})]
    check_graph(FakeSession(shape=(None, 1, 227, 227), outputs=("out",)), INFO)  # a foreign model: its first output
    assert model_module.output_name(FakeSession(outputs=("out", "other"))) == "out"


@pytest.mark.parametrize(
    "session, message",
    [
        (FakeSession(inputs=2), "the model has 2 inputs; a tumor-kit model has one image input"),
        (
            FakeSession(shape=("N", 1, 227)),
            "the model's input shape ['N', 1, 227] does not match its metadata (N, 1, 227, 227)",
        ),
        (FakeSession(shape=(1, 3, 227, 227)), "the model's input shape [1, 3, 227, 227] does not match"),
        (FakeSession(shape=("N", 1, 227, 226)), "the model's input shape ['N', 1, 227, 226] does not match"),
        (
            FakeSession(answer=RuntimeError("boom")),
            "the model does not run on a (1, 1, 227, 227) input as its metadata says (RuntimeError)",
        ),
        (
            FakeSession(answer=np.zeros((1, 3), np.float32)),
            "the model gives 3 outputs per image but its metadata names 4 classes",
        ),
        (FakeSession(answer=np.float32(1)), "the model gives 0 outputs per image but its metadata names 4 classes"),
        (
            FakeSession(answer=np.array([[0.5, np.nan, 0, 0]], np.float32)),
            "the model gives non-finite outputs on a blank image",
        ),
    ],
)
def test_check_graph_refuses_a_graph_that_disagrees_with_its_metadata(session, message):
    with pytest.raises(ModelError) as caught:
        check_graph(session, INFO)
    assert str(caught.value) == message or str(caught.value).startswith(message)


def test_open_session_refuses_a_missing_file_and_a_file_that_is_not_onnx(tmp_path):
    with pytest.raises(
        ModelError, match=r"^model .*absent.onnx does not exist; pass --model or export one with tumor-export$"
    ):
        model_module.open_session(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"junk.onnx is not a loadable ONNX model \(\w+\)$"):
        model_module.open_session(tmp_path / "junk.onnx")
    session, info = model_module.open_session(tiny_model(tmp_path / "ok.onnx"), threads=1)
    assert info.input_size == 227 and session.get_inputs()[0].name == "image"


def test_open_session_checks_the_manifest_unless_told_not_to(tmp_path):
    path = tiny_model(tmp_path / "ok.onnx")
    write_manifest(tmp_path, {"files": {"ok.onnx": "0" * 64}})
    with pytest.raises(ModelError, match="does not match the sha256"):
        model_module.open_session(path)
    assert model_module.open_session(path, verify=False)[1].input_size == 227


def test_open_session_gives_the_asked_backend_and_threads(monkeypatch):
    pytest.importorskip("openvino")
    from tumor_runtime.model.backends import OpenVinoSession

    monkeypatch.setattr(model_module, "available_cores", lambda: 2)
    session, info = model_module.open_session(None, threads=1, backend="openvino")
    assert isinstance(session, OpenVinoSession) and info.input_size == 160
    assert session.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    session, _ = model_module.open_session(None, threads=None, backend="openvino")
    assert session.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    session, _ = model_module.open_session(None, threads=1, backend="onnxruntime")
    assert session.get_session_options().intra_op_num_threads == 1


def test_an_unloadable_file_names_the_loaders_error(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError) as caught:
        model_module.open_session(tmp_path / "junk.onnx")
    kind = str(caught.value).rsplit("(", 1)[1].rstrip(")")
    assert kind and kind != "NoneType"
