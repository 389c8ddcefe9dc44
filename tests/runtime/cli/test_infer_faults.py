"""`tumor-infer` (runtime/cli/infer.py) under bad inputs and faults: output targets, option errors, full disks,
interrupts, odd file names, fuzzed inputs."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.helpers.datasets import SAMPLES, make_dataset, synthetic_image
from tests.helpers.files import mangled_file
from tests.helpers.processes import BLOCK_TORCH, infer, one_line_error, run
from tumor_runtime.core.fileio import sha256_file
from tumor_runtime.inference.classifier import Classifier

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


@pytest.fixture
def many_images(tmp_path) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    source = next(SAMPLES.rglob("*.jpg"))
    for i in range(4000):
        (folder / f"{i:05d}.jpg").symlink_to(source)
    return folder


def test_01_output_writes_through_a_symlink(int8, images, tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    (tmp_path / "link.jsonl").symlink_to(real)
    result = infer([images, "-r", "--model", int8, "--format", "jsonl", "-o", tmp_path / "link.jsonl"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "link.jsonl").is_symlink()
    assert len(real.read_text().splitlines()) == 8


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "input", "input-via-link"])
def test_01_output_refuses_what_is_not_a_regular_file_or_is_an_input(int8, images, tmp_path, kind):
    scan = next(images.rglob("*.jpg"))
    before = sha256_file(scan)
    target = {
        "fifo": tmp_path / "fifo",
        "device": Path("/dev/null"),
        "folder": tmp_path,
        "input": scan,
        "input-via-link": tmp_path / "link.jpg",
    }[kind]
    if kind == "fifo":
        os.mkfifo(target)
    if kind == "input-via-link":
        target.symlink_to(scan)
    result = infer([scan, next(images.rglob("*.jpg")), "--model", int8, "-o", target])
    one_line_error(result)
    assert sha256_file(scan) == before
    if kind == "fifo":
        assert not target.is_file() and target.exists()


def test_01_dash_means_stdout(int8, images):
    result = infer([images, "-r", "--model", int8, "--format", "jsonl", "-o", "-"])
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 8
    assert not Path("-").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "2.0"])
def test_02_threshold_must_be_finite_and_in_range(int8, images, value):
    one_line_error(infer([images, "-r", "--model", int8, "--tumor-threshold", value]))


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "jsonl"])
def test_06_non_utf8_names_round_trip(int8, tmp_path, fmt):
    folder = tmp_path / "in"
    folder.mkdir()
    raw = b"scan-\xff\xfe.jpg"
    Image.fromarray(synthetic_image(0, np.random.default_rng(0))).save(
        os.path.join(os.fsencode(folder), raw), format="JPEG"
    )
    Image.fromarray(synthetic_image(1, np.random.default_rng(1))).save(folder / "plain.jpg")
    out = tmp_path / f"results.{fmt}"
    result = subprocess.run(
        [sys.executable, "-m", "tumor_runtime", str(folder), "--model", str(int8), "--format", fmt, "-o", str(out)],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    if fmt in ("json", "jsonl"):
        rows = json.loads(data) if fmt == "json" else [json.loads(x) for x in data.splitlines()]
        names = {os.fsencode(Path(r["path"]).name) for r in rows}
    else:
        names = {line.split(b",")[0].split(b" ")[0].rsplit(b"/", 1)[-1] for line in data.splitlines()[1:]}
    assert raw in names and b"plain.jpg" in names
    stdout = subprocess.run(
        [sys.executable, "-m", "tumor_runtime", str(folder), "--model", str(int8), "--format", fmt], capture_output=True
    )
    assert stdout.returncode == 0 and (raw in stdout.stdout or b"\\udcff" in stdout.stdout)


@pytest.mark.parametrize("module, args", [("tumor_train.cli", []), ("tumor_export.cli", ["--checkpoint", "m.pth"])])
def test_11_runtime_only_install_names_the_extra(module, args):
    code = BLOCK_TORCH + f"from {module} import main\nsys.argv = ['x', *{args!r}]\nmain()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    one_line_error(result)
    assert 'pip install -e ".[train]"' in result.stderr


@pytest.mark.parametrize("case", ["read-only-folder", "under-a-file", "batch-size-huge"])
def test_12_infer_output_and_option_errors(int8, images, tmp_path, case):
    (tmp_path / "file.txt").write_text("x")
    extra = {
        "read-only-folder": ["-o", "/proc/tumor-results.json"],
        "under-a-file": ["-o", tmp_path / "file.txt" / "out.json"],
        "batch-size-huge": ["--batch-size", str(sys.maxsize + 1)],
    }[case]
    one_line_error(infer([images, "-r", "--model", int8, *extra]))


def test_12_full_disk_on_stdout(int8, images):
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "tumor_runtime", str(images), "-r", "--model", str(int8)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr and "could not write" in result.stderr


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_13_batch_size_must_be_positive(int8, batch_size):
    with pytest.raises(ValueError):
        Classifier.load(int8, batch_size=batch_size)


def test_13_threads_are_capped_at_the_cores(int8):
    from tumor_runtime.core.system import available_cores

    assert Classifier.load(int8, threads=10_000).threads == available_cores()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_18_interrupted_infer_leaves_a_valid_file_or_none(int8, many_images, tmp_path, sig, code):
    out = tmp_path / "results.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tumor_runtime",
            str(many_images),
            "--model",
            str(int8),
            "--format",
            "json",
            "-o",
            str(out),
            "--threads",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    while not list(tmp_path.glob(".results.json.*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert not out.exists() and not list(tmp_path.glob(".results.json.*")) and "Traceback" not in stderr


def test_18_interrupted_infer_on_stdout_is_still_valid_json(int8, many_images):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tumor_runtime",
            str(many_images),
            "--model",
            str(int8),
            "--format",
            "json",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # one pipe: communicate() reads the buffer too
    first = proc.stdout.readline()  # "[" is written when the first record arrives
    assert first.startswith("[")
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130
    assert isinstance(json.loads(first + rest), list)


def test_19_unreadable_subfolder_and_file_get_error_rows(int8, images, monkeypatch):
    from tumor_runtime.cli.infer import main

    blocked = images / "meningioma"
    locked_file = next((images / "glioma").glob("*.jpg"))
    real_scandir, real_stat = os.scandir, os.stat

    def scandir(path="."):
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def stat(path, *args, **kwargs):
        if Path(path) == locked_file:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr("tumor_runtime.imaging.listing.os.stat", stat)
    result = CliRunner().invoke(main, [str(images), str(locked_file), "-r", "--model", str(int8), "--format", "jsonl"])
    assert result.exit_code == 1
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    errors = {Path(r["path"]): r["error"] for r in rows if r["error"]}
    assert set(errors) == {blocked, locked_file} and "Permission denied" in errors[blocked]
    assert sum(r["error"] is None for r in rows) == 5  # 8 images, 2 in the blocked folder, 1 locked


def test_20_evaluate_honours_every_format(int8, tmp_path):
    folder = make_dataset(tmp_path / "eval", per_class=3)
    outputs = {
        fmt: infer([folder, "--evaluate", "--model", int8, "--format", fmt])
        for fmt in ("table", "csv", "json", "jsonl")
    }
    assert all(r.returncode == 0 for r in outputs.values())
    rows = list(csv.DictReader(io.StringIO(outputs["csv"].stdout)))
    assert [r["class"] for r in rows][:6] == ["glioma", "meningioma", "notumor", "pituitary", "macro", "weighted"]
    summary = json.loads(outputs["json"].stdout)
    figures = {r["class"]: r["value"] for r in rows[6:]}
    assert (
        int(figures["errors"]) == summary["n_errors"]
        and int(figures["out_of_distribution"]) == summary["n_out_of_distribution"]
    )
    assert float(figures["screening_sensitivity"]) == pytest.approx(summary["screening"]["sensitivity"], abs=1e-6)
    assert len(outputs["jsonl"].stdout.splitlines()) == 1
    assert json.loads(outputs["jsonl"].stdout) == json.loads(outputs["json"].stdout)
    assert float(rows[4]["f2"]) == pytest.approx(json.loads(outputs["json"].stdout)["f2_macro"], abs=1e-6)
    assert "macro F2" in outputs["table"].stdout


@pytest.mark.parametrize("module", ["tumor_runtime", "tumor_train", "tumor_export"])
def test_21_version(module):
    import tumor_runtime

    result = run(module, ["--version"])
    assert result.returncode == 0 and tumor_runtime.__version__ in result.stdout


def test_21_model_info(int8):
    result = infer(["--model", int8, "--model-info"])
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["sha256"] == sha256_file(int8) and card["precision"] == "int8"
    from tumor_train.config import (
        TrainConfig,  # the session's model is trained with the defaults
    )

    assert card["classes"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert (card["input"]["size"], card["input"]["crop"]) == (TrainConfig().image_size, TrainConfig().crop)
    assert "torch" in card["trained_with"] and 0 < card["tumor_threshold"] <= 0.5


def test_fuzz_infer_gives_one_row_per_input_and_keeps_good_files(tmp_path_factory, int8):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tumor_runtime.cli.infer import main

    root = tmp_path_factory.mktemp("fuzz-infer")
    good = SAMPLES / "glioma"
    expected_good = Classifier.load(int8).predict(sorted(good.glob("*.jpg"))[:1])[0]

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(mangled_file(), min_size=1, max_size=4))
    def check(cases):
        folder = root / f"case{len(list(root.iterdir()))}"
        folder.mkdir()
        shutil.copy(sorted(good.glob("*.jpg"))[0], folder / "good.jpg")
        for i, (ext, data) in enumerate(cases):
            (folder / f"bad{i}.{ext}").write_bytes(data)
        result = CliRunner().invoke(
            main, [str(folder), "--model", str(int8), "--format", "jsonl"], catch_exceptions=False
        )
        assert result.exit_code in (0, 1) and "Traceback" not in result.stderr
        rows = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
        assert len(rows) == len(cases) + 1
        assert all((r["label"] is None) != (r["error"] is None) for r in rows.values())
        assert rows["good.jpg"]["label"] == expected_good["label"]
        assert result.exit_code == int(any(r["error"] for r in rows.values()))

    check()


def test_evaluate_reports_the_flag_at_the_threshold_in_use(int8, tmp_path):
    """--tumor-threshold is honoured under --evaluate: the flag's sensitivity and false alarms follow it."""
    folder = make_dataset(tmp_path / "eval", per_class=3)
    runs = {
        t: json.loads(infer([folder, "--evaluate", "--model", int8, "--format", "json", "--tumor-threshold", t]).stdout)
        for t in ("0", "1")
    }
    assert runs["0"]["screening"] == {"threshold": 0.0, "sensitivity": 1.0, "false_alarm_rate": 1.0}
    assert runs["1"]["screening"]["threshold"] == 1.0 and runs["1"]["screening"]["false_alarm_rate"] == 0.0
    assert runs["0"]["f2_macro"] == runs["1"]["f2_macro"]  # the argmax figures do not depend on it
    recs = Classifier.load(int8, tumor_threshold=0.5).predict(sorted(folder.rglob("*.jpg")))
    from tumor_runtime.core.scoring import evaluate_records

    labels = [["glioma", "meningioma", "notumor", "pituitary"].index(Path(r["path"]).parent.name) for r in recs]
    mid = evaluate_records(recs, labels, ["glioma", "meningioma", "notumor", "pituitary"], threshold=0.5)
    tumors = [r for r, y in zip(recs, labels) if y != 2]
    assert mid["screening"]["sensitivity"] == pytest.approx(np.mean([r["tumor_probability"] >= 0.5 for r in tumors]))
