"""tumor-train end to end on generated images: outputs, resume, duplicates, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.helpers.datasets import make_dataset
from tumor_runtime.core.errors import OutputError
from tumor_train import trainer
from tumor_train.cli import main
from tumor_train.config import TrainConfig
from tumor_train.data import prepare_data
from tumor_train.dynamic_int8 import load_quantized
from tumor_train.model_file import load_model

FAST = ["--epochs", "1", "--width", "8"]


def train(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_outputs_exist_and_load(trained):
    for name in (
        "model.pth",
        "model_quantized.pth",
        "metrics.json",
        "history.csv",
        "accuracy.png",
        "f2.png",
        "loss.png",
        "confusion_matrix.png",
        "predictions.png",
    ):
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
    from tests.helpers.datasets import make_dataset

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
    from tests.helpers.datasets import make_dataset

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
    result = subprocess.run(
        [sys.executable, "-m", "tumor_train", "--data", str(dataset), "--out", str(tmp_path / "o"), *FAST],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr and "notes.png" in result.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["data"]["skipped_count"] == 2


def test_reference_layout_with_validation_and_testing(tmp_path):
    from tests.helpers.datasets import make_dataset

    root = tmp_path / "Data"
    make_dataset(root / "Train", per_class=6, seed=1)
    make_dataset(root / "Validation", per_class=3, seed=2)
    make_dataset(root / "Testing", per_class=3, seed=3)
    result = train(["--data", root, "--out", tmp_path / "o", *FAST])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["data"]["validation_images"] == 12 and metrics["data"]["train_images"] == 24
    assert metrics["test"]["n_images"] == 12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "resnet"], "'resnet' is not one of 'compact', 'alexnet', 'mobilenet_v2'"),
        (["--data", "/no/such/folder"], "does not exist"),
        ([], "Data does not exist"),
        (["--epochs", "0"], "--epochs"),
    ],
)
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
    result = subprocess.run(
        [sys.executable, "-m", "tumor_train", "--data", str(dataset), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
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
    from tests.helpers.datasets import make_dataset

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


# The run's pieces in-process, on a tiny model (32 px, width 4): guards, interruptions, outputs.


def tiny(tmp_path, **changes):
    root = make_dataset(tmp_path / "data", per_class=4)
    settings = {"image_size": 32, "width": 4, "epochs": 2, "crop": "none", "val_fraction": 0.25, "bf16": False}
    return replace(TrainConfig(), data=str(root), out=str(tmp_path / "out"), **(settings | changes))


def test_check_writable_names_a_folder_it_cannot_create(tmp_path):
    trainer.check_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError) as caught:
        trainer.check_writable(tmp_path / "file" / "out")
    assert str(caught.value).startswith(f"cannot write to the output folder {tmp_path / 'file' / 'out'}: ")


def test_one_run_per_output_folder_and_the_lock_file_goes_with_it(tmp_path):
    with trainer.lock_output(tmp_path):
        assert (tmp_path / trainer.LOCK).exists()
        with pytest.raises(OutputError) as caught:
            with trainer.lock_output(tmp_path):
                pass
        assert str(caught.value) == (
            f"another tumor-train is writing to {tmp_path}: wait for it to end, or choose another --out"
        )
        with trainer.lock_output(tmp_path, enabled=False):  # the other ranks of a torchrun job do not lock
            pass
    assert not (tmp_path / trainer.LOCK).exists()


def test_a_checkpoint_the_disk_refuses_says_what_is_kept(tmp_path, monkeypatch):
    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer, "save_atomic", full)
    with pytest.raises(OutputError) as caught:
        trainer.save_checkpoint({}, tmp_path / "checkpoint.pth", 3)
    assert str(caught.value) == (
        f"could not save the checkpoint after epoch 3 (No space left on device); the "
        f"checkpoint of epoch 2 in {tmp_path / 'checkpoint.pth'} is intact: free space, then "
        f"tumor-train --out {tmp_path} --resume"
    )
    with pytest.raises(OutputError) as caught:
        trainer.save_checkpoint({}, tmp_path / "checkpoint.pth", 1)
    assert str(caught.value).endswith("; no checkpoint was written yet")


def test_stale_exports_go_manifest_first(tmp_path, capsys):
    removed = []
    for name in ("model.onnx", "manifest.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    real_unlink = Path.unlink
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "unlink", lambda self, *a, **k: (removed.append(self.name), real_unlink(self, *a, **k)))
        trainer.remove_stale_exports(tmp_path)
    assert removed == ["manifest.json", "model.onnx"] and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert "Removed model.onnx, manifest.json: exported from the weights this run replaced" in capsys.readouterr().out
    trainer.remove_stale_exports(tmp_path)
    assert capsys.readouterr().out == ""


def test_bf16_only_where_asked_and_native(monkeypatch):
    cpu = trainer.Placement(torch.device("cpu"))
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert trainer.use_bf16(TrainConfig(bf16=True), cpu) and not trainer.use_bf16(TrainConfig(bf16=False), cpu)
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert not trainer.use_bf16(TrainConfig(bf16=True), cpu)


def test_an_interrupt_in_epoch_2_points_at_the_checkpoint_of_epoch_1(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, epochs=3)
    real = trainer.run_epoch

    def interrupt_in_epoch_2(cfg, state, tensors, classes, stats, bf16, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(cfg, state, tensors, classes, stats, bf16, epoch)

    monkeypatch.setattr(trainer, "run_epoch", interrupt_in_epoch_2)
    with pytest.raises(trainer.Interrupted) as caught:
        trainer.train_on(cfg, prepare_data(cfg))
    out = tmp_path / "out"
    assert str(caught.value) == (
        f"interrupted in epoch 2; the checkpoint after epoch 1 is in {out / 'checkpoint.pth'}: "
        f"continue with tumor-train --out {out} --resume"
    )
    assert caught.value.terminated is False
    assert torch.load(out / "checkpoint.pth", weights_only=False)["epoch"] == 1


def test_a_final_fit_keeps_the_last_epoch_and_says_there_is_no_validation(tmp_path):
    cfg = tiny(tmp_path, val_fraction=0.0, epochs=2)
    metrics = trainer.train_on(cfg, prepare_data(cfg))
    assert metrics["best_epoch"] == 2 and metrics["validation"] is None
    assert metrics["note"].startswith("final fit: every image trained for a fixed number of epochs")
    assert [h["val_f2"] for h in metrics["history"]] == [None, None]
    out = tmp_path / "out"
    assert not (out / "confusion_matrix.png").exists() and (out / "f2.png").exists()
    assert torch.load(out / "model.pth", weights_only=True)["val_f2"] == -1.0


def test_the_outputs_record_the_run(tmp_path):
    cfg = tiny(tmp_path)
    metrics = trainer.train_on(cfg, prepare_data(cfg))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "checkpoint.pth",
            "model.pth",
            "model_quantized.pth",
            "metrics.json",
            "history.csv",
            "f2.png",
            "accuracy.png",
            "loss.png",
            "confusion_matrix.png",
            "predictions.png",
        ]
    )
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train_images"] + metrics["data"]["validation_images"] == 16
    assert metrics["data"]["skipped_count"] == 0 and metrics["effective_batch_size"] == 32
    assert metrics["seconds_per_epoch"] == pytest.approx(np.mean([h["seconds"] for h in metrics["history"]]))
    assert metrics["best_epoch"] == max(metrics["history"], key=lambda h: h["val_f2"])["epoch"]
    assert metrics["config"]["image_size"] == 32 and metrics["placement"]["device"] == "cpu"
    ckpt = torch.load(out / "model.pth", weights_only=True)
    assert ckpt["preprocess"] == {
        "size": 32,
        "mean": metrics["data"]["mean"],
        "std": metrics["data"]["std"],
        "grayscale": True,
        "resize": "pil-bilinear",
        "crop": "none",
    }
    assert ckpt["best_epoch"] == metrics["best_epoch"] and ckpt["val_f2"] == metrics["validation"]["f2_macro"]
    assert (
        ckpt["versions"]["torch"] == metadata.version("torch")
        and len(ckpt["data"]["val_files"]) == metrics["data"]["validation_images"]
    )


def test_an_interrupt_in_epoch_1_says_no_checkpoint_exists_yet(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    monkeypatch.setattr(trainer, "run_epoch", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(trainer.Interrupted) as caught:
        trainer.train_on(cfg, prepare_data(cfg))
    assert str(caught.value) == (
        "interrupted in epoch 1; no checkpoint was written yet (none is saved before epoch 1 ends)"
    )


def test_a_termination_while_writing_outputs_says_where_the_weights_are(tmp_path, monkeypatch):
    from tumor_runtime.core.signals import Terminated

    cfg = tiny(tmp_path, epochs=1)
    monkeypatch.setattr(trainer, "write_outputs", lambda *args: (_ for _ in ()).throw(Terminated()))
    with pytest.raises(trainer.Interrupted) as caught:
        trainer.train_on(cfg, prepare_data(cfg))
    out = tmp_path / "out"
    assert caught.value.terminated is True
    assert str(caught.value) == (
        f"interrupted while writing the outputs; the trained weights are in "
        f"{out / 'checkpoint.pth'}: tumor-train --out {out} --resume writes them again"
    )


def test_teachers_are_loaded_with_the_runs_crop_classes_and_distillation_settings(tmp_path, monkeypatch):
    from tumor_train import distill

    seen = []
    monkeypatch.setattr(distill.Teachers, "load", classmethod(lambda cls, *args: seen.append(args) or None))
    cfg = tiny(tmp_path, epochs=1, teachers=["t.pth"], distill_temperature=3.0, distill_weight=0.25)
    trainer.train_on(cfg, prepare_data(cfg))
    assert seen == [
        (["t.pth"], "none", ["glioma", "meningioma", "notumor", "pituitary"], 3.0, 0.25, torch.device("cpu"))
    ]


def test_the_history_and_metrics_name_every_figure(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    metrics = trainer.train_on(cfg, prepare_data(cfg))
    row = metrics["history"][0]
    assert set(row) == {
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "train_f2",
        "val_loss",
        "val_accuracy",
        "val_f2",
        "seconds",
    }
    assert row["lr"] > 0
    assert metrics["parameters"] == sum(p.numel() for p in load_model(tmp_path / "out" / "model.pth")[0].parameters())
    assert torch.load(tmp_path / "out" / "model.pth", weights_only=True)["data"]["train_dir"] == str(tmp_path / "data")


def test_the_final_fit_note_is_spelled_out(tmp_path):
    cfg = tiny(tmp_path, val_fraction=0.0, epochs=1)
    note = trainer.train_on(cfg, prepare_data(cfg))["note"]
    assert note == (
        "final fit: every image trained for a fixed number of epochs and the last weight average is the "
        "model; there is no validation split. The evidence is the cross-validation report (tumor-train "
        "--cv) of the same recipe."
    )
