"""No silent wrong answer, no lost file: one test per case of the bad-input and fault sweep (issue #9).

Each test names its item. Tests run as root in CI, where permission bits do not stop
anything, so "read-only" targets are real read-only places (/proc) and unreadable
folders are simulated at the os level.
"""

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
import torch
from click.testing import CliRunner
from PIL import Image

from tests.conftest import REPO, SAMPLES, make_dataset, synthetic_image
from tests.helpers import BLOCK_TORCH, infer, one_line_error, run
from tests.onnx_fakes import tiny_model
from tumor_runtime.classifier import Classifier
from tumor_runtime.fileio import sha256_file
from tumor_runtime.model import ModelError
from tumor_runtime.preprocess import load_gray

pytestmark = pytest.mark.faults

@pytest.fixture
def images(tmp_path) -> Path:
    return make_dataset(tmp_path / "imgs", per_class=2)


@pytest.fixture
def int8(exported) -> Path:
    return exported / "model.int8.onnx"


# 1. -o never destroys what is at its target ------------------------------------------------------

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
    target = {"fifo": tmp_path / "fifo", "device": Path("/dev/null"), "folder": tmp_path,
              "input": scan, "input-via-link": tmp_path / "link.jpg"}[kind]
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


# 2. NaN and out-of-range floats are refused -------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "2.0"])
def test_02_threshold_must_be_finite_and_in_range(int8, images, value):
    one_line_error(infer([images, "-r", "--model", int8, "--tumor-threshold", value]))


@pytest.mark.parametrize("value", [float("nan"), 2.0, -0.5, float("inf")])
def test_02_api_threshold_must_be_finite_and_in_range(int8, value):
    with pytest.raises(ValueError):
        Classifier.load(int8, tumor_threshold=value)


@pytest.mark.parametrize("value", ["nan", "-0.1", "inf"])
def test_02_export_refuses_a_disabled_gate(trained, tmp_path, value):
    result = run("tumor_export", ["--checkpoint", trained / "model.pth", "--out", tmp_path, "--int8",
                                  "--max-f2-drop", value])
    one_line_error(result)
    assert list(tmp_path.iterdir()) == []
    from tumor_export.pipeline import ExportOptions, run_export

    with pytest.raises(ValueError):
        run_export(ExportOptions(checkpoint=trained / "model.pth", out=tmp_path, max_f2_drop=float(value)))


@pytest.mark.parametrize("option", ["--lr", "--val-fraction", "--dup-threshold"])
def test_02_train_refuses_nan(option, tmp_path):
    one_line_error(run("tumor_train", ["--data", tmp_path, option, "nan"]))
    from tumor_train.config import TrainConfig

    with pytest.raises(ValueError):
        TrainConfig(dropout=float("nan")).check()


# 3. A graph that disagrees with its metadata is refused at load -----------------------------------

@pytest.mark.parametrize("change, word", [
    ({"outputs": 3}, "3 outputs"), ({"graph_size": 128}, "input shape"), ({"std": 0}, "std"),
    ({"input_size": 0}, "input_size"), ({"input_size": -5}, "input_size"), ({"tumor_threshold": "nan"}, "threshold"),
    ({"classes": '["a"]'}, "classes"), ({"mean": "nan"}, "mean"),
])
def test_03_graph_and_metadata_must_agree(tmp_path, images, change, word):
    model = tiny_model(tmp_path / "bad.onnx", **change)
    with pytest.raises(ModelError, match=word):
        Classifier.load(model)
    one_line_error(infer([images, "-r", "--model", model]))


def test_03_a_consistent_fake_model_loads(tmp_path, images):
    assert Classifier.load(tiny_model(tmp_path / "ok.onnx")).predict(next(images.rglob("*.jpg")))[0]["error"] is None


# 4. 8-bit, 12-bit-in-16 and full 16-bit storage of one slice give the same answer ----------------

