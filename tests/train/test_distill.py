"""`train/distill.py` and `tumor-train --teacher`: distilling from frozen teacher models."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from tumor_runtime.errors import OptionError
from tumor_train.cli import main
from tumor_train.checkpoint import load_model
from tumor_train.distill import Teachers


def teachers_of(trained, weight=0.5, temperature=2.0, copies=1) -> Teachers:
    classes = torch.load(trained / "model.pth", weights_only=True)["classes"]
    return Teachers.load([str(trained / "model.pth")] * copies, "brain", classes, temperature, weight,
                         torch.device("cpu"))


def test_soft_targets_are_the_teachers_mean_softened_probabilities(trained):
    teachers = teachers_of(trained, temperature=3.0)
    model, ckpt = load_model(trained / "model.pth")
    pre = ckpt["preprocess"]
    warped = torch.rand(5, 1, pre["size"], pre["size"])
    with torch.no_grad():
        expected = torch.softmax(model((warped - pre["mean"]) / pre["std"]) / 3.0, 1)
    torch.testing.assert_close(teachers.soft_targets(warped), expected, rtol=1e-5, atol=1e-6)
    # another input size: the batch is resized to the teacher's side first
    bigger = torch.nn.functional.interpolate(warped, scale_factor=2, mode="nearest")
    assert teachers.soft_targets(bigger).shape == expected.shape


def test_the_loss_blends_cross_entropy_and_a_kl_that_is_zero_when_the_student_agrees(trained):
    model, ckpt = load_model(trained / "model.pth")
    size = ckpt["preprocess"]["size"]
    warped = torch.rand(4, 1, size, size)
    with torch.no_grad():
        agreeing = model((warped - ckpt["preprocess"]["mean"]) / ckpt["preprocess"]["std"])
    hard = torch.tensor(0.7)
    assert teachers_of(trained, weight=0.0).blend(hard, agreeing, warped) == pytest.approx(0.7)
    assert teachers_of(trained, weight=1.0).blend(hard, agreeing, warped) == pytest.approx(0.0, abs=1e-5)
    disagreeing = -agreeing
    assert teachers_of(trained, weight=1.0).blend(hard, disagreeing, warped) > 0.01
    # two copies of one teacher are that teacher
    assert teachers_of(trained, weight=1.0, copies=2).blend(hard, disagreeing, warped) == pytest.approx(
        float(teachers_of(trained, weight=1.0).blend(hard, disagreeing, warped)), rel=1e-5)


def test_a_teacher_with_other_classes_or_another_crop_is_refused(trained):
    classes = torch.load(trained / "model.pth", weights_only=True)["classes"]
    with pytest.raises(OptionError, match="crop"):
        Teachers.load([str(trained / "model.pth")], "none", classes, 2.0, 0.5, torch.device("cpu"))
    with pytest.raises(OptionError, match="classes"):
        Teachers.load([str(trained / "model.pth")], "brain", classes[::-1], 2.0, 0.5, torch.device("cpu"))


def test_training_with_a_teacher_records_it_and_a_bad_teacher_is_one_line(trained, dataset, tmp_path):
    out = tmp_path / "student"
    result = CliRunner().invoke(main, ["--data", str(dataset), "--out", str(out), "--epochs", "1", "--width", "8",
                                       "--size", "64", "--teacher", str(trained / "model.pth")])
    assert result.exit_code == 0, result.output
    assert "distilling from 1 teachers" in result.output
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["teachers"] == [str(trained / "model.pth")] and config["distill_weight"] == 0.5
    (tmp_path / "junk.pth").write_bytes(b"not a model")
    bad = CliRunner().invoke(main, ["--data", str(dataset), "--out", str(tmp_path / "o2"), "--epochs", "1",
                                    "--teacher", str(tmp_path / "junk.pth")])
    assert bad.exit_code == 2 and "junk.pth" in bad.output and "Traceback" not in bad.output
