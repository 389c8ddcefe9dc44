"""What the test suites share, in one place: the import blocker, the CLI runners, DICOM writers.

Imported by the tests that need them (never from conftest.py, which only holds fixtures).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner


def block_imports(*packages: str) -> str:
    """Python source that makes importing any of `packages` fail (an install without them): prepend it to a
    `python -c` program."""
    return ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {tuple(packages)!r}:\n"
            "            raise ImportError('blocked: ' + name)\nsys.meta_path.insert(0, Block())\n")


# Probabilities of one image computed in batches of other sizes or other company: CPUs pick other kernels by
# batch size (batch 1 and 64 differ in the last bits on an AVX2-only EPYC), and an int8 activation can then round
# to the neighbouring step. Equal to this, never bit for bit; a wrong image or order moves them by far more.
ACROSS_BATCHES = 1e-4


def probability_table(records) -> np.ndarray:
    """(rows, classes) of the records' probabilities, classes in the order of the first record."""
    classes = list(records[0]["probabilities"])
    return np.array([[r["probabilities"][c] for c in classes] for r in records])


def assert_same_probabilities(got, expected, atol: float = ACROSS_BATCHES) -> None:
    """Records (or single records) with the same classes and probabilities within `atol`."""
    got, expected = (list(x) if isinstance(x, (list, tuple)) else [x] for x in (got, expected))
    assert [list(r["probabilities"]) for r in got] == [list(r["probabilities"]) for r in expected]
    np.testing.assert_allclose(probability_table(got), probability_table(expected), rtol=0, atol=atol)


def assert_same_rows(got, expected, atol: float = ACROSS_BATCHES) -> None:
    """Result rows (dicts, or CSV text) equal field by field, numbers within `atol`: the rows of one input
    set run in other batches (Ray actors, the server's batcher) are the same rows, not the same bits."""
    if isinstance(got, str):
        import csv
        import io

        got, expected = (list(csv.reader(io.StringIO(text))) for text in (got, expected))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_same_value(a, b, atol)


def assert_same_value(a, b, atol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_value(a[key], b[key], atol)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_value(x, y, atol)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= atol * max(1.0, abs(b)), (a, b)
    elif isinstance(a, str) and isinstance(b, str) and a != b:
        assert abs(float(a) - float(b)) <= atol * max(1.0, abs(float(b))), (a, b)  # a CSV number cell
    else:
        assert a == b


BLOCK_TORCH = block_imports("torch", "torchvision", "sklearn", "onnx", "onnxscript", "matplotlib", "tqdm")


def run(module: str, args, cwd=None) -> subprocess.CompletedProcess:
    """The command in this process (click's runner: fast, no torch import per call), as a CompletedProcess."""
    import importlib

    main = importlib.import_module(f"{module}.cli").main
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the commands turn SIGTERM into an exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def infer(args, **kwargs):
    return run("tumor_runtime", args, **kwargs)


def one_line_error(result, code: int = 2) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error")].__len__() == 1, result.stderr


def run_infer(args) -> subprocess.CompletedProcess:
    """tumor-infer in a new interpreter (signals, exit codes and stdout as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "tumor_runtime", *map(str, args)], capture_output=True, text=True)


def pydicom_file(name: str) -> Path:
    path = dicom_test_files() / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this pydicom package")
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 16,
                window: tuple | None = None, slope_intercept: tuple | None = None, with_preamble: bool = True) -> Path:
    """A small MR data set (uncompressed) with the given pixels: (rows, cols) or (frames, rows, cols)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.InstanceNumber, ds.Modality = 7, "MR"
    ds.PatientName, ds.PatientID = "SECRET^PATIENT", "ID-424242"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if slope_intercept:
        ds.RescaleSlope, ds.RescaleIntercept = slope_intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=with_preamble)
    return path


def dicom_test_files() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"  # shipped inside the package


# Fuzzed files: random, truncated and bit-flipped encodings of one real slice -----------------------

SAMPLE_SLICES = Path(__file__).resolve().parents[1] / "artifacts" / "samples"


@functools.cache
def real_encodings() -> dict[str, bytes]:
    """One real slice as JPEG (the file itself), PNG and TIFF bytes."""
    import io

    from PIL import Image

    source = next(SAMPLE_SLICES.rglob("*.jpg"))
    image = Image.open(source)
    encoded = {"jpg": source.read_bytes()}
    for ext, fmt in (("png", "PNG"), ("tif", "TIFF")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        encoded[ext] = buffer.getvalue()
    return encoded


def mangled_file():
    """A hypothesis strategy of (extension, bytes): random bytes, a truncated real file or one with flipped bits."""
    from hypothesis import strategies as st

    encoded = real_encodings()
    random_bytes = st.tuples(st.sampled_from(sorted(encoded)), st.binary(max_size=2000))
    truncated = st.sampled_from(sorted(encoded)).flatmap(
        lambda ext: st.integers(0, len(encoded[ext]) - 1).map(lambda n: (ext, encoded[ext][:n])))
    flipped = st.sampled_from(sorted(encoded)).flatmap(lambda ext: st.lists(
        st.tuples(st.integers(0, len(encoded[ext]) - 1), st.integers(0, 7)), min_size=1, max_size=8).map(
        lambda flips: (ext, flip_bits(encoded[ext], flips))))
    return st.one_of(random_bytes, truncated, flipped)


def flip_bits(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        out[position] ^= 1 << bit
    return bytes(out)


# A tumor-serve process ---------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(port: int, seconds: float = 60.0) -> None:
    """Poll /ping of a tumor-serve on 127.0.0.1 until its model has loaded (or `seconds` pass)."""
    import json
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1).read())["status"] == \
                    "Healthy":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)


def model_checkpoint(path: Path, size: int = 32, width: int = 4, crop: str = "brain", seed: int = 0,
                     classes=("glioma", "meningioma", "notumor", "pituitary"), mean: float = 0.2,
                     std: float = 0.25) -> Path:
    """A model.pth as tumor-train writes it, around an untrained compact model (seeded): for tests of the
    stages that read checkpoints, without training one."""
    import torch

    from tumor_train.checkpoint import FORMAT, save_atomic
    from tumor_train.models import build_model, model_args_for

    torch.manual_seed(seed)
    args = model_args_for("compact", len(classes), width, 0.1)
    model = build_model("compact", **args)
    save_atomic({"format": FORMAT, "arch": "compact", "model_args": args, "state_dict": model.state_dict(),
                 "classes": list(classes), "negative_class": "notumor",
                 "preprocess": {"size": size, "mean": mean, "std": std, "grayscale": True,
                                "resize": "pil-bilinear", "crop": crop},
                 "data": {"root": "", "train_dir": "", "val_files": []}, "best_epoch": 1, "val_f2": 0.5,
                 "versions": {}}, Path(path))
    return Path(path)