def test_04_bit_depths_give_the_same_pixels_and_label(tmp_path):
    clf = Classifier.load()
    for sample in sorted(SAMPLES.rglob("*.jpg"))[:4]:
        gray = np.asarray(Image.open(sample).convert("L"))
        variants = {"8": gray.astype(np.uint16), "12": (gray.astype(np.uint16) * 16 + 3 * (gray > 0)).astype(np.uint16),
                    "16": gray.astype(np.uint16) * 257}
        Image.fromarray(gray).save(tmp_path / "eight.png")
        expected = load_gray(tmp_path / "eight.png", 227)
        labels = {clf.predict(tmp_path / "eight.png")[0]["label"]}
        for name, values in variants.items():
            path = tmp_path / f"{name}.png"
            Image.fromarray(values).save(path)
            assert Image.open(path).mode.startswith("I"), name
            got = load_gray(path, 227)
            assert np.abs(got.astype(int) - expected).max() <= 1, (sample.name, name)
            labels.add(clf.predict(path)[0]["label"])
        assert len(labels) == 1, (sample.name, labels)


def test_04_a_hot_pixel_does_not_darken_a_deep_image(tmp_path):
    gray = synthetic_image(1, np.random.default_rng(0), 128).astype(np.uint16) * 16  # 12-bit data
    hot = gray.copy()
    hot[0, 0] = 65535  # one saturated pixel
    Image.fromarray(gray).save(tmp_path / "clean.png")
    Image.fromarray(hot).save(tmp_path / "hot.png")
    clean, noisy = load_gray(tmp_path / "clean.png", 128), load_gray(tmp_path / "hot.png", 128).copy()
    assert noisy[0, 0] == 255
    noisy[0, 0] = clean[0, 0]
    assert np.abs(clean.astype(int) - noisy).max() <= 1


# 5. A class whose images are all unreadable stops training ---------------------------------------

def test_05_class_with_no_readable_image_is_refused(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=4)
    for f in (data / "pituitary").iterdir():
        f.write_bytes(b"\xff\xd8\xff garbage")
    result = run("tumor_train", ["--data", data, "--out", tmp_path / "o", "--epochs", "1", "--width", "8"])
    one_line_error(result)
    assert "pituitary" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "o" / "model.pth").exists()


# 6. Non-UTF-8 file names round-trip --------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["table", "csv", "json", "jsonl"])
def test_06_non_utf8_names_round_trip(int8, tmp_path, fmt):
    folder = tmp_path / "in"
    folder.mkdir()
    raw = b"scan-\xff\xfe.jpg"
    Image.fromarray(synthetic_image(0, np.random.default_rng(0))).save(os.path.join(os.fsencode(folder), raw),
                                                                      format="JPEG")
    Image.fromarray(synthetic_image(1, np.random.default_rng(1))).save(folder / "plain.jpg")
    out = tmp_path / f"results.{fmt}"
    result = subprocess.run([sys.executable, "-m", "tumor_runtime", str(folder), "--model", str(int8), "--format",
                             fmt, "-o", str(out)], capture_output=True)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    if fmt in ("json", "jsonl"):
        rows = json.loads(data) if fmt == "json" else [json.loads(x) for x in data.splitlines()]
        names = {os.fsencode(Path(r["path"]).name) for r in rows}
    else:
        names = {line.split(b",")[0].split(b" ")[0].rsplit(b"/", 1)[-1] for line in data.splitlines()[1:]}
    assert raw in names and b"plain.jpg" in names
    stdout = subprocess.run([sys.executable, "-m", "tumor_runtime", str(folder), "--model", str(int8), "--format",
                             fmt], capture_output=True)
    assert stdout.returncode == 0 and (raw in stdout.stdout or b"\\udcff" in stdout.stdout)


# 7 and 8. The export folder stays consistent ----------------------------------------------------

