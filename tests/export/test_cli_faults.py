"""`tumor-export` under bad inputs and faults: a disabled gate, stale and half-written exports, calibration without
the training data."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from tests.helpers.datasets import make_dataset
from tests.helpers.processes import one_line_error, run
from tumor_runtime.core.errors import ModelError
from tumor_runtime.inference.classifier import Classifier

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


@pytest.mark.parametrize("value", ["nan", "-0.1", "inf"])
def test_02_export_refuses_a_disabled_gate(trained, tmp_path, value):
    result = run(
        "tumor_export", ["--checkpoint", trained / "model.pth", "--out", tmp_path, "--int8", "--max-f2-drop", value]
    )
    one_line_error(result)
    assert list(tmp_path.iterdir()) == []
    from tumor_export.pipeline import ExportOptions, run_export

    with pytest.raises(ValueError):
        run_export(ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, max_f2_drop=float(value)))


def test_07_fp32_only_reexport_removes_the_stale_int8(trained, exported, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    from tumor_export.pipeline import ExportOptions, run_export

    run_export(ExportOptions(checkpoint=trained / "model.pth", out=folder), log=lambda m: None)
    assert not (folder / "model.int8.onnx").exists()
    assert set(json.loads((folder / "manifest.json").read_text())["files"]) == {"model.onnx"}
    shutil.copy(exported / "model.int8.onnx", folder / "model.int8.onnx")  # put the stale file back
    with pytest.raises(ModelError, match="not listed"):
        Classifier.load(folder / "model.int8.onnx")


@pytest.mark.parametrize("renames_before_kill", [0, 1, 2])
def test_08_an_interrupted_commit_leaves_usable_vouched_models(
    trained, exported, tmp_path, monkeypatch, renames_before_kill
):
    import tumor_export.pipeline as pipeline

    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if len(calls) == renames_before_kill:
            raise KeyboardInterrupt
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_export(
            pipeline.ExportOptions(
                checkpoint=trained / "model.pth", out=folder, int8=True, calibration_size=16, seed=1
            ),
            log=lambda m: None,
        )
    for name in ("model.onnx", "model.int8.onnx"):
        Classifier.load(folder / name)  # old or new, each is vouched for
    assert [p.name for p in folder.iterdir() if p.name.startswith(".export-")] == []


def test_08_scratch_of_killed_exports_is_cleaned(trained, tmp_path):
    from tumor_export.pipeline import ExportOptions, run_export

    stale = tmp_path / ".export-999999999-abc"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    run_export(ExportOptions(checkpoint=trained / "model.pth", out=tmp_path), log=lambda m: None)
    assert not stale.exists()


@pytest.mark.parametrize("count", [17, 130, 255])
def test_09_calibration_counts(tmp_path, count):
    """ONNX Runtime's histogram collectors (percentile, entropy) failed on a short last batch: any count
    over 16 and not a multiple of 16. A small convolutional model is enough to reach that code."""
    from tests.helpers.onnx_fakes import conv_model
    from tumor_export.calibration import ArrayReader
    from tumor_export.static_int8 import prepare_graph, quantize_int8

    prepare_graph(conv_model(tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    inputs = np.random.default_rng(count).standard_normal((count, 1, 32, 32)).astype(np.float32)
    for method in ("percentile", "entropy"):
        quantize_int8(tmp_path / "pre.onnx", tmp_path / "q.onnx", ArrayReader(inputs, "image"), method)
        assert (tmp_path / "q.onnx").stat().st_size > 0


def test_09_a_corrupt_file_in_the_calibration_sample(trained, tmp_path):
    calib = make_dataset(tmp_path / "calib", per_class=5)
    (calib / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # 21 files, 20 readable
    result = run(
        "tumor_export",
        [
            "--checkpoint",
            trained / "model.pth",
            "--out",
            tmp_path / "o",
            "--int8",
            "--calibration",
            calib,
            "--calibration-size",
            "21",
        ],
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o" / "export_report.json").read_text())["calibration"]["images"] == 20


@pytest.mark.parametrize("case", ["read-only-out", "empty-calibration", "corrupt-calibration"])
def test_12_export_errors(trained, tmp_path, case):
    args = ["--checkpoint", trained / "model.pth", "--out", tmp_path / "o"]
    calib = tmp_path / "calib"
    calib.mkdir()
    if case == "read-only-out":
        args = ["--checkpoint", trained / "model.pth", "--out", "/proc/tumor-export"]
    elif case == "corrupt-calibration":
        for i in range(3):
            (calib / f"{i}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    if case != "read-only-out":
        args += ["--int8", "--calibration", calib]
    result = run("tumor_export", args)
    one_line_error(result)
    assert not (tmp_path / "o" / "model.int8.onnx").exists()


def test_16_export_without_the_training_data(trained, tmp_path):
    ckpt = torch.load(trained / "model.pth", weights_only=True)
    ckpt["data"]["root"] = "/no/such/dataset"
    ckpt["data"]["train_dir"] = "/no/such/dataset/Train"
    torch.save(ckpt, tmp_path / "model.pth")
    fp32 = run("tumor_export", ["--checkpoint", tmp_path / "model.pth"])
    assert fp32.returncode == 0, fp32.stderr
    Classifier.load(tmp_path / "model.onnx")
    int8 = run("tumor_export", ["--checkpoint", tmp_path / "model.pth", "--int8"])
    one_line_error(int8)
    assert "--eval" in int8.stderr and "--calibration" in int8.stderr


@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupt_that_the_onnx_exporter_wraps_still_exits_130_or_143(
    trained, tmp_path, monkeypatch, signal_name, code
):
    """torch's exporter re-raises a Ctrl-C (or the kit's SIGTERM) during export as its own error: the command
    still says it was stopped and exits as an interrupt, not as an internal error (70); nothing is written."""
    from tumor_runtime.core.signals import Terminated

    def interrupted_export(*args, **kwargs):
        try:
            raise KeyboardInterrupt() if signal_name == "SIGINT" else Terminated()
        except KeyboardInterrupt as exc:
            raise RuntimeError("Failed to export the model with torch.export") from exc

    monkeypatch.setattr(torch.onnx, "export", interrupted_export)
    result = run("tumor_export", ["--checkpoint", trained / "model.pth", "--out", tmp_path / "e"])
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "internal error" not in result.stderr and "Stopped" in result.stderr
    assert not list(tmp_path.rglob("*.onnx"))


def test_a_sigterm_just_after_the_export_says_it_was_written(trained, tmp_path, monkeypatch):
    """SIGTERM while the finished export's report is printed: 143, and a line saying the files were written
    (they were: the commit is done), not silence or "the output folder is unchanged"."""
    import tumor_export.cli as export_cli
    from tumor_runtime.core.signals import Terminated

    def terminated(report):
        raise Terminated()

    monkeypatch.setattr(export_cli, "format_report", terminated)
    result = run("tumor_export", ["--checkpoint", trained / "model.pth", "--out", tmp_path / "e"])
    assert result.returncode == 143, result.stderr
    assert "Stopped: interrupted after the export was written. Wrote model.onnx" in result.stderr
    assert (tmp_path / "e" / "model.onnx").is_file() and (tmp_path / "e" / "manifest.json").is_file()


def test_temperature_fit_given_or_refused(trained, tmp_path):
    """--temperature fit fits it on the checkpoint's held-out validation split and stores it; a number is stored
    as given; the runtime then reads it; a word or an absurd value is one line, before any work."""
    from tumor_export.metadata import read_metadata
    from tumor_runtime.core.scoring import TEMPERATURE_RANGE

    fitted = run(
        "tumor_export", ["--checkpoint", trained / "model.pth", "--out", tmp_path / "f", "--temperature", "fit"]
    )
    assert fitted.returncode == 0, fitted.stderr
    report = json.loads((tmp_path / "f" / "export_report.json").read_text())["temperature"]
    assert report["source"] == "fitted on the evaluation images"
    assert TEMPERATURE_RANGE[0] < report["value"] < TEMPERATURE_RANGE[1]
    assert report["ece_after"] <= report["ece_before"] + 0.02  # the fit minimises the likelihood, not ECE
    assert float(read_metadata(tmp_path / "f" / "model.onnx")["temperature"]) == pytest.approx(report["value"])
    assert "Temperature" in fitted.stdout and "expected calibration error" in fitted.stdout
    given = run(
        "tumor_export", ["--checkpoint", trained / "model.pth", "--out", tmp_path / "g", "--temperature", "2.5"]
    )
    assert given.returncode == 0, given.stderr
    assert Classifier.load(tmp_path / "g" / "model.onnx", threads=1).info.temperature == 2.5
    for bad in ("warm", "0", "1e9"):
        result = run(
            "tumor_export", ["--checkpoint", trained / "model.pth", "--out", tmp_path / bad, "--temperature", bad]
        )
        one_line_error(result)
        assert "--temperature" in result.stderr and not (tmp_path / bad / "model.onnx").exists()


def test_a_final_fit_cannot_fit_its_temperature_on_images_it_trained_on(trained, tmp_path):
    from tumor_train.model_file import save_atomic

    ckpt = torch.load(trained / "model.pth", weights_only=True)
    save_atomic(ckpt | {"data": ckpt.get("data", {}) | {"final_fit": True}}, tmp_path / "model.pth")
    result = run(
        "tumor_export", ["--checkpoint", tmp_path / "model.pth", "--out", tmp_path / "e", "--temperature", "fit"]
    )
    one_line_error(result)
    assert "a final fit has none" in result.stderr and not (tmp_path / "e" / "model.onnx").exists()
