"""The images an export reads: the evaluation set and the calibration sample (`tumor_export.inputs`)."""

from __future__ import annotations

import pytest
import torch

from tumor_export import inputs as export_inputs
from tumor_export.calibration import CalibrationError
from tumor_export.options import ExportOptions
from tumor_train.data import DataError


def test_the_evaluation_set_is_eval_else_the_recorded_split_else_an_error(small, tmp_path):
    path, root = small
    ckpt = torch.load(path, weights_only=True)
    files, labels = export_inputs.evaluation_set(ExportOptions(path), ckpt, required=True)
    assert [str(f.relative_to(root)) for f in files] == ckpt["data"]["val_files"]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    files, labels = export_inputs.evaluation_set(ExportOptions(path, eval_dir=root), ckpt, required=True)
    assert len(files) == 24 and labels.tolist() == sorted(labels.tolist())
    with pytest.raises(DataError) as caught:
        export_inputs.evaluation_set(ExportOptions(path, eval_dir=tmp_path / "absent"), ckpt, required=True)
    assert str(caught.value) == f"--eval folder {tmp_path / 'absent'} does not exist"
    with pytest.raises(DataError, match="^--eval: "):
        export_inputs.evaluation_set(ExportOptions(path, eval_dir=tmp_path / "run"), ckpt, required=True)
    moved = ckpt | {"data": ckpt["data"] | {"root": str(tmp_path / "elsewhere")}}
    assert export_inputs.evaluation_set(ExportOptions(path), moved, required=False) is None
    with pytest.raises(DataError) as caught:
        export_inputs.evaluation_set(ExportOptions(path), moved, required=True)
    assert str(caught.value).startswith(
        f"--int8 needs labelled images for the parity gate and images to calibrate "
        f"on; the validation split recorded in the checkpoint is not under "
        f"{tmp_path / 'elsewhere'}: pass --eval DIR"
    )


def test_calibration_leaves_out_the_evaluation_images_and_names_a_missing_folder(small, tmp_path):
    path, root = small
    ckpt = torch.load(path, weights_only=True)
    excluded = [root / f for f in ckpt["data"]["val_files"]]
    inputs, files = export_inputs.calibration_inputs(ExportOptions(path, calibration_size=100), ckpt, excluded)
    assert len(files) == 16 and not {f.resolve() for f in files} & {f.resolve() for f in excluded}
    assert inputs.shape == (16, 1, 32, 32)
    with pytest.raises(DataError) as caught:
        export_inputs.calibration_inputs(ExportOptions(path, calibration=tmp_path / "absent"), ckpt, [])
    assert str(caught.value) == f"calibration folder {tmp_path / 'absent'} does not exist; pass --calibration DIR"
    (tmp_path / "junk" / "glioma").mkdir(parents=True)
    (tmp_path / "junk" / "glioma" / "a.jpg").write_bytes(b"junk")
    with pytest.raises(CalibrationError) as caught:
        export_inputs.calibration_inputs(ExportOptions(path, calibration=tmp_path / "junk"), ckpt, [])
    assert str(caught.value) == f"none of the 1 calibration images drawn from {tmp_path / 'junk'} could be read"
