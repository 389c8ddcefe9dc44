"""tumor-infer and the Classifier API: torch-free, every image mode, formats, bad input, exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.comparisons import assert_same_probabilities
from tests.helpers.datasets import make_dataset, synthetic_image
from tumor_runtime.imaging.decode import MAX_PIXELS
from tumor_runtime.inference.classifier import Classifier

RECORD_KEYS = {
    "path",
    "label",
    "confidence",
    "probabilities",
    "tumor_probability",
    "tumor",
    "ood_score",
    "in_distribution",
    "error",
}


def infer(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tumor_runtime", *map(str, args)], capture_output=True, text=True, **kwargs
    )


@pytest.fixture
def images(tmp_path) -> Path:
    return make_dataset(tmp_path / "imgs", per_class=3)


def test_formats_parse(exported, images, tmp_path):
    model = exported / "model.int8.onnx"
    table = infer([images, "-r", "--model", model])
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 13
    rows = list(csv.DictReader(io.StringIO(infer([images, "-r", "--model", model, "--format", "csv"]).stdout)))
    assert len(rows) == 12 and {"path", "label", "tumor_probability", "p_glioma", "error"} <= set(rows[0])
    data = json.loads(infer([images, "-r", "--model", model, "--format", "json"]).stdout)
    assert len(data) == 12 and set(data[0]) == RECORD_KEYS
    assert sum(data[0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert data[0]["tumor_probability"] == pytest.approx(1 - data[0]["probabilities"]["notumor"], abs=1e-6)
    out = tmp_path / "sub" / "results.jsonl"
    result = infer([images, "-r", "--model", model, "--format", "jsonl", "--output", out])
    assert result.stdout == "" and [json.loads(x)["path"] for x in out.read_text().splitlines()] == [
        d["path"] for d in data
    ]
    assert [p.name for p in out.parent.iterdir()] == ["results.jsonl"]


def test_threshold_override(exported, images):
    model = exported / "model.int8.onnx"
    low = json.loads(infer([images, "-r", "--model", model, "--format", "json", "--tumor-threshold", "0"]).stdout)
    high = json.loads(infer([images, "-r", "--model", model, "--format", "json", "--tumor-threshold", "1"]).stdout)
    assert all(r["tumor"] for r in low)
    assert [r["tumor"] for r in high] == [r["tumor_probability"] >= 1.0 for r in high]


def test_evaluate_matches_scikit_learn(exported, tmp_path):
    sklearn = pytest.importorskip("sklearn.metrics")
    folder = make_dataset(tmp_path / "eval", per_class=6, seed=9)
    model = exported / "model.int8.onnx"
    result = infer([folder, "--evaluate", "--model", model, "--format", "json"])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    clf = Classifier.load(model)
    classes = clf.info.classes
    files = sorted(folder.rglob("*.jpg"))
    y_true = [classes.index(f.parent.name) for f in files]
    y_pred = [classes.index(r["label"]) for r in clf.predict(files)]
    assert got["f2_macro"] == pytest.approx(
        sklearn.fbeta_score(y_true, y_pred, beta=2, average="macro", zero_division=0)
    )
    assert got["f2_weighted"] == pytest.approx(
        sklearn.fbeta_score(y_true, y_pred, beta=2, average="weighted", zero_division=0)
    )
    assert got["accuracy"] == pytest.approx(sklearn.accuracy_score(y_true, y_pred))
    assert got["confusion_matrix"] == sklearn.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    tumor = [t != classes.index("notumor") for t in y_true]
    caught = [p != classes.index("notumor") for p, t in zip(y_pred, tumor) if t]
    assert got["tumor_sensitivity"] == pytest.approx(np.mean(caught))
    assert got["n_images"] == 24 and got["n_errors"] == 0 and got["classes"] == classes
    text = infer([folder, "--evaluate", "--model", model])
    assert "macro F2" in text.stdout and "confusion matrix" in text.stdout


def make_bad_files(folder: Path) -> dict[str, str]:
    """Every kind of bad input, keyed by file name, with a word its error message must contain."""
    good = folder / "good.jpg"
    Image.fromarray(synthetic_image(0, np.random.default_rng(1), 128)).save(good, quality=95)
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    os.symlink(folder / "missing-target.png", folder / "dangling.png")  # unreadable: open() fails
    Image.new("1", (10_000, 10_000)).save(folder / "bomb.png")  # 100M pixels in a tiny file
    return {
        "truncated.jpg": "truncated",
        "empty.png": "empty",
        "notes.jpg": "not a readable image",
        "corrupt.png": "",
        "dangling.png": "",
        "bomb.png": "too large",
    }


def test_bad_files_get_error_rows_and_good_ones_still_run(exported, tmp_path):
    assert 10_000 * 10_000 > MAX_PIXELS
    bad = make_bad_files(tmp_path)
    result = infer([tmp_path, "--model", exported / "model.int8.onnx", "--format", "json"])
    assert result.returncode == 1
    rows = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert rows["good.jpg"]["error"] is None and rows["good.jpg"]["label"] is not None
    for name, word in bad.items():
        assert rows[name]["error"] and word in rows[name]["error"], (name, rows[name]["error"])
        assert rows[name]["label"] is None
        assert any(name in line for line in result.stderr.splitlines())
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["no-such-path", "empty-folder", "no-model", "not-onnx", "bad-sha", "evaluate-file"])
def test_usage_errors_exit_2_with_one_line(exported, images, tmp_path, case):
    model = exported / "model.int8.onnx"
    args = [images, "-r", "--model", model]
    if case == "no-such-path":
        args = [tmp_path / "nothing-here", "--model", model]
    elif case == "empty-folder":
        (tmp_path / "empty").mkdir()
        args = [tmp_path / "empty", "--model", model]
    elif case == "no-model":
        args = [images, "-r", "--model", tmp_path / "absent.onnx"]
    elif case == "not-onnx":
        (tmp_path / "fake.onnx").write_text("hello")
        args = [images, "-r", "--model", tmp_path / "fake.onnx"]
    elif case == "bad-sha":
        copy = tmp_path / "m"
        shutil.copytree(exported, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"]["model.int8.onnx"] = "0" * 64
        (copy / "manifest.json").write_text(json.dumps(manifest))
        args = [images, "-r", "--model", copy / "model.int8.onnx"]
    elif case == "evaluate-file":
        args = [next(images.rglob("*.jpg")), "--evaluate", "--model", model]
    result = infer(args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1 and result.stdout == ""


def test_python_api(exported, images):
    clf = Classifier.load(exported / "model.int8.onnx", threads=1, batch_size=4)
    files = sorted(images.rglob("*.jpg"))
    array = np.asarray(Image.open(files[0]))
    records = clf.predict([*files, array, np.zeros((3, 3, 3), np.float64) + 0.5j])
    assert len(records) == len(files) + 2
    assert all(set(r) == RECORD_KEYS for r in records)
    assert_same_probabilities(records[len(files)], records[0])
    assert records[len(files)]["path"] == f"<array {len(files)}>"
    assert records[-1]["error"] and records[-1]["label"] is None  # a complex array is refused, not raised
    assert clf.predict(files[0])[0]["path"] == str(files[0])
