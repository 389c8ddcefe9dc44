"""tumor-export's closing lines: the report, how the tumor threshold was chosen, and what was written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tumor_export.cli import format_report, main
from tumor_runtime.core import scoring


def report(threshold, sensitivity, alarms):
    return {
        "files": {"model.onnx": {"bytes": 2_000_000}},
        "seconds": 3.0,
        "tumor_threshold": threshold,
        "fp32": {
            "f2_macro": 0.5,
            "screening": {"threshold": threshold, "sensitivity": sensitivity, "false_alarm_rate": alarms},
        },
    }


def test_the_threshold_is_printed_with_its_rule_and_its_false_alarm_rate():
    text = format_report(report(0.31, 0.996, 0.02))
    assert (
        f"Tumor threshold 0.3100 ({scoring.THRESHOLD_RULE}): flags 99.6% of tumor slices and 2.0% of no-tumor "
        "slices (false alarms)"
    ) in text
    assert "Warning" not in text


def test_a_degenerate_threshold_is_warned_about_on_the_terminal():
    """A weak model chose 0.0017 (96 % false alarms) and only export_report.json said so."""
    text = format_report(report(0.0017, 1.0, 0.96))
    assert text.splitlines()[-1] == scoring.threshold_warning(report(0.0017, 1.0, 0.96)["fp32"]["screening"])


def test_help_says_how_the_threshold_is_chosen():
    text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert " ".join(scoring.THRESHOLD_RULE.split()) in text


def test_the_export_says_what_it_wrote_and_what_comes_next(trained, tmp_path):
    result = CliRunner().invoke(main, ["--checkpoint", trained / "model.pth", "--out", tmp_path / "e"])
    assert result.exit_code == 0, result.output
    written = [line for line in result.output.splitlines() if line.startswith("Wrote ")]
    assert written == [
        f"Wrote model.onnx, export_report.json and manifest.json to {tmp_path / 'e'}/ in "
        f"{written[0].split(' in ')[1].split('s.')[0]}s. Next: tumor-infer -m "
        f"{tmp_path / 'e' / 'model.onnx'} FOLDER/"
    ]
    assert (tmp_path / "e" / "model.onnx").is_file()


def test_class_folders_with_sub_folders_export_with_the_flag(tmp_path):
    """Round four, item 8: training accepts Training/glioma/patient1/x.jpg; export labelled validation files by
    their parent folder ('patient1' is not in list, exit 70) and the OOD fit found 0 training images."""
    import json

    from click.testing import CliRunner

    from tests.helpers.datasets import make_dataset
    from tumor_export.cli import main as export
    from tumor_runtime.imaging.listing import class_of
    from tumor_train.cli import main as train

    flat = make_dataset(tmp_path / "flat", per_class=12)
    nested = tmp_path / "nested" / "Training"
    for image in sorted(flat.rglob("*.jpg")):
        patient = f"patient{int(image.stem[-3:]) % 3}"
        (nested / image.parent.name / patient).mkdir(parents=True, exist_ok=True)
        image.rename(nested / image.parent.name / patient / image.name)
    out = tmp_path / "run"
    trained = CliRunner().invoke(
        train, ["--data", str(tmp_path / "nested"), "--out", str(out), "--epochs", "1", "--width", "8", "--size", "64"]
    )
    assert trained.exit_code == 0, trained.output
    exported = CliRunner().invoke(
        export, ["--checkpoint", str(out / "model.pth"), "--int8", "--calibration-size", "16"]
    )
    assert exported.exit_code == 0, exported.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["ood"] is not None, exported.output
    assert class_of("Training/glioma/patient1/x.jpg", ["glioma", "notumor"]) == "glioma"
    assert class_of("x.jpg", ["glioma"]) is None


@pytest.mark.parametrize(
    "change, says",
    [
        ({"size": 0}, "input_size 0 is not in"),
        ({"size": "64"}, "numbers expected"),
        ({"size": 5000}, "not in 1..4096"),
        ({"mean": 50.0}, "mean 50.0"),
        ({"mean": float("nan")}, "mean nan"),
        ({"resize": "cv2-area"}, "not the runtime's"),
        ({"crop": "lungs"}, "crop 'lungs'"),
    ],
)
def test_a_checkpoint_whose_preprocessing_the_runtime_would_refuse_is_refused_before_export(
    trained, tmp_path, change, says
):
    """Round four, item 17: exit 70 for some, a model the runtime refuses for others (after 352 s), the
    parity-failure code for a NaN mean."""
    import torch
    from click.testing import CliRunner

    from tumor_export.cli import main as export

    ckpt = torch.load(trained / "model.pth", weights_only=True)
    ckpt["preprocess"] = ckpt["preprocess"] | change
    torch.save(ckpt, tmp_path / "model.pth")
    result = CliRunner().invoke(export, ["--checkpoint", str(tmp_path / "model.pth")])
    assert result.exit_code == 2 and says in result.output and "internal error" not in result.output, result.output
    assert not (tmp_path / "model.onnx").exists()
