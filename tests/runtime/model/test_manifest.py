"""`runtime/model/manifest.py`: the manifest a model must be vouched for by, and the shipped model's place."""

from __future__ import annotations

import json
import os

import pytest

from tumor_runtime.core import fileio
from tumor_runtime.core.errors import ModelError
from tumor_runtime.model import session as model_module
from tumor_runtime.model.manifest import read_manifest, verify_manifest

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


def write_manifest(folder, content) -> None:
    (folder / "manifest.json").write_text(content if isinstance(content, str) else json.dumps(content))


def test_read_manifest_gives_files_and_replacing_and_none_without_one(tmp_path):
    assert read_manifest(tmp_path) is None
    write_manifest(tmp_path, {"files": {"m.onnx": "ab"}})
    assert read_manifest(tmp_path) == {"files": {"m.onnx": "ab"}, "replacing": {}}
    write_manifest(tmp_path, {"files": {"m.onnx": "ab"}, "replacing": {"m.onnx": "cd"}})
    assert read_manifest(tmp_path) == {"files": {"m.onnx": "ab"}, "replacing": {"m.onnx": "cd"}}


@pytest.mark.parametrize(
    "content",
    [
        {"files": {"m.onnx": 1}},
        {"files": {}, "replacing": []},
        {"files": {}, "replacing": {"m": None}},
        {"other": {}},
        "[" * 100000,
    ],
)
def test_read_manifest_refuses_anything_but_names_to_hashes(tmp_path, content):
    write_manifest(tmp_path, content)
    with pytest.raises(
        ModelError,
        match=r"manifest.json is not a valid manifest \(unreadable, or not "
        r"\{\"files\": \{name: sha256\}\}\)$",
    ):
        read_manifest(tmp_path)


def test_verify_manifest_accepts_only_the_hash_listed_for_this_file_name(tmp_path):
    model, other = tmp_path / "m.onnx", tmp_path / "other.onnx"
    model.write_bytes(b"model")
    other.write_bytes(b"other")
    verify_manifest(model)  # no manifest: nothing to check
    digest = {p.name: fileio.sha256_file(p) for p in (model, other)}
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
    write_manifest(real, {"files": {"m.onnx": fileio.sha256_file(real / "m.onnx")}})
    link_folder = tmp_path / "links"
    link_folder.mkdir()
    write_manifest(link_folder, {"files": {"link.onnx": "0" * 64}})
    os.symlink(real / "m.onnx", link_folder / "link.onnx")
    verify_manifest(link_folder / "link.onnx")


def test_the_default_model_is_the_packaged_one_or_the_checkouts(tmp_path, monkeypatch):
    import importlib.resources

    from tests.helpers.datasets import REPO

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
    assert str(caught.value) == (
        f"m.onnx is not listed in {tmp_path / 'manifest.json'}: refusing a model the export "
        "did not vouch for (pass verify=False / remove the manifest to use it anyway)"
    )
    write_manifest(tmp_path, {"files": {"m.onnx": "0" * 64}})
    with pytest.raises(ModelError) as caught:
        verify_manifest(model)
    assert str(caught.value) == (
        f"{model} does not match the sha256 in {tmp_path / 'manifest.json'}: refusing a modified or corrupt model"
    )
