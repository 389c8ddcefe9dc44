"""DICOM input: pydicom's own test files and files generated here; never the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.datasets import SAMPLES
from tests.helpers.dicom import pydicom_file, write_dicom
from tests.helpers.processes import block_imports, run_infer
from tumor_runtime.imaging.transform import load_gray
from tumor_runtime.inference.classifier import Classifier

pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def slice8() -> np.ndarray:
    """A real slice, 8-bit, with its brightest pixel at 255."""
    gray = load_gray(next(SAMPLES.rglob("*.jpg")), 227).copy()
    gray[0, 0] = 255
    return gray


def test_pydicom_mr_slice_is_classified_with_its_identifiers():
    from tumor_runtime.imaging.dicom import DicomFrame, load_frame

    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    gray, context = load_frame(DicomFrame(path, None))
    low = float(ds.WindowCenter) - float(ds.WindowWidth) / 2  # the VOI window, computed here independently
    expected = np.rint(np.clip((ds.pixel_array - low) / float(ds.WindowWidth), 0, 1) * 255)
    assert np.abs(gray.astype(int) - expected).max() <= 1
    assert context == {
        "sop_instance_uid": ds.SOPInstanceUID,
        "series_instance_uid": ds.SeriesInstanceUID,
        "instance_number": int(ds.InstanceNumber),
    }
    rec = Classifier.load().predict([path])[0]
    assert rec["error"] is None and rec["label"] and rec["dicom"] == context


def test_twelve_bits_in_sixteen_give_the_eight_bit_slice(tmp_path, slice8):
    path = write_dicom(tmp_path / "twelve.dcm", slice8.astype(np.uint32) * 4095 // 255, bits_stored=12)
    png = tmp_path / "slice.png"
    from PIL import Image

    Image.fromarray(slice8).save(png)
    clf = Classifier.load()
    from_dicom, from_png = clf.predict([path, png])
    assert from_dicom["label"] == from_png["label"]
    assert from_dicom["probabilities"] == pytest.approx(from_png["probabilities"], abs=0.02)


def test_monochrome1_is_inverted_and_windows_apply(tmp_path, slice8):
    from tumor_runtime.imaging.dicom import DicomFrame, load_frame

    values = slice8.astype(np.uint16) * 16
    mono2 = load_frame(DicomFrame(write_dicom(tmp_path / "m2.dcm", values), None))[0]
    mono1 = load_frame(DicomFrame(write_dicom(tmp_path / "m1.dcm", 4095 - values, "MONOCHROME1"), None))[0]
    assert np.abs(mono1.astype(int) - mono2).max() <= 1  # inverted storage, same picture
    windowed = load_frame(DicomFrame(write_dicom(tmp_path / "w.dcm", values, window=("1024", "2048")), None))[0]
    expected = np.rint(np.clip(values.astype(float) / 2048, 0, 1) * 255)
    assert np.abs(windowed.astype(int) - expected).max() <= 1
    multi = write_dicom(tmp_path / "mv.dcm", values, window=(["1024", "3000"], ["2048", "10"]))
    assert np.array_equal(load_frame(DicomFrame(multi, None))[0], windowed)  # the first of several values
    rescaled = write_dicom(tmp_path / "r.dcm", values // 2, window=("1024", "2048"), slope_intercept=("2", "0"))
    assert np.abs(load_frame(DicomFrame(rescaled, None))[0].astype(int) - windowed).max() <= 1


def test_multi_frame_gives_one_row_per_frame(tmp_path, slice8):
    frames = np.stack([slice8, np.flipud(slice8), np.zeros_like(slice8)]).astype(np.uint16)
    path = write_dicom(tmp_path / "multi.dcm", frames, bits_stored=8)
    rows = Classifier.load().predict([path])
    assert [r["path"] for r in rows] == [f"{path}#1", f"{path}#2", f"{path}#3"]
    assert all(r["error"] is None and r["dicom"]["instance_number"] == 7 for r in rows[:2])
    assert rows[2]["label"] is None and "constant image" in rows[2]["error"]  # a blank frame is not diagnosed


def test_folder_of_dicom_files_with_and_without_extension(tmp_path, slice8):
    folder = tmp_path / "series" / "sub"
    folder.mkdir(parents=True)
    write_dicom(folder / "IM0001", slice8, bits_stored=8)  # no extension: found by its preamble
    write_dicom(folder / "slice.dcm", slice8, bits_stored=8)
    (folder / "README").write_text("not DICOM")
    result = run_infer([tmp_path / "series", "-r", "--format", "jsonl"])
    assert result.returncode == 0, result.stderr
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == ["IM0001", "slice.dcm"]
    assert all(r["dicom"]["sop_instance_uid"] for r in rows)
    csv_out = run_infer([tmp_path / "series", "-r", "--format", "csv"]).stdout
    assert "sop_instance_uid" in csv_out.splitlines()[0]
    for fmt in ("table", "csv", "json", "jsonl"):  # identifiers only: never the patient's name or ID
        out = run_infer([tmp_path / "series", "-r", "--format", fmt]).stdout
        assert "SECRET" not in out and "424242" not in out


@pytest.mark.parametrize(
    "name, word",
    [
        ("reportsi.dcm", "without pixel data"),
        ("rtstruct.dcm", "without pixel data"),
        ("MR_small_jpeg_ls_lossless.dcm", "transfer syntax"),
        ("MR_truncated.dcm", "cannot decode"),
    ],
)
def test_dicom_that_cannot_be_classified_gets_an_error_row(tmp_path, name, word):
    source = pydicom_file(name)
    good = pydicom_file("MR_small.dcm")
    result = run_infer([source, good, "--format", "jsonl"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert word in rows[0]["error"] and rows[0]["label"] is None
    assert rows[1]["error"] is None


def test_corrupt_dcm_gets_an_error_row(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(os.urandom(3000))
    rec = Classifier.load().predict([tmp_path / "junk.dcm"])[0]
    assert rec["error"] and rec["label"] is None


def test_without_pydicom_a_dcm_names_the_extra(tmp_path):
    code = block_imports("pydicom") + (
        f"from tumor_runtime.cli.infer import main\nsys.argv = ['tumor-infer', {str(pydicom_file('MR_small.dcm'))!r},"
        " '--format', 'jsonl']\nmain()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert 'pip install -e ".[dicom]"' in json.loads(result.stdout)["error"]
    assert ".[dicom]" in result.stderr


def test_heatmaps_of_dicom_frames(tmp_path, slice8):
    """Overlays are drawn on the decoded frame itself: a DICOM file is never reopened as an image."""
    from click.testing import CliRunner

    from tumor_runtime.cli.infer import main

    (tmp_path / "in").mkdir()
    write_dicom(tmp_path / "in" / "multi.dcm", np.stack([slice8, np.fliplr(slice8)]).astype(np.uint16), bits_stored=8)
    result = CliRunner().invoke(main, [str(tmp_path / "in"), "--heatmaps", str(tmp_path / "maps"), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert [r["path"].rsplit("#", 1)[1] for r in rows] == ["1", "2"]
    assert len({r["heatmap"] for r in rows}) == 2 and all(Path(r["heatmap"]).is_file() for r in rows)
    assert all("slice" not in r and "cam" not in r for r in rows)
