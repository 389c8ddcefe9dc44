"""tumor-export: checks, metadata, int8 size and parity gate, atomic writes, reproducibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.helpers.checkpoints import model_checkpoint
from tests.helpers.datasets import make_dataset
from tumor_export import gate as gate_module
from tumor_export import inputs as export_inputs
from tumor_export import pipeline
from tumor_export.metadata import read_metadata
from tumor_export.pipeline import ExportOptions, GateError, run_export
from tumor_runtime.core.fileio import sha256_file
from tumor_runtime.core.scoring import choose_threshold
from tumor_runtime.model import manifest
from tumor_runtime.model.info import ModelInfo
from tumor_train.data import DataError
from tumor_train.model_file import load_model, save_atomic


def export(args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "tumor_export", *map(str, args)], capture_output=True, text=True, **kwargs
    )


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
        assert info.mean == pytest.approx(ckpt["preprocess"]["mean"]) and info.std == pytest.approx(
            ckpt["preprocess"]["std"]
        )
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
    from tumor_runtime.inference.classifier import Classifier

    ckpt = torch.load(trained / "model.pth", weights_only=True)
    files = [Path(ckpt["data"]["root"]) / f for f in ckpt["data"]["val_files"]]
    runs = {name: Classifier.load(exported / name).predict(files) for name in ("model.onnx", "model.int8.onnx")}
    probs = {
        name: np.array([[r["probabilities"][c] for c in ckpt["classes"]] for r in recs]) for name, recs in runs.items()
    }
    agreement = float((probs["model.onnx"].argmax(1) == probs["model.int8.onnx"].argmax(1)).mean())
    assert report["parity"]["top1_agreement"] == pytest.approx(agreement)
    assert report["parity"]["max_probability_diff"] == pytest.approx(
        np.abs(probs["model.onnx"] - probs["model.int8.onnx"]).max(), abs=1e-5
    )
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
    result = CliRunner().invoke(
        main, ["--checkpoint", str(trained / "model.pth"), "--out", str(tmp_path), "--int8", "--calibration-size", "8"]
    )
    assert result.exit_code == 1, result.output
    assert "below FP32" in result.output and "Traceback" not in result.output
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written, no scratch folder left either
    with pytest.raises(GateError):
        run_export(
            ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, int8=True, calibration_size=8),
            log=lambda m: None,
        )


def test_interrupted_export_keeps_earlier_files(trained, tmp_path, monkeypatch):
    opts = ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, int8=True, calibration_size=8)
    run_export(opts, log=lambda m: None)
    before = {p.name: sha256_file(p) for p in tmp_path.iterdir()}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_metadata", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_export(
            ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, int8=True, calibration_size=16),
            log=lambda m: None,
        )
    assert {p.name: sha256_file(p) for p in tmp_path.iterdir()} == before


def test_calibration_is_reproducible(trained, exported, tmp_path):
    run_export(
        ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, int8=True, calibration_size=32),
        log=lambda m: None,
    )
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
    strict = choose_threshold(
        np.r_[np.full(10, 0.1), np.full(1000, 0.9)], np.r_[np.zeros(10, bool), np.ones(1000, bool)]
    )
    assert strict == 0.5  # capped: never less sensitive than P(tumor) > P(notumor)
    loose = choose_threshold(np.linspace(0.001, 0.3, 200), np.ones(200, bool))
    assert loose == pytest.approx(np.linspace(0.001, 0.3, 200)[1])  # floor(0.005 * 200) = 1 miss allowed


# The pipeline's parts, on an untrained 32 px model (seconds, no training).


def test_commit_vouches_for_old_or_new_at_every_step_and_drops_stale_files(tmp_path, monkeypatch):

    out, scratch = tmp_path / "out", tmp_path / "out" / ".export-1"
    scratch.mkdir(parents=True)
    (out / "model.onnx").write_bytes(b"old fp32")
    (out / "model.int8.onnx").write_bytes(b"old int8")
    old = {n: sha256_file(out / n) for n in ("model.onnx", "model.int8.onnx")}
    (out / "manifest.json").write_text(json.dumps({"files": old}))
    (scratch / "model.onnx").write_bytes(b"new fp32")
    new = sha256_file(scratch / "model.onnx")
    seen, said = [], []
    real_replace = os.replace

    def watching_replace(src, dst):
        if Path(dst).name.startswith("model"):  # a model's rename (not the manifest's own atomic write)
            seen.append(json.loads((out / "manifest.json").read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    manifest.commit(out, {"model.onnx": scratch / "model.onnx"}, stale=["model.int8.onnx"], log=said.append)
    assert seen == [{"files": {"model.onnx": new}, "replacing": {"model.onnx": old["model.onnx"]}}]
    assert json.loads((out / "manifest.json").read_text()) == {"files": {"model.onnx": new}}
    assert not (out / "model.int8.onnx").exists() and (out / "model.onnx").read_bytes() == b"new fp32"
    assert said == ["Removed model.int8.onnx: it was exported from an earlier checkpoint"]
    (out / "manifest.json").write_text("{broken")
    (scratch / "model.int8.onnx").write_bytes(b"new int8")
    manifest.commit(out, {"model.int8.onnx": scratch / "model.int8.onnx"}, stale=[], log=said.append)
    assert json.loads((out / "manifest.json").read_text()) == {
        "files": {"model.int8.onnx": sha256_file(out / "model.int8.onnx")}
    }  # an unreadable manifest is rebuilt from what this export writes


def test_an_fp32_export_without_images_is_checked_on_fixed_inputs(small, tmp_path):
    path, root = small
    ckpt = torch.load(path, weights_only=True)

    save_atomic(ckpt | {"data": {"root": str(tmp_path / "gone"), "train_dir": "", "val_files": ["x.jpg"]}}, path)
    said = []
    report = run_export(ExportOptions(path, out=tmp_path / "e"), log=said.append)
    assert report["evaluation"] is None and report["fp32"] is None and report["ood"] is None
    assert report["tumor_threshold"] == 0.5 and report["cam_output"] is True
    assert "No evaluation images at hand: FP32 checked against torch on fixed inputs, not scored." in said
    assert sorted(report["files"]) == ["model.onnx"] and report["torch_parity_max_abs_diff"] <= 1e-4
    assert read_metadata(tmp_path / "e" / "model.onnx")["precision"] == "fp32"
    assert json.loads((tmp_path / "e" / "export_report.json").read_text()) == report


def test_an_int8_export_scores_both_models_and_records_its_calibration(small, tmp_path):
    path, root = small
    said = []
    report = run_export(
        ExportOptions(path, out=tmp_path / "e", int8=True, max_f2_drop=1.0, calibration_size=8), log=said.append
    )
    assert sorted(report["files"]) == ["model.int8.onnx", "model.onnx"]
    assert report["evaluation"] == {"source": "validation split in checkpoint", "images": 8}
    calibration = report["calibration"]
    assert calibration["images"] == 8 and calibration["folder"] == root.name and calibration["seed"] == 0
    assert (calibration["method"], calibration["activation_type"], calibration["format"]) == ("percentile", "u8", "QDQ")
    assert calibration["weight_type"] == "s8 per-channel" and report["arch"] == "compact"
    assert set(report["int8"]) >= {"f2_macro", "tumor_sensitivity", "screening"}
    assert len(calibration["first_files"]) == 3 and all((root / f).is_file() for f in calibration["first_files"])
    assert not any(str(tmp_path) in f for f in calibration["first_files"])  # no path of the build machine
    parity = report["parity"]
    assert parity["f2_drop"] == pytest.approx(report["fp32"]["f2_macro"] - report["int8"]["f2_macro"])
    assert parity["max_f2_drop"] == 1.0 and 0 <= parity["top1_agreement"] <= 1
    assert report["int8"]["screening"]["threshold"] == report["tumor_threshold"]
    meta = read_metadata(tmp_path / "e" / "model.int8.onnx")
    assert meta["precision"] == "int8" and json.loads(meta["calibration"]) == calibration
    assert float(meta["tumor_threshold"]) == report["tumor_threshold"]
    assert set(report["ood"]) == {"model.onnx", "model.int8.onnx"}
    assert "Calibrating int8 (percentile, u8) on 8 images ..." in said
    assert not list((tmp_path / "e").glob(".export-*")) and not (tmp_path / "e" / "model.pre.onnx").exists()


def test_the_gate_refuses_an_int8_model_that_loses_more_than_allowed(small, tmp_path, monkeypatch):
    path, root = small
    real = gate_module.quantize_with_gate

    def worse(*args, **kwargs):
        int8, kept, trials = real(*args, **kwargs)
        return gate_module.Scored(int8.probabilities, int8.f2 - 0.5, int8.summary), kept, trials

    monkeypatch.setattr(gate_module, "quantize_with_gate", worse)
    with pytest.raises(
        GateError,
        match=r"^int8 macro F2 -?\d\.\d{4} is 0\.5000 below FP32 \d\.\d{4} \(allowed 0\.1\) even "
        r"with \d+ layers in float; nothing written$",
    ):
        run_export(ExportOptions(path, out=tmp_path / "e", int8=True, max_f2_drop=0.1, calibration_size=8))
    assert not (tmp_path / "e" / "model.int8.onnx").exists()


def test_every_class_but_the_negative_one_is_a_tumor():
    from tumor_export.pipeline import is_tumor

    ckpt = {"classes": ["glioma", "meningioma", "notumor", "pituitary"], "negative_class": "notumor"}
    assert is_tumor([0, 1, 2, 3, 2], ckpt).tolist() == [True, True, False, True, False]


def test_a_checkpoint_from_before_the_crop_and_the_recorded_split_exports_end_to_end(small, tmp_path):
    """Checkpoints written before `preprocess.crop` and `data.val_files` existed keep the whole-frame transform:
    an int8 export with --eval calibrates, gates and fits the OOD score on whole frames, and says so."""
    path, root = small
    ckpt = torch.load(path, weights_only=True)
    old = ckpt | {
        "preprocess": {k: v for k, v in ckpt["preprocess"].items() if k != "crop"},
        "data": {"root": str(root), "train_dir": str(root)},
    }
    save_atomic(old, path)
    held_out = make_dataset(tmp_path / "eval", per_class=3)
    said = []
    report = run_export(
        ExportOptions(path, out=tmp_path / "e", int8=True, eval_dir=held_out, max_f2_drop=1.0, calibration_size=8),
        log=said.append,
    )
    assert sorted(report["files"]) == ["model.int8.onnx", "model.onnx"] and set(report["ood"]) == set(report["files"])
    assert report["evaluation"] == {"source": str(held_out), "images": 12}
    assert report["calibration"]["folder"] == root.name
    assert said[0] == "Exporting FP32 ONNX ..." and "Fitting the out-of-distribution score ..." in said
    assert report["seconds"] > 0 and report["seconds"] == round(report["seconds"], 2)
    for name in report["files"]:
        assert read_metadata(tmp_path / "e" / name)["crop"] == "none"


def test_a_checkpoint_that_recorded_no_data_exports_fp32_and_never_calibrates_on_the_working_folder(
    small, tmp_path, monkeypatch
):
    """No "data" at all: FP32 exports unscored; int8 with --eval but no --calibration names the missing training
    folder instead of drawing images from the current directory (Path("") is ".")."""
    path, root = small
    ckpt = torch.load(path, weights_only=True)
    save_atomic({k: v for k, v in ckpt.items() if k != "data"}, path)
    monkeypatch.chdir(root)  # a working folder full of images that must not be used
    said = []
    report = run_export(ExportOptions(path, out=tmp_path / "e"), log=said.append)
    assert report["fp32"] is None and report["ood"] is None and sorted(report["files"]) == ["model.onnx"]
    with pytest.raises(DataError) as caught:
        run_export(ExportOptions(path, out=tmp_path / "e", int8=True))
    assert str(caught.value) == (
        "--int8 needs labelled images for the parity gate and images to calibrate on; the "
        "validation split is not recorded in the checkpoint: pass --eval DIR (DIR/<class>/...)"
        " and --calibration DIR"
    )
    with pytest.raises(DataError) as caught:
        run_export(ExportOptions(path, out=tmp_path / "e", int8=True, eval_dir=root))
    assert str(caught.value) == "the checkpoint records no training folder to calibrate on; pass --calibration DIR"
    report = run_export(ExportOptions(path, out=tmp_path / "e", eval_dir=root), log=said.append)
    assert report["fp32"] is not None and report["ood"] is None
    assert said[-1] == "No training and validation images at hand: exported without the out-of-distribution flag."


def test_a_brain_crop_model_is_calibrated_gated_and_thresholded_on_cropped_slices(tmp_path):
    """The slices behind every export decision are the ones the runtime will feed this model (its crop): the
    calibration sample, the gate's scores and the tumour threshold chosen on them."""
    from tumor_export.calibration import load_inputs, load_slices, sample_files
    from tumor_runtime.core.contract import INPUT_NAME, PROBABILITIES
    from tumor_runtime.core.scoring import screening_stats, tumor_probability
    from tumor_runtime.imaging.transform import normalize

    root = make_dataset(tmp_path / "data", per_class=6)
    path = model_checkpoint(tmp_path / "run" / "model.pth", size=32, crop="brain")
    val = [f"{c}/img_00{i}.jpg" for c in ("glioma", "meningioma", "notumor", "pituitary") for i in (0, 1)]
    ckpt = torch.load(path, weights_only=True) | {"data": {"root": str(root), "train_dir": str(root), "val_files": val}}
    # "notumor" dominates: the threshold is then the lowest tumour probability of a tumour slice, which moves
    # with every input pixel (not the 0.5 cap an untrained model would hit).
    ckpt["state_dict"]["head.3.bias"][ckpt["classes"].index("notumor")] += 4.0
    save_atomic(ckpt, path)
    pre, excluded = ckpt["preprocess"], [root / f for f in val]
    assert not np.array_equal(load_slices(excluded, 32, "brain"), load_slices(excluded, 32, "none"))

    inputs, files = export_inputs.calibration_inputs(ExportOptions(path, calibration_size=8), ckpt, excluded)
    np.testing.assert_array_equal(inputs, load_inputs(files, 32, pre["mean"], pre["std"], "brain"))

    report = run_export(ExportOptions(path, out=tmp_path / "e", int8=True, max_f2_drop=1.0, calibration_size=8))
    chosen = sample_files(root, 8, 0, {f.resolve() for f in excluded})
    assert report["calibration"]["first_files"] == [f.relative_to(root).as_posix() for f in chosen[:3]]
    session = ort.InferenceSession(str(tmp_path / "e" / "model.onnx"))
    slices = normalize(load_slices(excluded, 32, "brain"), pre["mean"], pre["std"])
    probs = session.run([PROBABILITIES], {INPUT_NAME: slices})[0]
    labels = np.repeat([0, 1, 2, 3], 2)
    tumor_p = tumor_probability(probs, ckpt["classes"], ckpt["negative_class"])
    assert report["tumor_threshold"] == choose_threshold(tumor_p, labels != 2) < 0.5
    assert report["fp32"]["screening"] == screening_stats(tumor_p, labels != 2, report["tumor_threshold"])
