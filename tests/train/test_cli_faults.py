"""`tumor-train` under bad inputs and faults: NaN options, unreadable classes, symlinks, full disks, interrupts,
resume checks."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from tests.helpers.datasets import REPO, make_dataset
from tests.helpers.processes import infer, one_line_error, run
from tumor_runtime.core.fileio import sha256_file

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


def trainer_cli():
    from tumor_train.cli import main

    return main


def interrupt_in_epoch(monkeypatch, which: int):
    import tumor_train.trainer as trainer

    real, calls = trainer.train_one_epoch, []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) == which:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", fake)


@pytest.mark.parametrize("option", ["--lr", "--val-fraction", "--dup-threshold"])
def test_02_train_refuses_nan(option, tmp_path):
    one_line_error(run("tumor_train", ["--data", tmp_path, option, "nan"]))
    from tumor_train.config import TrainConfig

    with pytest.raises(ValueError):
        TrainConfig(dropout=float("nan")).check()


def test_05_class_with_no_readable_image_is_refused(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=4)
    for f in (data / "pituitary").iterdir():
        f.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.warns(UserWarning, match="^skipping .*pituitary"):
        result = run("tumor_train", ["--data", data, "--out", tmp_path / "o", "--epochs", "1", "--width", "8"])
    one_line_error(result)
    assert "pituitary" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "o" / "model.pth").exists()


def test_10_symlinked_class_folders_train_and_resume(tmp_path):
    elsewhere = make_dataset(tmp_path / "elsewhere", per_class=6)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("glioma", "meningioma", "notumor", "pituitary"):
        (data / name).symlink_to(elsewhere / name, target_is_directory=True)
    out = tmp_path / "o"
    result = run("tumor_train", ["--data", data, "--out", out, "--epochs", "1", "--width", "8"])
    assert result.returncode == 0, result.stderr
    val = torch.load(out / "model.pth", weights_only=True)["data"]["val_files"]
    assert val and all(not f.startswith("..") and (data / f).is_file() for f in val)
    assert run("tumor_train", ["--out", out, "--resume"]).returncode == 0


def test_10_weights_survive_when_outputs_cannot_be_written(dataset, tmp_path, monkeypatch):
    import tumor_train.trainer as trainer

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.plots, "plot_curves", disk_full)
    out = tmp_path / "o"
    result = CliRunner().invoke(
        trainer_cli(), ["--data", str(dataset), "--out", str(out), "--epochs", "1", "--width", "8"]
    )
    assert result.exit_code == 2 and "checkpoint.pth" in result.output
    best = torch.load(out / "checkpoint.pth", weights_only=True)["best"]
    assert best["state_dict"] is not None


@pytest.mark.parametrize("case", ["other-width", "corrupt-checkpoint", "read-only-out"])
def test_12_train_errors_before_training(dataset, tmp_path, case):
    out = tmp_path / "o"
    if case == "other-width":
        assert run("tumor_train", ["--data", dataset, "--out", out, "--epochs", "1", "--width", "8"]).returncode == 0
        args = ["--data", dataset, "--out", out, "--resume", "--width", "16"]
    elif case == "corrupt-checkpoint":
        out.mkdir()
        (out / "checkpoint.pth").write_bytes(b"garbage")
        args = ["--data", dataset, "--out", out, "--resume"]
    else:
        args = ["--data", dataset, "--out", "/proc/tumor-train-run", "--epochs", "1"]
    result = run("tumor_train", args)
    one_line_error(result)
    assert "epoch 1" not in result.stderr  # refused before any training


def test_14_resume_restores_the_configuration(dataset, tmp_path, monkeypatch):
    out = tmp_path / "o"
    interrupt_in_epoch(monkeypatch, 2)
    result = CliRunner().invoke(
        trainer_cli(), ["--data", str(dataset), "--out", str(out), "--epochs", "3", "--width", "8"]
    )
    assert result.exit_code == 130
    monkeypatch.undo()
    conflict = CliRunner().invoke(trainer_cli(), ["--out", str(out), "--resume", "--epochs", "60"])
    assert conflict.exit_code == 2 and "--epochs 60" in conflict.output
    monkeypatch.chdir(tmp_path)  # the default --data ("Data") does not exist here: it comes from the checkpoint
    resumed = CliRunner().invoke(trainer_cli(), ["--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming after epoch 1 of 3" in resumed.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["width"] == 8 and [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


def test_14_resume_checks_the_checkpoint_before_the_data(tmp_path):
    result = run("tumor_train", ["--data", "/no/such/data", "--out", tmp_path, "--resume"])
    one_line_error(result)
    assert "nothing to resume" in result.stderr


def test_15_ctrl_c_in_epoch_1_says_there_is_no_checkpoint(dataset, tmp_path, monkeypatch):
    interrupt_in_epoch(monkeypatch, 1)
    result = CliRunner().invoke(
        trainer_cli(), ["--data", str(dataset), "--out", str(tmp_path / "o"), "--epochs", "2", "--width", "8"]
    )
    assert result.exit_code == 130
    assert "no checkpoint" in result.output and not (tmp_path / "o" / "checkpoint.pth").exists()


def test_17_default_outputs_never_touch_artifacts(dataset, tmp_path):
    before = sha256_file(REPO / "artifacts" / "model.pth")
    result = run("tumor_train", ["--data", dataset, "--epochs", "1", "--width", "8"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "model.pth").is_file()
    again = run("tumor_train", ["--data", dataset, "--out", runs[0], "--epochs", "1"], cwd=tmp_path)
    one_line_error(again)  # an existing run is not overwritten without --overwrite
    one_line_error(run("tumor_export", ["--int8"], cwd=REPO))  # no default checkpoint: say which
    assert sha256_file(REPO / "artifacts" / "model.pth") == before


def test_18_ctrl_c_while_writing_training_outputs(dataset, tmp_path, monkeypatch):
    import tumor_train.trainer as trainer

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.plots, "plot_curves", interrupt)
    result = CliRunner().invoke(
        trainer_cli(), ["--data", str(dataset), "--out", str(tmp_path / "o"), "--epochs", "1", "--width", "8"]
    )
    assert result.exit_code == 130 and "--resume" in result.output
    assert (tmp_path / "o" / "checkpoint.pth").is_file()


def test_22_summaries_have_no_raw_floats(dataset, int8, tmp_path):
    import re

    trained_line = run(
        "tumor_train", ["--data", dataset, "--out", tmp_path / "o", "--epochs", "1", "--width", "8"]
    ).stdout.splitlines()[-1]
    evaluation = infer([make_dataset(tmp_path / "e", per_class=2), "--evaluate", "--model", int8]).stdout
    for text in (trained_line, evaluation):
        assert not re.search(r"\d\.\d{5,}", text), text


def test_an_interrupted_fold_continues_through_the_cv_command_never_alone(tmp_path, monkeypatch):
    """Round four, item 4: resuming a --cv fold as a plain run would train it on a new split of its own
    validation images; the message names the --cv command, and --resume of a fold folder is refused."""
    data = make_dataset(tmp_path / "d", per_class=6)
    cv_args = [
        "--data",
        str(data),
        "--out",
        str(tmp_path / "cv"),
        "--cv",
        "2",
        "--epochs",
        "2",
        "--width",
        "8",
        "--size",
        "32",
    ]
    interrupt_in_epoch(monkeypatch, 4)  # fold 2, epoch 2: fold 2 has the checkpoint of its epoch 1
    stopped = CliRunner().invoke(trainer_cli(), cv_args)
    assert stopped.exit_code == 130
    assert (
        "Stopped: fold 2 of 2: interrupted in epoch 2; run the same tumor-train --cv 2 command again: finished "
        "folds are reused and fold 2 continues from its last checkpoint, if one was saved"
    ) in stopped.output
    alone = CliRunner().invoke(trainer_cli(), ["--out", str(tmp_path / "cv" / "fold-2"), "--resume"])
    assert alone.exit_code == 2 and "is a fold of a --cv run" in alone.output
    monkeypatch.undo()
    again = CliRunner().invoke(trainer_cli(), cv_args)
    assert again.exit_code == 0, again.output
    assert "fold 1/2: reusing" in again.output and "(resuming its checkpoint)" in again.output
    assert "Resuming after epoch 1 of 2." in again.output
    (tmp_path / "list.txt").write_text("glioma/img_000.jpg\n")
    listed = CliRunner().invoke(trainer_cli(), cv_args + ["--val-list", str(tmp_path / "list.txt")])
    assert listed.exit_code == 2 and "--val-list with --cv" in listed.output


def test_a_val_list_beside_a_validation_folder_is_refused(tmp_path):
    """Round four, item 18: the list was silently ignored and the run validated on the folder."""
    make_dataset(tmp_path / "d" / "Train", per_class=4)
    make_dataset(tmp_path / "d" / "Validation", per_class=2, seed=3)
    (tmp_path / "list.txt").write_text("Train/glioma/img_000.jpg\n")
    result = run(
        "tumor_train",
        [
            "--data",
            tmp_path / "d",
            "--out",
            tmp_path / "o",
            "--epochs",
            "1",
            "--width",
            "8",
            "--val-list",
            tmp_path / "list.txt",
        ],
    )
    one_line_error(result)
    assert "--val-list and " in result.stderr and "both name the validation images" in result.stderr
    assert not (tmp_path / "o" / "model.pth").exists()


def test_ctrl_c_while_the_cv_figure_is_drawn_says_what_is_kept(tmp_path, monkeypatch):
    """Every fold trained and cv.json written, Ctrl-C while cv.png is drawn: 130 and a line saying what is
    written and that the same command draws it (not "interrupted before training started")."""
    import tumor_train.cv as cv

    data = make_dataset(tmp_path / "d", per_class=6)
    args = [
        "--data",
        str(data),
        "--out",
        str(tmp_path / "cv"),
        "--cv",
        "2",
        "--epochs",
        "1",
        "--width",
        "4",
        "--size",
        "32",
    ]

    def interrupted(records, path):
        raise KeyboardInterrupt()

    monkeypatch.setattr(cv, "plot_cv", interrupted)
    stopped = CliRunner().invoke(trainer_cli(), args)
    assert stopped.exit_code == 130, stopped.output
    assert "before training started" not in stopped.output
    assert f"interrupted while drawing {tmp_path / 'cv' / 'cv.png'}; the 2 folds and" in stopped.output
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["complete"]
    monkeypatch.undo()
    again = CliRunner().invoke(trainer_cli(), args)
    assert again.exit_code == 0 and (tmp_path / "cv" / "cv.png").is_file() and "reusing" in again.output
