"""The ONNX metadata the export writes: every key the runtime reads, from the checkpoint, as exact strings."""

from __future__ import annotations

import json

import onnx

from tests.helpers.onnx_fakes import tiny_model
from tumor_export.metadata import (
    model_metadata,
    read_metadata,
    tool_versions,
    write_metadata,
)
from tumor_runtime import __version__
from tumor_runtime.model.info import ModelInfo

CKPT = {
    "preprocess": {
        "size": 160,
        "grayscale": True,
        "resize": "pil-bilinear",
        "crop": "brain",
        "mean": 0.25,
        "std": 0.125,
    },
    "classes": ["glioma", "meningioma", "notumor", "pituitary"],
    "negative_class": "notumor",
    "arch": "compact",
    "versions": {"torch": "2.14.1"},
}


def test_model_metadata_spells_out_every_key():
    meta = model_metadata(CKPT, 0.375)
    assert {k: v for k, v in meta.items() if k != "exported_with"} == {
        "classes": '["glioma", "meningioma", "notumor", "pituitary"]',
        "input_size": "160",
        "grayscale": "true",
        "resize": "pil-bilinear",
        "crop": "brain",
        "mean": "0.25",
        "std": "0.125",
        "arch": "compact",
        "negative_class": "notumor",
        "tumor_classes": '["glioma", "meningioma", "pituitary"]',
        "tumor_threshold": "0.375",
        "trained_with": '{"torch": "2.14.1"}',
    }
    assert json.loads(meta["exported_with"]) == tool_versions()
    assert set(tool_versions()) == {"tumor_kit", "python", "torch", "onnx", "onnxruntime"}
    assert tool_versions()["tumor_kit"] == __version__
    info = ModelInfo.from_metadata(meta)  # what the runtime reads back
    assert (info.input_size, info.mean, info.std, info.tumor_threshold, info.crop) == (160, 0.25, 0.125, 0.375, "brain")


def test_a_checkpoint_from_before_the_crop_and_the_version_record():
    old = {k: v for k, v in CKPT.items() if k != "versions"} | {
        "preprocess": {k: v for k, v in CKPT["preprocess"].items() if k != "crop"}
    }
    meta = model_metadata(old, 0.5)
    assert meta["crop"] == "none" and meta["trained_with"] == "{}"


def test_write_metadata_replaces_every_property_and_names_the_producer(tmp_path):
    path = tiny_model(tmp_path / "m.onnx")
    assert "arch" in read_metadata(path)
    write_metadata(path, {"a": "1", "b": "two"})
    assert read_metadata(path) == {"a": "1", "b": "two"}
    assert onnx.load(str(path)).producer_name == "tumor-kit"