def test_07_fp32_only_reexport_removes_the_stale_int8(trained, exported, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    from tumor_export.pipeline import ExportOptions, run_export

    run_export(ExportOptions(checkpoint=trained / "model.pth", out=folder), log=lambda m: None)
    assert not (folder / "model.int8.onnx").exists()
    assert set(json.loads((folder / "manifest.json").read_text())["files"]) == {"model.onnx"}
    shutil.copy(exported / "model.int8.onnx", folder / "model.int8.onnx")  # put the stale file back
    with pytest.raises(ModelError, match="not listed"):
        Classifier.load(folder / "model.int8.onnx")


@pytest.mark.parametrize("renames_before_kill", [0, 1, 2])
def test_08_an_interrupted_commit_leaves_usable_vouched_models(trained, exported, tmp_path, monkeypatch,
                                                              renames_before_kill):
    import tumor_export.pipeline as pipeline

    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if len(calls) == renames_before_kill:
            raise KeyboardInterrupt
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(pipeline.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_export(pipeline.ExportOptions(checkpoint=trained / "model.pth", out=folder, int8=True,
                                                   calibration_size=16, seed=1), log=lambda m: None)
    for name in ("model.onnx", "model.int8.onnx"):
        Classifier.load(folder / name)  # old or new, each is vouched for
    assert [p.name for p in folder.iterdir() if p.name.startswith(".export-")] == []


def test_08_scratch_of_killed_exports_is_cleaned(trained, tmp_path):
    from tumor_export.pipeline import ExportOptions, run_export

    stale = tmp_path / ".export-999999999-abc"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    run_export(ExportOptions(checkpoint=trained / "model.pth", out=tmp_path), log=lambda m: None)
    assert not stale.exists()


# 9. Calibration sample sizes that are not a multiple of 16 ---------------------------------------

@pytest.mark.parametrize("count", [17, 130, 255])
def test_09_calibration_counts(tmp_path, count):
    """ONNX Runtime's histogram collectors (percentile, entropy) failed on a short last batch: any count
    over 16 and not a multiple of 16. A small convolutional model is enough to reach that code."""
    from tests.onnx_fakes import conv_model
    from tumor_export.calibration import ArrayReader
    from tumor_export.static_int8 import prepare_graph, quantize_int8

    prepare_graph(conv_model(tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    inputs = np.random.default_rng(count).standard_normal((count, 1, 32, 32)).astype(np.float32)
    for method in ("percentile", "entropy"):
        quantize_int8(tmp_path / "pre.onnx", tmp_path / "q.onnx", ArrayReader(inputs, "image"), method)
        assert (tmp_path / "q.onnx").stat().st_size > 0


def test_09_a_corrupt_file_in_the_calibration_sample(trained, tmp_path):
    calib = make_dataset(tmp_path / "calib", per_class=5)
    (calib / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # 21 files, 20 readable
    result = run("tumor_export", ["--checkpoint", trained / "model.pth", "--out", tmp_path / "o", "--int8",
                                  "--calibration", calib, "--calibration-size", "21"])
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o" / "export_report.json").read_text())["calibration"]["images"] == 20


# 10. Symlinked class folders ---------------------------------------------------------------------

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

    monkeypatch.setattr(trainer.report, "plot_curves", disk_full)
    out = tmp_path / "o"
    result = CliRunner().invoke(trainer_cli(), ["--data", str(dataset), "--out", str(out), "--epochs", "1",
                                                "--width", "8"])
    assert result.exit_code == 2 and "checkpoint.pth" in result.output
    best = torch.load(out / "checkpoint.pth", weights_only=True)["best"]
    assert best["state_dict"] is not None


def trainer_cli():
    from tumor_train.cli import main

    return main


# 11. A runtime-only install names the extra ------------------------------------------------------

@pytest.mark.parametrize("module, args", [("tumor_train.cli", []), ("tumor_export.cli", ["--checkpoint", "m.pth"])])
def test_11_runtime_only_install_names_the_extra(module, args):
    code = BLOCK_TORCH + f"from {module} import main\nsys.argv = ['x', *{args!r}]\nmain()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    one_line_error(result)
    assert 'pip install -e ".[train]"' in result.stderr


# 12. One line instead of a traceback -------------------------------------------------------------

@pytest.mark.parametrize("case", ["read-only-folder", "under-a-file", "batch-size-huge"])
def test_12_infer_output_and_option_errors(int8, images, tmp_path, case):
    (tmp_path / "file.txt").write_text("x")
    extra = {"read-only-folder": ["-o", "/proc/tumor-results.json"],
             "under-a-file": ["-o", tmp_path / "file.txt" / "out.json"],
             "batch-size-huge": ["--batch-size", str(sys.maxsize + 1)]}[case]
    one_line_error(infer([images, "-r", "--model", int8, *extra]))


def test_12_full_disk_on_stdout(int8, images):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "tumor_runtime", str(images), "-r", "--model", str(int8)],
                                stdout=full, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "could not write" in result.stderr


@pytest.mark.parametrize("manifest", ["[1, 2]", "{not json", "folder", '{"files": [1]}'])
def test_12_bad_manifest(exported, images, tmp_path, manifest):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(exported / "model.int8.onnx", folder)
    if manifest == "folder":
        (folder / "manifest.json").mkdir()
    else:
        (folder / "manifest.json").write_text(manifest)
    result = infer([images, "-r", "--model", folder / "model.int8.onnx"])
    one_line_error(result)
    assert "manifest" in result.stderr


@pytest.mark.parametrize("case", ["read-only-out", "empty-calibration", "corrupt-calibration"])
def test_12_export_errors(trained, tmp_path, case):
    args = ["--checkpoint", trained / "model.pth", "--out", tmp_path / "o"]
    calib = tmp_path / "calib"
    calib.mkdir()
    if case == "read-only-out":
        args = ["--checkpoint", trained / "model.pth", "--out", "/proc/tumor-export"]
    elif case == "corrupt-calibration":
        for i in range(3):
            (calib / f"{i}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    if case != "read-only-out":
        args += ["--int8", "--calibration", calib]
    result = run("tumor_export", args)
    one_line_error(result)
    assert not (tmp_path / "o" / "model.int8.onnx").exists()


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


# 13. Batch size and threads ----------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_13_batch_size_must_be_positive(int8, batch_size):
    with pytest.raises(ValueError):
        Classifier.load(int8, batch_size=batch_size)


def test_13_threads_are_capped_at_the_cores(int8):
    from tumor_runtime.model import available_cores

    assert Classifier.load(int8, threads=10_000).threads == available_cores()


# 14 and 15. --resume restores the run; Ctrl-C in epoch 1 ------------------------------------------

def interrupt_in_epoch(monkeypatch, which: int):
    import tumor_train.trainer as trainer

    real, calls = trainer.train_one_epoch, []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) == which:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", fake)


def test_14_resume_restores_the_configuration(dataset, tmp_path, monkeypatch):
    out = tmp_path / "o"
    interrupt_in_epoch(monkeypatch, 2)
    result = CliRunner().invoke(trainer_cli(), ["--data", str(dataset), "--out", str(out), "--epochs", "3",
                                                "--width", "8"])
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
    result = CliRunner().invoke(trainer_cli(), ["--data", str(dataset), "--out", str(tmp_path / "o"),
                                                "--epochs", "2", "--width", "8"])
    assert result.exit_code == 130
    assert "no checkpoint" in result.output and not (tmp_path / "o" / "checkpoint.pth").exists()


# 16. FP32 export needs no data; int8 says which options -----------------------------------------

def test_16_export_without_the_training_data(trained, tmp_path):
    ckpt = torch.load(trained / "model.pth", weights_only=True)
    ckpt["data"]["root"] = "/no/such/dataset"
    ckpt["data"]["train_dir"] = "/no/such/dataset/Train"
    torch.save(ckpt, tmp_path / "model.pth")
    fp32 = run("tumor_export", ["--checkpoint", tmp_path / "model.pth"])
    assert fp32.returncode == 0, fp32.stderr
    Classifier.load(tmp_path / "model.onnx")
    int8 = run("tumor_export", ["--checkpoint", tmp_path / "model.pth", "--int8"])
    one_line_error(int8)
    assert "--eval" in int8.stderr and "--calibration" in int8.stderr


# 17. The shipped artifacts/ are replaced only on purpose -----------------------------------------

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


# 18. Interrupts ----------------------------------------------------------------------------------

@pytest.fixture
def many_images(tmp_path) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    source = next(SAMPLES.rglob("*.jpg"))
    for i in range(4000):
        (folder / f"{i:05d}.jpg").symlink_to(source)
    return folder


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_18_interrupted_infer_leaves_a_valid_file_or_none(int8, many_images, tmp_path, sig, code):
    out = tmp_path / "results.json"
    proc = subprocess.Popen([sys.executable, "-m", "tumor_runtime", str(many_images), "--model", str(int8),
                             "--format", "json", "-o", str(out), "--threads", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not list(tmp_path.glob(".results.json.*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert not out.exists() and not list(tmp_path.glob(".results.json.*")) and "Traceback" not in stderr


def test_18_interrupted_infer_on_stdout_is_still_valid_json(int8, many_images):
    proc = subprocess.Popen([sys.executable, "-m", "tumor_runtime", str(many_images), "--model", str(int8),
                             "--format", "json", "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # one pipe: communicate() reads the buffer too
    first = proc.stdout.readline()  # "[" is written when the first record arrives
    assert first.startswith("[")
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130
    assert isinstance(json.loads(first + rest), list)


def test_18_ctrl_c_while_writing_training_outputs(dataset, tmp_path, monkeypatch):
    import tumor_train.trainer as trainer

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.report, "plot_curves", interrupt)
    result = CliRunner().invoke(trainer_cli(), ["--data", str(dataset), "--out", str(tmp_path / "o"),
                                                "--epochs", "1", "--width", "8"])
    assert result.exit_code == 130 and "--resume" in result.output
    assert (tmp_path / "o" / "checkpoint.pth").is_file()


# 19. Unreadable folders and files become error rows ----------------------------------------------

def test_19_unreadable_subfolder_and_file_get_error_rows(int8, images, monkeypatch):
    from tumor_runtime.cli import main

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
    monkeypatch.setattr("tumor_runtime.inputs.os.stat", stat)
    result = CliRunner().invoke(main, [str(images), str(locked_file), "-r", "--model", str(int8), "--format", "jsonl"])
    assert result.exit_code == 1
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    errors = {Path(r["path"]): r["error"] for r in rows if r["error"]}
    assert set(errors) == {blocked, locked_file} and "Permission denied" in errors[blocked]
    assert sum(r["error"] is None for r in rows) == 5  # 8 images, 2 in the blocked folder, 1 locked


# 20. Every format is honoured under --evaluate ---------------------------------------------------

def test_20_evaluate_honours_every_format(int8, tmp_path):
    folder = make_dataset(tmp_path / "eval", per_class=3)
    outputs = {fmt: infer([folder, "--evaluate", "--model", int8, "--format", fmt]) for fmt in
               ("table", "csv", "json", "jsonl")}
    assert all(r.returncode == 0 for r in outputs.values())
    rows = list(csv.DictReader(io.StringIO(outputs["csv"].stdout)))
    assert [r["class"] for r in rows] == ["glioma", "meningioma", "notumor", "pituitary", "macro", "weighted"]
    assert len(outputs["jsonl"].stdout.splitlines()) == 1
    assert json.loads(outputs["jsonl"].stdout) == json.loads(outputs["json"].stdout)
    assert float(rows[4]["f2"]) == pytest.approx(json.loads(outputs["json"].stdout)["f2_macro"], abs=1e-6)
    assert "macro F2" in outputs["table"].stdout


# 21. --version and the model card ----------------------------------------------------------------

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
    assert card["classes"] == ["glioma", "meningioma", "notumor", "pituitary"] and card["input"]["size"] == 227
    assert "torch" in card["trained_with"] and 0 < card["tumor_threshold"] <= 0.5


# 22. Summaries print formatted numbers -----------------------------------------------------------

def test_22_summaries_have_no_raw_floats(dataset, int8, tmp_path):
    import re

    trained_line = run("tumor_train", ["--data", dataset, "--out", tmp_path / "o", "--epochs", "1",
                                       "--width", "8"]).stdout.splitlines()[-1]
    evaluation = infer([make_dataset(tmp_path / "e", per_class=2), "--evaluate", "--model", int8]).stdout
    for text in (trained_line, evaluation):
        assert not re.search(r"\d\.\d{5,}", text), text


# 23 and 24. Benchmarks say which bench set and which CPU -----------------------------------------

def test_23_bench_set_is_named(tmp_path):
    from benchmarks.conftest import choose_bench_set

    files, labels, classes, description = choose_bench_set(None, 400, shared=tmp_path / "absent")
    assert "artifacts/samples" in description and "--bench-data" in description
    assert len(files) == len(labels) >= 8
    chosen = make_dataset(tmp_path / "b", per_class=2)
    files, _, _, description = choose_bench_set(str(chosen), 400, shared=tmp_path / "absent")
    assert str(chosen) in description and len(files) == 8


def test_24_results_name_the_cpu_and_its_features():
    from benchmarks.conftest import machine_info
    from benchmarks.report import machine_lines

    info = machine_info()
    assert info["cpu"] and isinstance(info["features"], list)
    text = "\n".join(machine_lines(info))
    assert info["cpu"] in text and "int8/bf16 features" in text and "depend" in text


# Keep it fixed: random, truncated and bit-flipped files through the loader and tumor-infer --------

def real_encodings() -> dict[str, bytes]:
    """One real slice as JPEG (the file itself), PNG and TIFF bytes."""
    source = next(SAMPLES.rglob("*.jpg"))
    image = Image.open(source)
    encoded = {"jpg": source.read_bytes()}
    for ext, fmt in (("png", "PNG"), ("tif", "TIFF")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        encoded[ext] = buffer.getvalue()
    return encoded


ENCODED = real_encodings()


def mangled_file():
    from hypothesis import strategies as st

    random_bytes = st.tuples(st.sampled_from(sorted(ENCODED)), st.binary(max_size=2000))
    truncated = st.sampled_from(sorted(ENCODED)).flatmap(
        lambda ext: st.integers(0, len(ENCODED[ext]) - 1).map(lambda n: (ext, ENCODED[ext][:n])))
    flipped = st.sampled_from(sorted(ENCODED)).flatmap(lambda ext: st.lists(
        st.tuples(st.integers(0, len(ENCODED[ext]) - 1), st.integers(0, 7)), min_size=1, max_size=8).map(
        lambda flips: (ext, flip_bits(ENCODED[ext], flips))))
    return st.one_of(random_bytes, truncated, flipped)


def flip_bits(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        out[position] ^= 1 << bit
    return bytes(out)


def test_fuzz_loader_gives_an_image_or_an_image_error(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings

    from tumor_runtime.preprocess import ImageError

    folder = tmp_path_factory.mktemp("fuzz-loader")

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mangled_file())
    def check(case):
        ext, data = case
        path = folder / f"x.{ext}"
        path.write_bytes(data)
        try:
            out = load_gray(path, 227)
        except (ImageError, OSError):
            return
        assert out.shape == (227, 227) and out.dtype == np.uint8

    check()


def test_fuzz_infer_gives_one_row_per_input_and_keeps_good_files(tmp_path_factory, int8):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tumor_runtime.cli import main

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
        result = CliRunner().invoke(main, [str(folder), "--model", str(int8), "--format", "jsonl"],
                                    catch_exceptions=False)
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
    runs = {t: json.loads(infer([folder, "--evaluate", "--model", int8, "--format", "json",
                                 "--tumor-threshold", t]).stdout) for t in ("0", "1")}
    assert runs["0"]["screening"] == {"threshold": 0.0, "sensitivity": 1.0, "false_alarm_rate": 1.0}
    assert runs["1"]["screening"]["threshold"] == 1.0 and runs["1"]["screening"]["false_alarm_rate"] == 0.0
    assert runs["0"]["f2_macro"] == runs["1"]["f2_macro"]  # the argmax figures do not depend on it
    recs = Classifier.load(int8, tumor_threshold=0.5).predict(sorted(folder.rglob("*.jpg")))
    from tumor_runtime.evaluation import evaluate_records

    labels = [["glioma", "meningioma", "notumor", "pituitary"].index(Path(r["path"]).parent.name) for r in recs]
    mid = evaluate_records(recs, labels, ["glioma", "meningioma", "notumor", "pituitary"], threshold=0.5)
    tumors = [r for r, y in zip(recs, labels) if y != 2]
    assert mid["screening"]["sensitivity"] == pytest.approx(np.mean([r["tumor_probability"] >= 0.5 for r in tumors]))
