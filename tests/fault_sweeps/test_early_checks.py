"""Checks that must come before any work (or a traceback): training without the negative class, too few images
for CV, untrustworthy checkpoints, odd metadata, a full disk, two runs on one folder, validation lists. The
number in a test's name is the item of the fault sweep it covers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.helpers.datasets import CLASSES, make_dataset
from tests.helpers.onnx_fakes import tiny_model
from tests.helpers.processes import infer, one_line_error, run

pytestmark = pytest.mark.faults


def test_15_training_without_the_negative_class_stops_before_epoch_1(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=4, classes=["glioma", "meningioma", "pituitary"])
    result = run("tumor_train", ["--data", data, "--out", tmp_path / "o", "--epochs", "1", "--width", "8"])
    one_line_error(result)
    assert "'notumor'" in result.stderr and not (tmp_path / "o" / "checkpoint.pth").exists()


def test_15_cv_with_too_few_images_stops_before_any_fold(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    result = run(
        "tumor_train", ["--data", data, "--out", tmp_path / "cv", "--epochs", "1", "--width", "8", "--cv", "3"]
    )
    one_line_error(result)
    assert (
        "fold" in result.stderr
        and not list((tmp_path / "cv").glob("fold-*"))
        and not (tmp_path / "cv" / "cv.json").exists()
    )


def tampered(trained, tmp_path, **changes):
    ckpt = torch.load(trained / "model.pth", weights_only=True)
    for key, value in changes.items():
        if value is None:
            del ckpt[key]
        else:
            ckpt[key] = value
    path = tmp_path / "model.pth"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"classes": [*CLASSES, "extra"]}, "names 5 classes but the model gives 4 outputs"),
        ({"classes": None}, "no valid class names"),
        ({"negative_class": "healthy"}, "negative class 'healthy' is not one of its classes"),
        ({"arch": "alexnet"}, "does not match its architecture"),
    ],
)
def test_14_15_export_refuses_a_checkpoint_the_runtime_could_not_trust(trained, tmp_path, changes, word):
    path = tampered(trained, tmp_path, **changes)
    result = run("tumor_export", ["--checkpoint", path, "--out", tmp_path / "x"])
    one_line_error(result)
    assert word in result.stderr and not (tmp_path / "x" / "model.onnx").exists()


def test_15_runtime_refuses_a_negative_class_outside_the_classes(tmp_path):
    sample = tmp_path / "s.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 3, (64, 1))).save(sample)
    result = infer([sample, "--model", tiny_model(tmp_path / "m.onnx", negative_class="healthy")])
    one_line_error(result)
    assert "negative_class 'healthy'" in result.stderr


@pytest.mark.parametrize(
    "meta", [{"exported_with": json.dumps(["a", "list"])}, {"trained_with": "[" * 100_000 + "]" * 100_000}]
)
def test_14_model_info_with_odd_metadata_is_no_traceback(tmp_path, meta):
    result = infer(["--model-info", "--model", tiny_model(tmp_path / "m.onnx", **meta)])
    assert result.returncode == 0 and "Traceback" not in result.stderr
    card = json.loads(result.stdout)
    assert card["version"] is None


def test_14_a_deeply_nested_manifest_is_a_one_line_error(tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    (tmp_path / "manifest.json").write_text('{"files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = infer(["--model-info", "--model", model])
    one_line_error(result)
    assert "not a valid manifest" in result.stderr


def test_14_serve_refuses_a_nan_upload_limit():
    from click.testing import CliRunner

    from tumor_runtime.cli.serve import main

    result = CliRunner().invoke(main, ["--max-upload-mb", "nan"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "finite" in result.output


def test_14_a_full_disk_during_a_checkpoint_is_a_one_line_error(dataset, tmp_path, monkeypatch):
    import tumor_train.trainer as trainer

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer, "save_atomic", disk_full)
    result = run("tumor_train", ["--data", dataset, "--out", tmp_path / "o", "--epochs", "1", "--width", "8"])
    one_line_error(result)
    assert "No space left on device" in result.stderr and "checkpoint" in result.stderr


def test_18_retraining_over_exports_removes_them(trained, exported, dataset, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    for name in ("model.onnx", "model.int8.onnx", "manifest.json", "export_report.json"):
        shutil.copy(exported / name, out / name)
    result = run("tumor_train", ["--data", dataset, "--out", out, "--epochs", "1", "--width", "8", "--overwrite"])
    assert result.returncode == 0, result.stderr
    assert not any((out / n).exists() for n in ("model.onnx", "model.int8.onnx", "manifest.json"))
    assert "tumor-export" in result.stdout and (out / "model.pth").is_file()


def test_two_runs_on_one_output_folder_are_refused(dataset, tmp_path):
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".tumor-train.lock", "w") as held:  # as a first run holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run("tumor_train", ["--data", dataset, "--out", out, "--epochs", "1", "--width", "8"])
    one_line_error(result)
    assert "another tumor-train is writing" in result.stderr and not (out / "checkpoint.pth").exists()


def test_a_validation_folder_with_other_classes_is_refused(tmp_path):
    root = tmp_path / "d"
    make_dataset(root / "Train", per_class=3)
    make_dataset(root / "Validation", per_class=2, classes=[*CLASSES, "extra"])
    result = run("tumor_train", ["--data", root, "--out", tmp_path / "o", "--epochs", "1", "--width", "8"])
    one_line_error(result)
    assert "must be the same" in result.stderr


def test_final_fit_trains_on_every_image_and_says_there_is_no_validation(dataset, tmp_path):
    result = run(
        "tumor_train",
        ["--data", dataset, "--out", tmp_path / "o", "--epochs", "2", "--width", "8", "--val-fraction", "0"],
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["validation"] is None and "cross-validation" in metrics["note"]
    assert metrics["data"]["train_images"] == 32 and metrics["best_epoch"] == 2  # the last epoch's average
    assert "Final fit" in result.stdout


def test_val_list_fixes_the_validation_images(dataset, tmp_path):
    names = ["glioma/img_001.jpg", "notumor/img_002.jpg", "pituitary/img_000.jpg", "meningioma/img_003.jpg"]
    (tmp_path / "val.txt").write_text("# the fixed split\n" + "\n".join(names) + "\n")
    result = run(
        "tumor_train",
        [
            "--data",
            dataset,
            "--out",
            tmp_path / "o",
            "--epochs",
            "1",
            "--width",
            "8",
            "--val-list",
            tmp_path / "val.txt",
            "--size",
            "48",
            "--crop",
            "brain",
        ],
    )
    assert result.returncode == 0, result.stderr
    ckpt = torch.load(tmp_path / "o" / "model.pth", weights_only=True)
    assert sorted(ckpt["data"]["val_files"]) == sorted(names)
    assert ckpt["preprocess"]["size"] == 48 and ckpt["preprocess"]["crop"] == "brain"
    (tmp_path / "bad.txt").write_text("glioma/nope.jpg\n")
    bad = run(
        "tumor_train",
        [
            "--data",
            dataset,
            "--out",
            tmp_path / "o2",
            "--epochs",
            "1",
            "--width",
            "8",
            "--val-list",
            tmp_path / "bad.txt",
        ],
    )
    one_line_error(bad)
    assert "not among the training images" in bad.stderr
