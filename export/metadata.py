"""ONNX metadata_props: everything the runtime needs, so the .onnx file describes itself."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from tumor_runtime.core import provenance
from tumor_runtime.imaging.listing import collect


def tool_versions() -> dict:
    from tumor_runtime.core.system import tool_versions as versions

    return versions("torch", "onnx", "onnxruntime")


def training_names(ckpt: dict) -> list[str] | None:
    """The keys (`provenance.key`) of the images the checkpoint trained on: recorded by tumor-train, or (older
    checkpoints) the images of its training folder minus its validation files when that folder is at hand."""
    data = ckpt.get("data") or {}
    if isinstance(data.get("train_files"), list):
        return [str(n) for n in data["train_files"]]
    folder = Path(str(data.get("train_dir", "")))
    if not data.get("train_dir") or not folder.is_dir():
        return None
    root = Path(str(data.get("root", folder)))
    held_out = {(root / str(f)).resolve() for f in data.get("val_files") or []}
    files = [Path(p) for p in collect([str(folder)], recursive=True) if isinstance(p, (str, Path))]
    return [
        provenance.key(f.relative_to(folder).parts[0], f)
        for f in files
        if len(f.relative_to(folder).parts) > 1 and f.resolve() not in held_out
    ]


def model_metadata(ckpt: dict, threshold: float) -> dict[str, str]:
    """String key/values for metadata_props, from a model.pth checkpoint dict."""
    pre, classes, negative = ckpt["preprocess"], ckpt["classes"], ckpt["negative_class"]
    names = training_names(ckpt)
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
        **({} if names is None else {provenance.METADATA_KEY: provenance.encode(names)}),
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
