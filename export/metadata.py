"""ONNX metadata_props: everything the runtime needs, so the .onnx file describes itself."""

from __future__ import annotations

import json
from pathlib import Path

import onnx


def tool_versions() -> dict:
    from tumor_runtime.contract import tool_versions as versions

    return versions("torch", "onnx", "onnxruntime")


def model_metadata(ckpt: dict, threshold: float) -> dict[str, str]:
    """String key/values for metadata_props, from a model.pth checkpoint dict."""
    pre, classes, negative = ckpt["preprocess"], ckpt["classes"], ckpt["negative_class"]
    return {
        "classes": json.dumps(classes),
        "input_size": str(pre["size"]),
        "grayscale": json.dumps(pre["grayscale"]),
        "resize": pre["resize"],
        "crop": pre.get("crop", "none"),
        "mean": repr(float(pre["mean"])),
        "std": repr(float(pre["std"])),
        "arch": ckpt["arch"],
        "negative_class": negative,
        "tumor_classes": json.dumps([c for c in classes if c != negative]),
        "tumor_threshold": repr(float(threshold)),
        "trained_with": json.dumps(ckpt.get("versions", {})),
        "exported_with": json.dumps(tool_versions()),
    }


def write_metadata(path: Path, meta: dict[str, str]) -> None:
    """Replace the metadata_props of the ONNX file at `path` (in place; callers write to a temp path)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "tumor-kit"
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
