"""The training-file names a model carries, and `--evaluate` saying when it scores images the model saw."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.processes import run_infer
from tumor_export.metadata import write_metadata
from tumor_runtime.core import provenance
from tumor_runtime.core.errors import ModelError
from tumor_runtime.model.info import ModelInfo
from tumor_runtime.model.session import open_session

NAME = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n/\\\x00"), min_size=1, max_size=40
).filter(lambda n: n not in (".", "..") and n.strip() == n)


@given(st.lists(NAME, max_size=60))
def test_names_survive_the_metadata_record(names):
    assert provenance.decode(provenance.encode(names)) == frozenset(names)


def test_a_key_is_the_class_and_the_file_name_only():
    assert provenance.key("glioma", "/home/me/Training/glioma/patient1/Tr-gl_0001.jpg") == "glioma/Tr-gl_0001.jpg"


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: "not json",
        lambda r: json.dumps({"count": 1}),
        lambda r: json.dumps(json.loads(r) | {"names_xz_base64": "!!!"}),
        lambda r: json.dumps(json.loads(r) | {"count": 3}),
    ],
)
def test_a_damaged_record_is_refused(damage):
    with pytest.raises(ValueError):
        provenance.decode(damage(provenance.encode(["a.jpg", "b.jpg"])))


def test_seen_in_training_counts_by_class_and_file_name():
    keys = frozenset({"glioma/img_1.jpg", "meningioma/img_2.jpg"})
    paths = ["x/glioma/img_1.jpg", "y/img_2.jpg", "img_1.jpg", "z/Te-gl_0001.jpg"]
    assert (
        provenance.seen_in_training(paths, [0, 1, 1, 0], ["glioma", "meningioma"], keys) == 2
    )  # not img_1 as meningioma


def test_the_export_records_what_training_trained_on(exported, trained):
    import torch

    ckpt = torch.load(trained / "model.pth", weights_only=True)
    info = ModelInfo.from_metadata(
        {p.key: p.value for p in onnx.load(str(exported / "model.int8.onnx")).metadata_props}
    )
    assert info.training_names == frozenset(ckpt["data"]["train_files"]) and info.training_names
    held_out = {provenance.key(f.split("/")[-2], f) for f in ckpt["data"]["val_files"]}
    assert held_out and not held_out & info.training_names  # validation images are not training images


def test_a_model_with_a_damaged_record_is_refused_at_load(exported, tmp_path):
    model = onnx.load(str(exported / "model.int8.onnx"))
    meta = {p.key: p.value for p in model.metadata_props} | {provenance.METADATA_KEY: '{"count": 2}'}
    shutil.copy(exported / "model.int8.onnx", tmp_path / "m.onnx")
    write_metadata(tmp_path / "m.onnx", meta)
    with pytest.raises(ModelError, match="training_files record is damaged"):
        open_session(tmp_path / "m.onnx")


def test_evaluate_says_when_it_scores_the_models_training_images(exported, trained, tmp_path):
    import torch

    ckpt = torch.load(trained / "model.pth", weights_only=True)
    root, seen = trained.parent / "data", set(ckpt["data"]["train_files"])
    images = sorted(p for p in root.rglob("*.jpg"))
    files = [p for p in images if provenance.key(p.parent.name, p) in seen][:6]
    fresh = [p for p in images if provenance.key(p.parent.name, p) not in seen][:2]
    labelled = tmp_path / "labelled"
    for f in files + fresh:
        (labelled / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, labelled / f.parent.name / f.name)
    result = run_infer([labelled, "--evaluate", "-m", exported / "model.int8.onnx", "--format", "json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["seen_in_training"] == 6
    assert (
        "note: 6 of the 8 images scored have the class and file name of images this model was trained on"
        in result.stderr
    )
    for f in files:
        (labelled / f.parent.name / f.name).unlink()
    result = run_infer([labelled, "--evaluate", "-m", exported / "model.int8.onnx"])
    assert (
        "images the model trained on 0 of 2 (by class and file name)" in result.stdout and "note:" not in result.stderr
    )
