"""`runtime/model.py`: what a model file must be before the runtime trusts it (graph, metadata, manifest)."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import infer, one_line_error
from tests.onnx_fakes import tiny_model
from tumor_runtime.classifier import Classifier
from tumor_runtime.model import ModelError

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


@pytest.mark.parametrize("change, word", [
    ({"outputs": 3}, "3 outputs"), ({"graph_size": 128}, "input shape"), ({"std": 0}, "std"),
    ({"input_size": 0}, "input_size"), ({"input_size": -5}, "input_size"), ({"tumor_threshold": "nan"}, "threshold"),
    ({"classes": '["a"]'}, "classes"), ({"mean": "nan"}, "mean"),
])
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
