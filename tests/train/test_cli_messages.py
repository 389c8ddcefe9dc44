"""What `tumor-train` says when it ends: its scores (Testing/ included) and the export command that comes next,
a command that works as printed."""

from __future__ import annotations

import shlex

from click.testing import CliRunner

from tests.helpers.datasets import make_dataset


def train(args: list[str]):
    from tumor_train.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args] + ["--epochs", "1", "--width", "8"])
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.strip()]


def test_a_run_with_a_testing_folder_prints_its_test_score_and_what_to_run_next(tmp_path):
    root = tmp_path / "kaggle"
    make_dataset(root / "Training", per_class=10)
    make_dataset(root / "Testing", per_class=3, seed=7)
    out = tmp_path / "run"
    lines = train(["--data", root, "--out", out])
    test_line = next(line for line in lines if line.startswith("Testing/"))
    assert test_line.startswith("Testing/ (12 images): test macro F2 ")
    assert lines[-1].startswith(f"Wrote model.pth, metrics.json and plots to {out}/. Next: tumor-export ")
    command = shlex.split(lines[-1].split("Next: ", 1)[1])
    from tumor_export.cli import main as export

    exported = CliRunner().invoke(export, command[1:] + ["--calibration-size", "16"])
    assert exported.exit_code == 0, exported.output
    assert (out / "model.int8.onnx").is_file()


def test_a_final_fit_says_export_needs_a_labelled_folder(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=4)
    lines = train(["--data", data, "--out", tmp_path / "fit", "--val-fraction", "0"])
    assert "Final fit: 1 epoch on every image, no validation split." in lines
    assert not any(line.startswith("Testing/") for line in lines)
    assert lines[-1].endswith(
        f"tumor-export --checkpoint {tmp_path / 'fit' / 'model.pth'} --int8 --evaluate LABELLED_DIR"
    )
