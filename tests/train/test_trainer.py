"""tumor-train end to end on generated images: outputs, resume, duplicates, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tumor_train.checkpoint import load_model
from tumor_train.cli import main
from tumor_train.dynamic_int8 import load_quantized

FAST = ["--epochs", "1", "--width", "8"]


def train(args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args])


def test_outputs_exist_and_load(trained):
    for name in ("model.pth", "model_quantized.pth", "metrics.json", "history.csv", "accuracy.png", "f2.png", "loss.png",
                 "confusion_matrix.png", "predictions.png"):
        assert (trained / name).stat().st_size > 0, name
    model, ckpt = load_model(trained / "model.pth")
    x = torch.zeros(3, 1, 227, 227)
    assert model(x).shape == (3, 4)
    assert ckpt["classes"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert 0 < ckpt["preprocess"]["std"] and 0 < ckpt["preprocess"]["mean"] < 1
    quantized = load_quantized(trained / "model_quantized.pth")
    assert any("quantized.dynamic" in type(m).__module__ for m in quantized.modules())
    assert torch.allclose(torch.softmax(quantized(x), 1), torch.softmax(model(x), 1), atol=0.05)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    val = metrics["validation"]
    assert 0 <= val["f2_macro"] <= 1 and 0 <= val["accuracy"] <= 1
    assert np.asarray(val["confusion_matrix"]).sum() == metrics["data"]["validation_images"]
    assert set(val["per_class"]) == set(ckpt["classes"])
    rows = list(csv.DictReader(open(trained / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert Image.open(trained / "confusion_matrix.png").format == "PNG"


def test_learns_the_synthetic_task(tmp_path):
    """Not a smoke test: a few epochs must beat chance clearly on the easy generated classes."""
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", per_class=24)
    result = train(["--data", data, "--out", tmp_path / "o", "--epochs", "10", "--width", "8", "--lr", "0.003"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] >= 0.6


def test_resume_of_a_finished_run_rewrites_its_outputs(dataset, tmp_path):
    out = tmp_path / "out"
    assert train(["--data", dataset, "--out", out, *FAST]).exit_code == 0
    (out / "metrics.json").unlink()
    result = train(["--out", out, "--resume"])
    assert result.exit_code == 0, result.output
    assert "All 1 epochs are done" in result.output
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1]


def test_ctrl_c_keeps_checkpoint_and_exits_cleanly(dataset, tmp_path, monkeypatch):
    import tumor_train.trainer as trainer

    real = trainer.train_one_epoch
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupt_second)
    out = tmp_path / "out"
    result = train(["--data", dataset, "--out", out, "--epochs", "3", "--width", "8"])
    assert result.exit_code == 130
    assert "--resume" in result.output
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["epoch"] == 1
    assert not (out / "model.pth").exists()


def test_duplicates_stay_on_one_side(tmp_path):
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", per_class=10)
    rng = np.random.default_rng(1)
    copies = {}
    for name in ("glioma", "notumor"):
        for i in range(3):  # byte-identical copies and a re-encoded, slightly noisy near-copy
            src = data / name / f"img_{i:03d}.jpg"
            shutil.copy(src, data / name / f"copy_{i}.jpg")
            near = np.asarray(Image.open(src), np.int16) + rng.integers(-3, 4, (64, 64))
            Image.fromarray(near.clip(0, 255).astype(np.uint8)).save(data / name / f"near_{i}.png")
            copies[f"{name}/img_{i:03d}.jpg"] = [f"{name}/copy_{i}.jpg", f"{name}/near_{i}.png"]
    result = train(["--data", data, "--out", tmp_path / "o", *FAST, "--val-fraction", "0.3"])
    assert result.exit_code == 0, result.output
    assert "Found 6 duplicate groups" in result.output
    val = set(torch.load(tmp_path / "o" / "model.pth", weights_only=True)["data"]["val_files"])
    for original, dups in copies.items():
        sides = {f in val for f in [original, *dups]}
        assert len(sides) == 1, f"{original} straddles the split"


def test_corrupt_image_is_skipped_and_named(dataset, tmp_path):
    (dataset / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (dataset / "notumor" / "notes.png").write_text("hello")
    result = subprocess.run([sys.executable, "-m", "tumor_train", "--data", str(dataset), "--out", str(tmp_path / "o"),
                             *FAST], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr and "notes.png" in result.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["data"]["skipped_count"] == 2


def test_reference_layout_with_validation_and_testing(tmp_path):
    from tests.conftest import make_dataset

    root = tmp_path / "Data"
    make_dataset(root / "Train", per_class=6, seed=1)
    make_dataset(root / "Validation", per_class=3, seed=2)
    make_dataset(root / "Testing", per_class=3, seed=3)
    result = train(["--data", root, "--out", tmp_path / "o", *FAST])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["data"]["validation_images"] == 12 and metrics["data"]["train_images"] == 24
    assert metrics["test"]["n_images"] == 12


@pytest.mark.parametrize("args, message", [
    (["--arch", "resnet"], "'resnet' is not one of 'compact', 'alexnet'"),
    (["--data", "/no/such/folder"], "does not exist"),
    ([], "Data does not exist"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_arguments_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = subprocess.run([sys.executable, "-m", "tumor_train", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1


def test_empty_class_folder_is_an_error(dataset, tmp_path):
    for f in (dataset / "pituitary").iterdir():
        f.unlink()
    result = subprocess.run([sys.executable, "-m", "tumor_train", "--data", str(dataset), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "pituitary" in result.stderr


def test_pixel_stats_match_float_computation():
    from tumor_train.data import pixel_stats

    images = np.random.default_rng(0).integers(0, 256, (300, 40, 40)).astype(np.uint8)
    mean, std = pixel_stats(images, chunk=64)
    assert mean == pytest.approx((images / 255.0).mean(), abs=1e-12)
    assert std == pytest.approx((images / 255.0).std(), abs=1e-12)


def test_augment_flip_only_mirrors_and_keeps_shape():
    from tumor_train.data import augment

    x = torch.rand(4, 1, 20, 20)
    g = torch.Generator().manual_seed(0)
    flipped = augment(x, g, rotation=0, translate=0, scale=0, hflip=1.0)
    assert flipped.shape == x.shape
    torch.testing.assert_close(flipped, torch.flip(x, dims=[3]), atol=1e-5, rtol=0)
    same = augment(x, g, rotation=0, translate=0, scale=0, hflip=0.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


def test_cross_validation_writes_every_fold_and_resumes(tmp_path):
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", per_class=6)
    out = tmp_path / "cv"
    result = train(["--data", data, "--out", out, "--cv", "2", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "cv.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [1, 2] and report["complete"]
    assert sum(f["validation_images"] for f in report["folds"]) == 24  # every image validated once
    f2 = [f["f2_macro"] for f in report["folds"]]
    assert report["summary"]["f2_macro"]["mean"] == pytest.approx(np.mean(f2))
    assert report["summary"]["f2_macro"]["std"] == pytest.approx(np.std(f2, ddof=1))
    assert (out / "cv.png").is_file() and (out / "fold-2" / "model.pth").is_file()
    val1 = set(torch.load(out / "fold-1" / "model.pth", weights_only=True)["data"]["val_files"])
    val2 = set(torch.load(out / "fold-2" / "model.pth", weights_only=True)["data"]["val_files"])
    assert not val1 & val2
    again = train(["--data", data, "--out", out, "--cv", "2", *FAST])
    assert again.exit_code == 0 and again.output.count("reusing") == 2
