"""Inputs that once gave a wrong answer without an error (multi-frame files, EXIF rotation, palettes, tiny or
degenerate images, FIFOs, symlink loops, huge batches): every one is an error row or the right answer now.
The number in each test's name is the item of the fault sweep it covers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers.comparisons import assert_same_probabilities
from tests.helpers.datasets import SAMPLES
from tests.helpers.dicom import write_dicom
from tests.helpers.processes import free_port, run_infer, wait_until_healthy
from tumor_runtime.imaging.dicom import DicomFrame, load_frame
from tumor_runtime.imaging.transform import MIN_SIDE, load_gray
from tumor_runtime.inference.classifier import Classifier

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def clf():
    return Classifier.load(threads=1)


@pytest.fixture(scope="module")
def slice8() -> np.ndarray:
    gray = load_gray(next(SAMPLES.rglob("*.jpg")), 227).copy()
    gray[0, 0] = 255
    return gray


def rows_of(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_01_evaluate_labels_follow_frames_of_a_multi_frame_dicom(tmp_path, slice8):
    data = tmp_path / "eval"
    for name in ("glioma", "meningioma", "notumor", "pituitary"):
        (data / name).mkdir(parents=True)
    write_dicom(data / "glioma" / "a_multi.dcm", np.stack([slice8] * 3).astype(np.uint16), bits_stored=8)
    bad = write_dicom(data / "glioma" / "b_negative.dcm", np.stack([slice8] * 2).astype(np.uint16), bits_stored=8)
    import pydicom

    ds = pydicom.dcmread(bad)
    ds.NumberOfFrames = -5
    ds.save_as(bad)
    for name in ("meningioma", "notumor", "pituitary"):
        for src in sorted((SAMPLES / name).glob("*.jpg"))[:2]:
            (data / name / src.name).write_bytes(src.read_bytes())
    plain = rows_of(run_infer([data, "-r", "--format", "jsonl"]))
    evaluation = run_infer(["--evaluate", data, "--format", "json"])
    assert "Traceback" not in evaluation.stderr
    report = json.loads(evaluation.stdout)
    truth = {"glioma": 0, "meningioma": 1, "notumor": 2, "pituitary": 3}
    expected = np.zeros((4, 4), int)
    for row in plain:
        if row["error"] is None:
            expected[truth[os.path.basename(os.path.dirname(row["path"].split("#")[0]))], truth[row["label"]]] += 1
    assert np.array_equal(np.array(report["confusion_matrix"]), expected)
    assert expected.sum() == 3 + 6  # three frames and six JPEGs scored; the negative frame count is an error
    assert report["n_errors"] == 1


def test_03_04_a_lying_or_negative_frame_count_is_one_error_row(tmp_path, slice8):
    import pydicom

    path = write_dicom(tmp_path / "lie.dcm", np.stack([slice8] * 3).astype(np.uint16), bits_stored=8)
    for count, word in ((100_000, "holds at most 3"), (-5, "not a frame count"), (0, "not a frame count")):
        ds = pydicom.dcmread(path)
        ds.NumberOfFrames = count
        ds.save_as(path)
        rows = rows_of(run_infer([path, "--format", "jsonl"]))
        assert len(rows) == 1 and word in rows[0]["error"] and rows[0]["label"] is None


def test_05_exif_orientation_is_applied(tmp_path, clf):
    upright = Image.open(sorted((SAMPLES / "glioma").glob("*.jpg"))[0]).convert("L")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera stores for Orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    stored.save(tmp_path / "sideways.jpg", quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    a, b, c = (load_gray(tmp_path / n, 227) for n in ("rotated.jpg", "upright.jpg", "sideways.jpg"))
    assert np.abs(a.astype(int) - b).mean() < 2 < np.abs(c.astype(int) - b).mean()
    rotated, plain = clf.predict([tmp_path / "rotated.jpg", tmp_path / "upright.jpg"])
    assert rotated["label"] == plain["label"]


def test_06_palette_colour_and_voi_lut_sequence_are_honoured(tmp_path, slice8):
    import pydicom
    from pydicom.dataset import Dataset

    plain = load_frame(DicomFrame(write_dicom(tmp_path / "plain.dcm", slice8.astype(np.uint16), bits_stored=8), None))[
        0
    ]
    # An inverting VOI LUT: stored v -> 255 - v.
    path = write_dicom(tmp_path / "voi.dcm", slice8.astype(np.uint16), bits_stored=8)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new("LUTData", "US", list(range(255, -1, -1)))
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    assert np.abs(load_frame(DicomFrame(path, None))[0].astype(int) - (255 - plain.astype(int))).max() <= 1
    # PALETTE COLOR: index i shows gray 255 - i; the raw indices must not be used as gray.
    path = write_dicom(tmp_path / "palette.dcm", slice8.astype(np.uint16), photometric="PALETTE COLOR", bits_stored=8)
    ds = pydicom.dcmread(path)
    table = np.arange(255, -1, -1, dtype=np.uint16) * 257
    for colour in ("Red", "Green", "Blue"):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    ds.save_as(path)
    assert np.abs(load_frame(DicomFrame(path, None))[0].astype(int) - (255 - plain.astype(int))).max() <= 1


@pytest.mark.parametrize("shape", [(1, 1), (1, 5000), (5000, 1), (MIN_SIDE - 1, 300)])
def test_07_images_too_small_are_refused(tmp_path, shape, clf):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / "tiny.png")
    rec = clf.predict([tmp_path / "tiny.png"])[0]
    assert rec["label"] is None and rec["tumor"] is None and "too small" in rec["error"]


@pytest.mark.parametrize(
    "array, word",
    [
        (np.zeros((0, 0), np.uint8), "too small"),
        (np.full((64, 64), np.nan, np.float32), "no finite"),
        (np.arange(300, dtype=np.uint8), "not an image"),
        (np.zeros((4, 64, 64), np.uint8), "not an image"),
        (np.full((64, 64), 77, np.uint8), "constant"),
    ],
)
def test_07_degenerate_arrays_are_refused(array, word, clf):
    rec = clf.predict([array])[0]
    assert rec["label"] is None and rec["tumor"] is None and word in rec["error"]


@pytest.mark.parametrize(
    "change, word",
    [
        ({"RescaleSlope": "0", "RescaleIntercept": "0"}, "RescaleSlope is 0"),
        ({"WindowCenter": "100", "WindowWidth": "inf"}, "window"),
        ({"Rows": 1, "Columns": 1}, "too small"),
    ],
)
def test_07_degenerate_dicom_is_refused(tmp_path, slice8, change, word, clf):
    pixels = slice8[:1, :1] if "Rows" in change else slice8
    path = write_dicom(tmp_path / "d.dcm", pixels.astype(np.uint16), bits_stored=8)
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in change.items():
        setattr(ds, key, value)
    ds.save_as(path)
    rec = clf.predict([path])[0]
    assert rec["label"] is None and word in rec["error"]


@pytest.mark.parametrize("fmt, name", [("TIFF", "stack.tif"), ("GIF", "anim.gif"), ("PNG", "anim.png")])
def test_08_multi_frame_images_are_not_read_as_their_first_frame(tmp_path, fmt, name, clf):
    first = Image.fromarray(np.zeros((64, 64), np.uint8))
    second = Image.open(sorted((SAMPLES / "glioma").glob("*.jpg"))[0]).convert("L")
    first.resize(second.size).save(tmp_path / name, format=fmt, save_all=True, append_images=[second])
    rec = clf.predict([tmp_path / name])[0]
    assert rec["label"] is None and "2 frames" in rec["error"]


def test_09_fifo_and_device_inputs_are_error_rows_not_hangs(tmp_path):
    os.mkfifo(tmp_path / "pipe.dcm")
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.dcm")
    good = next(SAMPLES.rglob("*.jpg"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tumor_runtime",
            str(tmp_path / "pipe.dcm"),
            str(tmp_path / "pipe.jpg"),
            str(tmp_path / "zero.dcm"),
            str(good),
            "--format",
            "jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = rows_of(result)
    assert [r["error"] for r in rows[:3]] == ["not a regular file (FIFO)"] * 2 + [
        "not a regular file (character device)"
    ]
    assert rows[3]["error"] is None and result.returncode == 1
    folder = subprocess.run(
        [sys.executable, "-m", "tumor_runtime", str(tmp_path), "--format", "jsonl"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sum("not a regular file" in (r["error"] or "") for r in rows_of(folder)) == 3


def test_13_heatmaps_of_a_long_name_into_the_input_folder(exported, tmp_path):
    """A 251-byte input name aborted the run; overlays written into the input folder were read back as slices."""
    from click.testing import CliRunner

    from tumor_runtime.cli.infer import main

    folder = tmp_path / "in"
    folder.mkdir()
    sample = next(SAMPLES.rglob("*.jpg"))
    (folder / ("x" * 247 + ".jpg")).write_bytes(sample.read_bytes())
    (folder / "short.jpg").write_bytes(sample.read_bytes())
    args = [str(folder), "--model", str(exported / "model.int8.onnx"), "--heatmaps", str(folder), "--format", "jsonl"]
    for _ in range(2):  # the second run must not classify the first run's overlays
        result = CliRunner().invoke(main, args)
        assert result.exit_code in (0, 1) and "Traceback" not in result.output  # 1: the tiny test model flags
        rows = [json.loads(x) for x in result.stdout.splitlines()]  # real slices out of distribution
        assert len(rows) == 2 and all(r["error"] is None and r["heatmap"] for r in rows)
    assert len(list(folder.glob("*.heatmap.png"))) == 2


def test_16_recursive_listing_follows_symlinked_folders_without_looping(tmp_path):
    from tests.helpers.datasets import make_dataset
    from tumor_runtime.imaging.listing import images_in

    real = make_dataset(tmp_path / "real", per_class=2)
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("glioma", "notumor"):
        (linked / name).symlink_to(real / name, target_is_directory=True)
    (linked / "glioma" / "loop").symlink_to(linked, target_is_directory=True)  # a link back up the tree
    found = images_in(linked, recursive=True)
    assert len(found) == 4 and len({os.path.realpath(p) for p in found}) == 4
    assert images_in(linked, recursive=False) == []


def test_16_calibrating_on_the_evaluation_folder_says_why_it_cannot(trained, tmp_path):
    from tests.helpers.datasets import make_dataset
    from tests.helpers.processes import one_line_error, run

    data = make_dataset(tmp_path / "d", per_class=3)
    result = run(
        "tumor_export",
        [
            "--checkpoint",
            trained / "model.pth",
            "--out",
            tmp_path / "x",
            "--int8",
            "--eval",
            data,
            "--calibration",
            data,
        ],
    )
    one_line_error(result)
    assert "every image under" in result.stderr and "--calibration folder other than --eval" in result.stderr


def test_17_a_huge_batch_size_runs_the_model_in_bounded_slices(tmp_path):
    from tumor_runtime.inference.classifier import SESSION_BATCH

    clf = Classifier.load(threads=1, batch_size=4096)
    seen = []
    real = clf.session.run

    def recording(outputs, feeds):
        seen.append(len(next(iter(feeds.values()))))
        return real(outputs, feeds)

    clf.session.run = recording
    images = [np.tile(np.arange(64, dtype=np.uint8) * (i % 3 + 1), (64, 1)) for i in range(150)]
    records = clf.predict(images)
    assert len(records) == 150 and all(r["error"] is None for r in records)
    assert max(seen) <= SESSION_BATCH and sum(seen) == 150
    single = Classifier.load(threads=1, batch_size=1).predict(images[:3])
    assert_same_probabilities(single, records[:3])  # batch 1 against batch 64: within ACROSS_BATCHES


def test_10_sigterm_stops_the_server_even_with_a_client_holding_a_request(tmp_path):
    """SIGTERM: stop accepting, give in-flight requests a bounded time, exit (it lingered ~80 s)."""
    import socket
    import time

    pytest.importorskip("uvicorn")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tumor_runtime.cli.serve import main; main()", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_healthy(port, 20)
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /predictions/tumor HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n\xff\xd8")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        slow.close()
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()


def test_16_training_calibration_and_eval_read_a_dicom_as_the_runtime_does(tmp_path, slice8, clf):
    from tumor_train.data import decode_images

    single = write_dicom(tmp_path / "one.dcm", slice8.astype(np.uint16), bits_stored=8)
    multi = write_dicom(tmp_path / "multi.dcm", np.stack([slice8] * 2).astype(np.uint16), bits_stored=8)
    with pytest.warns(UserWarning, match="^skipping .*multi.dcm: multi-frame DICOM"):
        decoded = decode_images([single, multi], np.zeros(2, np.int64), clf.info.input_size, crop=clf.info.crop)
    assert len(decoded.images) == 1 and "multi-frame DICOM" in decoded.skipped[0][1]
    assert np.array_equal(decoded.images[0], clf.decode(DicomFrame(single, None))[0])
