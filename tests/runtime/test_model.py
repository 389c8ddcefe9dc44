"""`runtime/model.py`: what a model file must be before the runtime trusts it (graph, metadata, manifest)."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import infer, one_line_error
from tests.onnx_fakes import metadata, tiny_model
from tumor_runtime import model as model_module
from tumor_runtime.classifier import Classifier
from tumor_runtime.model import ModelError, ModelInfo, check_graph, read_manifest, verify_manifest

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


# ModelInfo and the file checks, one rule at a time (no ONNX Runtime session needed for most).


def test_metadata_gives_every_field_with_defaults_for_the_optional_ones():
    info = ModelInfo.from_metadata(metadata())
    assert (info.classes, info.input_size, info.mean, info.std) == (
        ["glioma", "meningioma", "notumor", "pituitary"], 227, 0.2, 0.2)
    assert (info.negative_class, info.tumor_threshold, info.arch, info.crop, info.ood) == ("notumor", 0.5, "fake", "none", None)
    assert info.metadata == metadata()
    bare = {k: v for k, v in metadata().items() if k != "arch"} | {"crop": "brain"}
    assert ModelInfo.from_metadata(bare).arch == "unknown" and ModelInfo.from_metadata(bare).crop == "brain"


@pytest.mark.parametrize("change, message", [
    ({"classes": '["a", "a"]'}, "model metadata lists invalid classes ['a', 'a']"),
    ({"classes": '["a", ""]'}, "model metadata lists invalid classes ['a', '']"),
    ({"classes": '["a", 3]'}, "model metadata lists invalid classes ['a', 3]"),
    ({"classes": '{"a": 1, "b": 2}'}, "model metadata lists invalid classes {'a': 1, 'b': 2}"),
    ({"input_size": 4097}, "model metadata input_size 4097 is not in 1..4096"),
    ({"negative_class": "healthy"}, "model metadata negative_class 'healthy' is not one of its classes "
                                    "['glioma', 'meningioma', 'notumor', 'pituitary']: the tumor columns could not be computed"),
    ({"crop": "skull"}, "model metadata asks for crop 'skull', which this runtime does not know (none, brain): upgrade tumor-kit"),
    ({"mean": 1.5}, "model metadata mean 1.5 / std 0.2 is invalid"),
    ({"mean": -0.1}, "model metadata mean -0.1 / std 0.2 is invalid"),
    ({"std": 1.5}, "model metadata mean 0.2 / std 1.5 is invalid"),
    ({"std": "inf"}, "model metadata mean 0.2 / std inf is invalid"),
    ({"tumor_threshold": 1.5}, "model metadata tumor_threshold must be a finite number in [0.0, 1.0], got 1.5"),
    ({"input_size": "x"}, "model metadata is incomplete (invalid literal for int() with base 10: 'x'); export it with tumor-export"),
    ({"ood": "{}"}, "model metadata: "),
])
def test_each_metadata_rule_refuses_with_its_own_message(change, message):
    with pytest.raises(ModelError) as caught:
        ModelInfo.from_metadata(metadata(**change))
    assert str(caught.value).startswith(message)


def test_the_bounds_themselves_are_accepted():
    info = ModelInfo.from_metadata(metadata(input_size=4096, mean=0, std=1, tumor_threshold=1, classes='["a", "notumor"]'))
    assert (info.input_size, info.mean, info.std, info.tumor_threshold) == (4096, 0.0, 1.0, 1.0)
    assert ModelInfo.from_metadata(metadata(input_size=1, mean=1, tumor_threshold=0)).input_size == 1


def test_a_missing_key_names_it():
    meta = metadata()
    del meta["std"]
    with pytest.raises(ModelError, match=r"^model metadata is incomplete \('std'\); export it with tumor-export$"):
        ModelInfo.from_metadata(meta)


def write_manifest(folder, content) -> None:
    (folder / "manifest.json").write_text(content if isinstance(content, str) else json.dumps(content))


def test_read_manifest_gives_files_and_replacing_and_none_without_one(tmp_path):
    assert read_manifest(tmp_path) is None
    write_manifest(tmp_path, {"files": {"m.onnx": "ab"}})
    assert read_manifest(tmp_path) == {"files": {"m.onnx": "ab"}, "replacing": {}}
    write_manifest(tmp_path, {"files": {"m.onnx": "ab"}, "replacing": {"m.onnx": "cd"}})
    assert read_manifest(tmp_path) == {"files": {"m.onnx": "ab"}, "replacing": {"m.onnx": "cd"}}


@pytest.mark.parametrize("content", [{"files": {"m.onnx": 1}}, {"files": {}, "replacing": []},
                                     {"files": {}, "replacing": {"m": None}}, {"other": {}}, "[" * 100000])
def test_read_manifest_refuses_anything_but_names_to_hashes(tmp_path, content):
    write_manifest(tmp_path, content)
    with pytest.raises(ModelError, match=r"manifest.json is not a valid manifest \(unreadable, or not "
                                         r"\{\"files\": \{name: sha256\}\}\)$"):
        read_manifest(tmp_path)


def test_verify_manifest_accepts_only_the_hash_listed_for_this_file_name(tmp_path):
    model, other = tmp_path / "m.onnx", tmp_path / "other.onnx"
    model.write_bytes(b"model")
    other.write_bytes(b"other")
    verify_manifest(model)  # no manifest: nothing to check
    digest = {p.name: model_module.sha256_file(p) for p in (model, other)}
    write_manifest(tmp_path, {"files": {"m.onnx": digest["m.onnx"]}})
    verify_manifest(model)
    write_manifest(tmp_path, {"files": {"m.onnx": "0" * 64}, "replacing": {"m.onnx": digest["m.onnx"]}})
    verify_manifest(model)  # mid-export: the file being replaced is still vouched for
    write_manifest(tmp_path, {"files": {"m.onnx": digest["other.onnx"], "other.onnx": digest["m.onnx"]}})
    with pytest.raises(ModelError, match="does not match the sha256 in"):
        verify_manifest(model)  # a hash the manifest lists for another file does not vouch for this one
    write_manifest(tmp_path, {"files": {"other.onnx": digest["m.onnx"]}})
    with pytest.raises(ModelError, match=r"^m.onnx is not listed in .*manifest.json: refusing a model"):
        verify_manifest(model)


def test_a_symlinked_model_is_judged_by_the_manifest_beside_its_target(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "m.onnx").write_bytes(b"model")
    write_manifest(real, {"files": {"m.onnx": model_module.sha256_file(real / "m.onnx")}})
    link_folder = tmp_path / "links"
    link_folder.mkdir()
    write_manifest(link_folder, {"files": {"link.onnx": "0" * 64}})
    os.symlink(real / "m.onnx", link_folder / "link.onnx")
    verify_manifest(link_folder / "link.onnx")


@pytest.mark.parametrize("text, cores", [("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1),
                                         ("1 100000", 1), ("max 100000", None), ("garbage", None)])
def test_cgroup_cpu_limit_rounds_the_quota_up(tmp_path, text, cores):
    (tmp_path / "cpu.max").write_text(text)
    assert model_module.cgroup_cpu_limit(str(tmp_path / "cpu.max")) == cores
    assert model_module.cgroup_cpu_limit(str(tmp_path / "absent")) is None


def test_available_cores_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(model_module, "cgroup_cpu_limit", lambda: None)
    assert model_module.available_cores() == 4
    monkeypatch.setattr(model_module, "cgroup_cpu_limit", lambda: 3)
    assert model_module.available_cores() == 3
    monkeypatch.setattr(model_module, "cgroup_cpu_limit", lambda: 8)
    assert model_module.available_cores() == 4
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setattr(model_module, "cgroup_cpu_limit", lambda: None)
    assert model_module.available_cores() == 6


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

    def __init__(self, shape=("N", 1, 227, 227), answer=np.full((1, 4), 0.25, np.float32), outputs=("probabilities",),
                 inputs=1):
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


@pytest.mark.parametrize("session, message", [
    (FakeSession(inputs=2), "the model has 2 inputs; a tumor-kit model has one image input"),
    (FakeSession(shape=("N", 1, 227)), "the model's input shape ['N', 1, 227] does not match its metadata (N, 1, 227, 227)"),
    (FakeSession(shape=(1, 3, 227, 227)), "the model's input shape [1, 3, 227, 227] does not match"),
    (FakeSession(shape=("N", 1, 227, 226)), "the model's input shape ['N', 1, 227, 226] does not match"),
    (FakeSession(answer=RuntimeError("boom")), "the model does not run on a (1, 1, 227, 227) input as its metadata says (RuntimeError)"),
    (FakeSession(answer=np.zeros((1, 3), np.float32)), "the model gives 3 outputs per image but its metadata names 4 classes"),
    (FakeSession(answer=np.float32(1)), "the model gives 0 outputs per image but its metadata names 4 classes"),
    (FakeSession(answer=np.array([[0.5, np.nan, 0, 0]], np.float32)), "the model gives non-finite outputs on a blank image"),
])
def test_check_graph_refuses_a_graph_that_disagrees_with_its_metadata(session, message):
    with pytest.raises(ModelError) as caught:
        check_graph(session, INFO)
    assert str(caught.value) == message or str(caught.value).startswith(message)


def test_open_session_refuses_a_missing_file_and_a_file_that_is_not_onnx(tmp_path):
    with pytest.raises(ModelError, match=r"^model .*absent.onnx does not exist; pass --model or export one with tumor-export$"):
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


def test_the_default_model_is_the_packaged_one_or_the_checkouts(tmp_path, monkeypatch):
    import importlib.resources

    from tests.conftest import REPO

    assert model_module.default_model_path() == REPO / "artifacts" / "model.int8.onnx"
    (tmp_path / "model.int8.onnx").write_bytes(b"x")
    asked = []
    monkeypatch.setattr(importlib.resources, "files", lambda name: asked.append(name) or tmp_path)
    assert model_module.default_model_path() == tmp_path / "model.int8.onnx" and asked == ["tumor_runtime.artifacts"]


def test_the_manifest_refusals_say_how_to_proceed(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    write_manifest(tmp_path, {"files": {"other.onnx": "0" * 64}})
    with pytest.raises(ModelError) as caught:
        verify_manifest(model)
    assert str(caught.value) == (f"m.onnx is not listed in {tmp_path / 'manifest.json'}: refusing a model the export "
                                 "did not vouch for (pass verify=False / remove the manifest to use it anyway)")
    write_manifest(tmp_path, {"files": {"m.onnx": "0" * 64}})
    with pytest.raises(ModelError) as caught:
        verify_manifest(model)
    assert str(caught.value) == (f"{model} does not match the sha256 in {tmp_path / 'manifest.json'}: refusing a "
                                 "modified or corrupt model")


def test_open_session_gives_the_asked_backend_and_threads(monkeypatch):
    pytest.importorskip("openvino")
    from tumor_runtime.backends import OpenVinoSession

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
