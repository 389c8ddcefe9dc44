"""tumor-export: checks, metadata, int8 size and parity gate, atomic writes, reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tumor_export.metadata import read_metadata
from tumor_export.pipeline import ExportOptions, GateError, run_export
from tumor_runtime.tumor import choose_threshold
from tumor_runtime.fileio import sha256_file
from tumor_runtime.model import ModelInfo
from tumor_train.checkpoint import load_model


def export(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "tumor_export", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def test_fp32_onnx_passes_checker_and_matches_torch(trained, exported):
    onnx.checker.check_model(onnx.load(str(exported / "model.onnx")), full_check=True)
    model, ckpt = load_model(trained / "model.pth")
    size = ckpt["preprocess"]["size"]
    x = np.random.default_rng(5).normal(0, 1, (5, 1, size, size)).astype(np.float32)  # batch of 5: dynamic axis
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, logits = session.run(["probabilities", "logits"], {"image": x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    report = json.loads((exported / "export_report.json").read_text())
    assert report["torch_parity_max_abs_diff"] <= 1e-4


def test_metadata_round_trips(trained, exported):
    ckpt = torch.load(trained / "model.pth", weights_only=True)
    for name in ("model.onnx", "model.int8.onnx"):
        meta = read_metadata(exported / name)
        info = ModelInfo.from_metadata(meta)
        assert info.classes == ckpt["classes"]
        assert info.input_size == ckpt["preprocess"]["size"] and info.crop == ckpt["preprocess"]["crop"]
        assert meta["grayscale"] == "true" and meta["resize"] == "pil-bilinear"
        assert info.mean == pytest.approx(ckpt["preprocess"]["mean"]) and info.std == pytest.approx(ckpt["preprocess"]["std"])
        assert json.loads(meta["tumor_classes"]) == ["glioma", "meningioma", "pituitary"]
        assert 0 < info.tumor_threshold <= 0.5 and info.arch == "compact"
        assert "onnxruntime" in json.loads(meta["exported_with"])
    assert read_metadata(exported / "model.int8.onnx")["precision"] == "int8"


def test_int8_is_smaller_and_reported(trained, exported):
    fp32, int8 = (exported / "model.onnx").stat().st_size, (exported / "model.int8.onnx").stat().st_size
    assert fp32 / int8 >= 3
    report = json.loads((exported / "export_report.json").read_text())
    assert report["files"]["model.int8.onnx"]["sha256"] == sha256_file(exported / "model.int8.onnx")
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest == {"files": {n: sha256_file(exported / n) for n in ("model.onnx", "model.int8.onnx")}}
    ops = {n.op_type for n in onnx.load(str(exported / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    onnx.checker.check_model(onnx.load(str(exported / "model.int8.onnx")), full_check=True)
    # The report's parity figures, recomputed here from both files on the same validation images.
    from tumor_runtime.classifier import Classifier

    ckpt = torch.load(trained / "model.pth", weights_only=True)
    files = [Path(ckpt["data"]["root"]) / f for f in ckpt["data"]["val_files"]]
    runs = {name: Classifier.load(exported / name).predict(files) for name in ("model.onnx", "model.int8.onnx")}
    probs = {name: np.array([[r["probabilities"][c] for c in ckpt["classes"]] for r in recs])
             for name, recs in runs.items()}
    agreement = float((probs["model.onnx"].argmax(1) == probs["model.int8.onnx"].argmax(1)).mean())
    assert report["parity"]["top1_agreement"] == pytest.approx(agreement)
    assert report["parity"]["max_probability_diff"] == pytest.approx(
        np.abs(probs["model.onnx"] - probs["model.int8.onnx"]).max(), abs=1e-5)
    labels = [ckpt["classes"].index(f.parent.name) for f in files]
    from sklearn.metrics import fbeta_score

    f2 = {n: fbeta_score(labels, p.argmax(1), beta=2, average="macro", zero_division=0) for n, p in probs.items()}
    assert report["parity"]["f2_drop"] == pytest.approx(f2["model.onnx"] - f2["model.int8.onnx"])
    assert report["parity"]["f2_drop"] <= 0.005


def int8_scores_lower(monkeypatch, drop: float):
    """Make every int8 model score `drop` macro F2 below what it really scores (FP32 scores as it is)."""
    import tumor_export.gate as gate

    real = gate.score

    def score(path, inputs, labels, classes):
        result = real(path, inputs, labels, classes)
        if "int8" in Path(path).name:
            result.f2 -= drop
        return result

    monkeypatch.setattr(gate, "score", score)


def test_gate_refuses_and_writes_nothing(trained, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tumor_export.cli import main

    int8_scores_lower(monkeypatch, 0.5)  # no layer in float can win it back
    result = CliRunner().invoke(main, ["--checkpoint", str(trained / "model.pth"), "--out", str(tmp_path), "--int8",
                                       "--calibration-size", "8"])
    assert result.exit_code == 1, result.output
    assert "below FP32" in result.output and "Traceback" not in result.output
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written, no scratch folder left either
    with pytest.raises(GateError):
        run_export(ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, int8=True, calibration_size=8),
                   log=lambda m: None)


def test_interrupted_export_keeps_earlier_files(trained, tmp_path, monkeypatch):
    opts = ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, int8=True, calibration_size=8)
    run_export(opts, log=lambda m: None)
    before = {p.name: sha256_file(p) for p in tmp_path.iterdir()}
    import tumor_export.pipeline as pipeline

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_metadata", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_export(ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, int8=True, calibration_size=16),
                   log=lambda m: None)
    assert {p.name: sha256_file(p) for p in tmp_path.iterdir()} == before


def test_calibration_is_reproducible(trained, exported, tmp_path):
    run_export(ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, int8=True, calibration_size=32),
               log=lambda m: None)
    assert sha256_file(tmp_path / "model.int8.onnx") == sha256_file(exported / "model.int8.onnx")


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "torch-dict"])
def test_missing_or_incompatible_checkpoint(tmp_path, content):
    path = tmp_path / "model.pth"
    if content == "torch-dict":
        torch.save({"state_dict": {}}, path)
    elif content is not None:
        path.write_bytes(content)
    result = export(["--checkpoint", path, "--int8"])
    assert result.returncode == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_threshold_keeps_sensitivity_with_fewest_false_alarms():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.0, 0.6, 400), rng.uniform(0.3, 1.0, 1000)])
    is_tumor = np.r_[np.zeros(400, bool), np.ones(1000, bool)]
    t = choose_threshold(scores, is_tumor)
    assert (scores[is_tumor] >= t).mean() >= 0.995
    assert t <= 0.5
    strict = choose_threshold(np.r_[np.full(10, 0.1), np.full(1000, 0.9)], np.r_[np.zeros(10, bool), np.ones(1000, bool)])
    assert strict == 0.5  # capped: never less sensitive than P(tumor) > P(notumor)
    loose = choose_threshold(np.linspace(0.001, 0.3, 200), np.ones(200, bool))
    assert loose == pytest.approx(np.linspace(0.001, 0.3, 200)[1])  # floor(0.005 * 200) = 1 miss allowed
