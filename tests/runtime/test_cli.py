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

from tests.conftest import REPO, make_dataset, synthetic_image
from tests.helpers import BLOCK_TORCH, assert_same_probabilities
from tumor_runtime.classifier import Classifier
from tumor_runtime.preprocess import MAX_PIXELS, load_gray

RECORD_KEYS = {"path", "label", "confidence", "probabilities", "tumor_probability", "tumor", "ood_score",
               "in_distribution", "error"}


def infer(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tumor_runtime", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


@pytest.fixture
def images(tmp_path) -> Path:
    return make_dataset(tmp_path / "imgs", per_class=3)


def test_layering_contracts_hold():
    """import-linter's contracts in pyproject.toml: the runtime never imports torch (nor train/export), and
    training never imports export; a new back arrow fails here."""
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_importing_runtime_leaves_torch_out():
    code = ("import sys, tumor_runtime, tumor_runtime.cli, tumor_runtime.classifier, tumor_runtime.model, "
            "tumor_runtime.output, tumor_runtime.inputs, tumor_runtime.metrics\n"
            "import tumor_runtime.cli as c\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'sklearn')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_cli_runs_where_torch_cannot_be_imported(exported, images):
    code = BLOCK_TORCH + ("from tumor_runtime.cli import main\n"
                          f"sys.argv = ['tumor-infer', '-r', {str(images)!r}, '--model', {str(exported / 'model.int8.onnx')!r},"
                          " '--format', 'jsonl']\nmain()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 12 and all(r["error"] is None for r in rows)


def test_preprocessing_matches_training_transform():
    """Runtime numpy preprocessing vs an independent training-side transform: torchvision's
    Grayscale + Resize(bilinear) on the PIL image, then ToTensor + Normalize (the reference recipe)."""
    torch = pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    from tumor_runtime.preprocess import normalize

    files = sorted((REPO / "artifacts" / "samples").rglob("*.jpg"))
    assert len(files) >= 8, "real sample images are committed under artifacts/samples"
    reference = transforms.Compose([transforms.Grayscale(), transforms.Resize((227, 227), antialias=True),
                                    transforms.ToTensor(), transforms.Normalize([0.18], [0.2])])
    expected = torch.stack([reference(Image.open(f).convert("RGB")) for f in files]).numpy()
    runtime_side = np.stack([normalize(load_gray(f, 227), 0.18, 0.2) for f in files])
    # One 8-bit level is 1/255/0.2 = 0.0196 after normalisation; draft-mode JPEG decoding may differ by one.
    assert np.abs(runtime_side - expected).max() <= 1.01 / 255 / 0.2
    assert np.abs(runtime_side - expected).mean() < 0.1 / 255 / 0.2
    # And the training cache holds exactly the runtime's pixels.
    from tumor_train.data import decode_images, to_input

    train_side = decode_images(files, np.zeros(len(files), np.int64), 227)
    np.testing.assert_allclose(to_input(torch.from_numpy(train_side.images), 0.18, 0.2).numpy(), runtime_side,
                               atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "P", "LA", "I;16"])
@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_every_mode_converts_like_grayscale(tmp_path, mode, ext):
    gray = synthetic_image(1, np.random.default_rng(3), size=100)
    base = Image.fromarray(gray, "L")
    if mode == "I;16":
        if ext == ".bmp":
            pytest.skip("BMP has no 16-bit grayscale")
        img = Image.fromarray(gray.astype(np.uint16) * 257)  # full 16-bit range: must scale, not clip
    elif mode == "LA" and ext == ".bmp" or mode == "CMYK" and ext in (".png", ".bmp"):
        pytest.skip(f"{ext} cannot store {mode}")
    else:
        img = base.convert(mode)
    path = tmp_path / f"img{ext}"
    img.save(path)
    np.testing.assert_array_equal(load_gray(path, 227), load_gray(base, 227))


def test_twelve_bit_data_gives_the_eight_bit_pixels(tmp_path):
    gray = synthetic_image(2, np.random.default_rng(4), size=64)
    gray[0, 0] = 255
    Image.fromarray((gray.astype(np.uint32) * 4095 // 255).astype(np.uint16)).save(tmp_path / "twelve.png")
    assert Image.open(tmp_path / "twelve.png").mode.startswith("I")
    out = load_gray(tmp_path / "twelve.png", 64)
    assert np.abs(out.astype(int) - gray).max() <= 1  # scaled by 4095, not by 65535 (which would be black)


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
    assert result.stdout == "" and [json.loads(x)["path"] for x in out.read_text().splitlines()] == [d["path"] for d in data]
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
    assert got["f2_macro"] == pytest.approx(sklearn.fbeta_score(y_true, y_pred, beta=2, average="macro", zero_division=0))
    assert got["f2_weighted"] == pytest.approx(sklearn.fbeta_score(y_true, y_pred, beta=2, average="weighted", zero_division=0))
    assert got["accuracy"] == pytest.approx(sklearn.accuracy_score(y_true, y_pred))
    assert got["confusion_matrix"] == sklearn.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    tumor = [t != classes.index("notumor") for t in y_true]
    caught = [p != classes.index("notumor") for p, t in zip(y_pred, tumor) if t]
    assert got["tumor_sensitivity"] == pytest.approx(np.mean(caught))
    assert got["n_images"] == 24 and got["n_errors"] == 0 and got["classes"] == classes
    text = infer([folder, "--evaluate", "--model", model])
    assert "macro F2" in text.stdout and "confusion matrix" in text.stdout


def test_metrics_match_scikit_learn_on_random_labels():
    sklearn = pytest.importorskip("sklearn.metrics")
    from tumor_runtime.metrics import summarize

    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
        agree = rng.random(50) < 0.5
        y_pred[agree] = y_true[agree]
        got = summarize(y_true, y_pred, ["a", "b", "notumor", "d"])
        assert got["f2_macro"] == pytest.approx(sklearn.fbeta_score(y_true, y_pred, beta=2, average="macro", zero_division=0))
        assert got["f2_weighted"] == pytest.approx(sklearn.fbeta_score(y_true, y_pred, beta=2, average="weighted", zero_division=0))


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
    return {"truncated.jpg": "truncated", "empty.png": "empty", "notes.jpg": "not a readable image",
            "corrupt.png": "", "dangling.png": "", "bomb.png": "too large"}


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


def test_wheel_install_ships_the_default_model(tmp_path):
    """A regular (non-editable) install, used from outside the repository, finds the shipped int8 model.
    The wheel is built from a copy of the tracked files, so the source tree gets no build/ or egg-info."""
    if not (REPO / "artifacts" / "model.int8.onnx").is_file():
        pytest.fail("artifacts/model.int8.onnx (the shipped model) is missing")
    source, wheel_dir, target = tmp_path / "src", tmp_path / "wheel", tmp_path / "site"
    before = sorted(p.name for p in REPO.iterdir())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheel_dir,
                    source], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel], check=True,
                   capture_output=True)
    samples = REPO / "artifacts" / "samples"
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import sys, tumor_runtime; assert tumor_runtime.__file__.startswith(sys.argv[1]), tumor_runtime.__file__\n"
            "from tumor_runtime.cli import main; sys.argv = ['tumor-infer', '-r', sys.argv[2], '--format', 'jsonl']; main()")
    result = subprocess.run([sys.executable, "-c", code, str(target), str(samples)], capture_output=True, text=True,
                            cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) >= 8 and all(r["label"] in ("glioma", "meningioma", "notumor", "pituitary") for r in rows)
    truth = [Path(r["path"]).parent.name for r in rows]
    assert np.mean([r["label"] == t for r, t in zip(rows, truth)]) >= 0.9  # the shipped model, not any model
    assert sorted(p.name for p in REPO.iterdir()) == before  # no build/ or egg-info left in the source tree
