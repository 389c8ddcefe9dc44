"""`train/distill.py` and `tumor-train --teacher`: distilling from frozen teacher models."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from tests.helpers.checkpoints import model_checkpoint
from tumor_runtime.core.errors import OptionError
from tumor_train.cli import main
from tumor_train.distill import Teachers
from tumor_train.model_file import load_model


@pytest.fixture
def teacher(tmp_path):
    """The folder of an untrained compact teacher (32 px, brain crop), as the tests below only need its answers."""
    model_checkpoint(tmp_path / "model.pth", size=32, mean=0.3, std=0.2)
    return tmp_path


def teachers_of(folder, weight=0.5, temperature=2.0, copies=1) -> Teachers:
    classes = torch.load(folder / "model.pth", weights_only=True)["classes"]
    return Teachers.load(
        [str(folder / "model.pth")] * copies, "brain", classes, temperature, weight, torch.device("cpu")
    )


def test_soft_targets_are_the_teachers_mean_softened_probabilities(teacher):
    teachers = teachers_of(teacher, temperature=3.0)
    model, ckpt = load_model(teacher / "model.pth")
    pre = ckpt["preprocess"]
    warped = torch.rand(5, 1, pre["size"], pre["size"])
    with torch.no_grad():
        expected = torch.softmax(model((warped - pre["mean"]) / pre["std"]) / 3.0, 1)
    torch.testing.assert_close(teachers.soft_targets(warped), expected, rtol=1e-5, atol=1e-6)
    # another input size: the batch is resized to the teacher's side first
    bigger = torch.nn.functional.interpolate(warped, scale_factor=2, mode="nearest")
    assert teachers.soft_targets(bigger).shape == expected.shape


def test_the_loss_blends_cross_entropy_and_a_kl_that_is_zero_when_the_student_agrees(teacher):
    model, ckpt = load_model(teacher / "model.pth")
    size = ckpt["preprocess"]["size"]
    warped = torch.rand(4, 1, size, size)
    with torch.no_grad():
        agreeing = model((warped - ckpt["preprocess"]["mean"]) / ckpt["preprocess"]["std"])
    hard = torch.tensor(0.7)
    assert teachers_of(teacher, weight=0.0).blend(hard, agreeing, warped) == pytest.approx(0.7)
    assert teachers_of(teacher, weight=1.0).blend(hard, agreeing, warped) == pytest.approx(0.0, abs=1e-5)
    disagreeing = -agreeing
    assert teachers_of(teacher, weight=1.0).blend(hard, disagreeing, warped) > 0.01
    # two copies of one teacher are that teacher
    assert teachers_of(teacher, weight=1.0, copies=2).blend(hard, disagreeing, warped) == pytest.approx(
        float(teachers_of(teacher, weight=1.0).blend(hard, disagreeing, warped)), rel=1e-5
    )


def test_a_teacher_with_other_classes_or_another_crop_is_refused(teacher):
    classes = torch.load(teacher / "model.pth", weights_only=True)["classes"]
    with pytest.raises(OptionError, match="crop"):
        Teachers.load([str(teacher / "model.pth")], "none", classes, 2.0, 0.5, torch.device("cpu"))
    with pytest.raises(OptionError, match="classes"):
        Teachers.load([str(teacher / "model.pth")], "brain", classes[::-1], 2.0, 0.5, torch.device("cpu"))


def test_training_with_a_teacher_records_it_and_a_bad_teacher_is_one_line(trained, dataset, tmp_path):
    out = tmp_path / "student"
    result = CliRunner().invoke(
        main,
        [
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--width",
            "8",
            "--size",
            "64",
            "--teacher",
            str(trained / "model.pth"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "distilling from 1 teachers" in result.output
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["teachers"] == [str(trained / "model.pth")] and config["distill_weight"] == 0.5
    (tmp_path / "junk.pth").write_bytes(b"not a model")
    bad = CliRunner().invoke(
        main,
        [
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "o2"),
            "--epochs",
            "1",
            "--teacher",
            str(tmp_path / "junk.pth"),
        ],
    )
    assert bad.exit_code == 2 and "junk.pth" in bad.output and "Traceback" not in bad.output


def test_the_blend_is_the_weighted_sum_with_the_squared_temperature(teacher):
    teachers = teachers_of(teacher, weight=0.25, temperature=3.0)
    warped = torch.rand(3, 1, 32, 32)
    logits = torch.randn(3, 4)
    soft = teachers.soft_targets(warped)
    kl = (soft * (soft.log() - torch.log_softmax(logits / 3.0, 1))).sum(1).mean()  # batchmean KL(soft || student)
    expected = 0.75 * 1.2 + 0.25 * 9.0 * kl
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an implicit softmax dimension warns, and would break on a 1-D batch
        assert float(teachers.blend(torch.tensor(1.2), logits, warped)) == pytest.approx(float(expected), rel=1e-5)


def test_a_larger_batch_is_resized_with_antialiasing_to_the_teachers_side(teacher):
    teachers = teachers_of(teacher, temperature=1.0)
    model, ckpt = load_model(teacher / "model.pth")
    big = torch.rand(2, 1, 64, 64)
    small = torch.nn.functional.interpolate(big, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        expected = torch.softmax(model((small - 0.3) / 0.2), 1)
    torch.testing.assert_close(teachers.soft_targets(big), expected, rtol=1e-5, atol=1e-6)


def test_teachers_are_frozen_in_evaluation_mode_and_keep_their_input_statistics(teacher, tmp_path):
    model_checkpoint(tmp_path / "other.pth", size=48, mean=0.1, std=0.5, seed=1)
    teachers = Teachers.load(
        [str(teacher / "model.pth"), str(tmp_path / "other.pth")],
        "brain",
        ["glioma", "meningioma", "notumor", "pituitary"],
        2.0,
        0.5,
        torch.device("cpu"),
    )
    assert teachers.inputs == [(32, 0.3, 0.2), (48, 0.1, 0.5)]
    assert all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in teachers.models)
    assert (teachers.temperature, teachers.weight) == (2.0, 0.5)


def test_refusals_name_the_teacher_and_the_difference(teacher):
    path = str(teacher / "model.pth")
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    with pytest.raises(OptionError) as caught:
        Teachers.load([path], "none", classes, 2.0, 0.5, torch.device("cpu"))
    assert str(caught.value) == (
        f"teacher {path} was trained with crop 'brain', this run uses 'none': teachers must "
        "see the slice as the student does"
    )
    with pytest.raises(OptionError) as caught:
        Teachers.load([path], "brain", classes[::-1], 2.0, 0.5, torch.device("cpu"))
    assert str(caught.value) == f"teacher {path} knows the classes {classes}, not {classes[::-1]}"


def test_a_teacher_from_before_the_brain_crop_saw_whole_frames(teacher):
    """Checkpoints written before `preprocess.crop` existed were trained on the whole frame."""
    from tumor_train.model_file import save_atomic

    path = teacher / "model.pth"
    ckpt = torch.load(path, weights_only=True)
    save_atomic(ckpt | {"preprocess": {k: v for k, v in ckpt["preprocess"].items() if k != "crop"}}, path)
    assert len(Teachers.load([str(path)], "none", ckpt["classes"], 2.0, 0.5, torch.device("cpu")).models) == 1
    with pytest.raises(OptionError) as caught:
        Teachers.load([str(path)], "brain", ckpt["classes"], 2.0, 0.5, torch.device("cpu"))
    assert str(caught.value) == (
        f"teacher {path} was trained with crop 'none', this run uses 'brain': teachers must "
        "see the slice as the student does"
    )


def test_teachers_go_to_the_training_device_in_channels_last(teacher):
    """On the student's device (a GPU run keeps them there; "meta" stands in for one) and channels-last, the
    memory format the student trains in (faster on CPU and GPU alike)."""
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    teachers = Teachers.load([str(teacher / "model.pth")], "brain", classes, 2.0, 0.5, torch.device("meta"))
    params = list(teachers.models[0].parameters())
    assert all(p.device.type == "meta" for p in params)
    convolutions = [p for p in params if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)


def test_a_teacher_with_non_finite_weights_is_refused(teacher, tmp_path):
    """Round four, item 18: such a teacher made the student all NaN, and tumor-train still exited 0."""
    ckpt = torch.load(teacher / "model.pth", weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["state_dict"][name] = ckpt["state_dict"][name].clone()
    ckpt["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pth")
    with pytest.raises(OptionError, match=rf"^teacher .*nan.pth has non-finite weights \({name}\): it cannot teach$"):
        Teachers.load(
            [str(tmp_path / "nan.pth")],
            ckpt["preprocess"].get("crop", "none"),
            ckpt["classes"],
            2.0,
            0.5,
            torch.device("cpu"),
        )


@pytest.mark.parametrize(
    "path, said",
    [
        ("/dev/null", "is a character device, not a torch checkpoint file"),
        (".", "is a folder, not a torch checkpoint file"),
        ("absent.pth", "does not exist"),
    ],
)
def test_a_teacher_that_is_not_a_file_says_what_it_is(path, said):
    """`--teacher /dev/null` is a device, not a missing file: the message says which."""
    from tumor_train.model_file import CheckpointError

    with pytest.raises(CheckpointError) as caught:
        Teachers.load([path], "brain", ["glioma", "notumor"], 2.0, 0.5, torch.device("cpu"))
    assert said in str(caught.value)


def test_a_teacher_folder_without_cv_is_one_line_before_any_work(tmp_path):
    """A --cv folder of teachers is per fold: a plain run has no fold to pick one by."""
    from click.testing import CliRunner

    from tumor_train.cli import main

    result = CliRunner().invoke(
        main, ["--data", str(tmp_path), "--teacher", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and not (tmp_path / "o").exists()
    assert f"--teacher {tmp_path} is a folder: a --cv folder of teachers goes with --cv" in result.output
