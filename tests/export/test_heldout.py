"""`tumor-export --cv DIR`: a final fit's temperature, tumor threshold and out-of-distribution thresholds from the
fold models of its recipe's --cv run, each measured on its own validation images (`tumor_export.heldout`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.helpers.processes import one_line_error, run
from tumor_export.metadata import read_metadata
from tumor_runtime.core import scoring
from tumor_runtime.imaging.transform import load_gray, normalize
from tumor_runtime.model.ood import OodModel
from tumor_train.model_file import load_model, save_atomic


def out_of_fold(cv_folder, k: int = 2):
    """Pooled (probabilities (N, C), labels (N,)) of the fold models in torch, each on its recorded validation
    images: the same figures as the export's, by another path (torch, not ONNX Runtime)."""
    probabilities, labels = [], []
    for fold in range(1, k + 1):
        model, ckpt = load_model(cv_folder / f"fold-{fold}" / "model.pth")
        pre, classes = ckpt["preprocess"], ckpt["classes"]
        names = ckpt["data"]["val_files"]
        gray = np.stack([load_gray(f"{ckpt['data']['root']}/{n}", pre["size"], pre["crop"]) for n in names])
        with torch.no_grad():
            logits = model(torch.from_numpy(normalize(gray, pre["mean"], pre["std"])))
        probabilities.append(torch.softmax(logits.float(), 1).numpy())
        labels.append([classes.index(n.split("/")[0]) for n in names])
    return np.concatenate(probabilities), np.concatenate(labels)


def test_a_final_fit_takes_temperature_and_thresholds_from_its_recipes_held_out_images(recipe, tmp_path):
    out = tmp_path / "e"
    result = run(
        "tumor_export",
        [
            "--checkpoint",
            recipe / "final" / "model.pth",
            "--out",
            out,
            "--eval",
            recipe / "eval",
            "--cv",
            recipe / "cv",
        ],
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "export_report.json").read_text())
    assert report["held_out"]["images"] == 48  # every image of the folds once
    assert (
        report["temperature"]["source"] == f"fitted on the out-of-fold predictions of the 48 images of {recipe / 'cv'}"
    )
    probabilities, labels = out_of_fold(recipe / "cv")
    assert sorted(labels.tolist()) == [c for c in range(4) for _ in range(12)]
    temperature = scoring.fit_temperature(probabilities, labels)
    assert report["temperature"]["value"] == pytest.approx(temperature, rel=1e-3)
    assert report["temperature"]["ece_before"] == pytest.approx(
        scoring.expected_calibration_error(probabilities, labels), abs=1e-3
    )
    meta = read_metadata(out / "model.onnx")
    assert float(meta["temperature"]) == pytest.approx(report["temperature"]["value"])
    calibrated = scoring.calibrated(probabilities, temperature)
    tumor_p = scoring.tumor_probability(calibrated, ["glioma", "meningioma", "notumor", "pituitary"], "notumor")
    assert report["tumor_threshold"] == pytest.approx(scoring.choose_threshold(tumor_p, labels != 2), abs=1e-3)
    margins = report["held_out"]["ood_margins"]
    assert set(margins) == {"features", "image"} and all(m > 0 for m in margins.values())
    assert OodModel.from_metadata(meta["ood"])  # the thresholds it stored are a valid record
    assert f"On the 48 held-out images of {recipe / 'cv'}: the threshold flags" in result.stdout
    assert "expected calibration error on those held-out images" in result.stdout
    assert "of the held-out images' tumor slices, at most 0.5); on the evaluation images it flags" in result.stdout


def test_the_margins_move_the_ood_thresholds_and_nothing_else(recipe, tmp_path):
    """With and without --cv the OOD fit is the same; only the thresholds differ, each by its margin over the
    other rule's quantile (checked on the image measurement, whose distances do not depend on the network)."""
    from tumor_export.pipeline import ExportOptions, run_export

    common = {"checkpoint": recipe / "final" / "model.pth", "eval_dir": recipe / "eval"}
    plain = run_export(ExportOptions(out=tmp_path / "plain", **common), log=lambda m: None)
    held = run_export(ExportOptions(out=tmp_path / "held", cv=recipe / "cv", **common), log=lambda m: None)
    a, b = (OodModel.from_metadata(read_metadata(tmp_path / f / "model.onnx")["ood"]) for f in ("plain", "held"))
    assert np.array_equal(a.image.mean, b.image.mean) and np.array_equal(a.features.directions, b.features.directions)
    assert a.image.threshold != b.image.threshold and a.features.threshold != b.features.threshold
    assert "held_out" not in plain and plain["temperature"]["source"] == "none"
    assert held["ood"]["model.onnx"]["validation_images"] == 12


def test_cv_is_refused_beside_temperature_unfinished_or_of_another_recipe(recipe, tmp_path):
    final = recipe / "final" / "model.pth"
    base = ["--checkpoint", final, "--eval", recipe / "eval"]
    both = run("tumor_export", base + ["--out", tmp_path / "a", "--cv", recipe / "cv", "--temperature", "2"])
    one_line_error(both)
    assert "give --cv or --temperature" in both.stderr
    shutil.copytree(recipe / "cv", tmp_path / "cv")
    (tmp_path / "cv" / "fold-2" / "model.pth").unlink()
    missing = run("tumor_export", base + ["--out", tmp_path / "b", "--cv", tmp_path / "cv"])
    one_line_error(missing)
    assert "fold-2/model.pth is missing" in missing.stderr
    record = json.loads((tmp_path / "cv" / "cv.json").read_text())
    (tmp_path / "cv" / "cv.json").write_text(json.dumps(record | {"complete": False}))
    unfinished = run("tumor_export", base + ["--out", tmp_path / "c", "--cv", tmp_path / "cv"])
    one_line_error(unfinished)
    assert "is not complete" in unfinished.stderr
    none = run("tumor_export", base + ["--out", tmp_path / "d", "--cv", recipe / "data"])
    one_line_error(none)
    assert "holds no cv.json" in none.stderr
    ckpt = torch.load(final, weights_only=True)
    other = ckpt | {"preprocess": ckpt["preprocess"] | {"crop": "none"}}
    save_atomic(other, tmp_path / "other.pth")
    mismatch = run(
        "tumor_export",
        [
            "--checkpoint",
            tmp_path / "other.pth",
            "--eval",
            recipe / "eval",
            "--out",
            tmp_path / "f",
            "--cv",
            recipe / "cv",
        ],
    )
    one_line_error(mismatch)
    assert "other classes, architecture or preprocessing" in mismatch.stderr
    assert not any((tmp_path / f / "model.onnx").exists() for f in "abcdf")


def test_cv_fold_needs_cv_and_a_fold_it_has():
    from tumor_train.cli import main

    alone = CliRunner().invoke(main, ["--cv-fold", "1"])
    assert alone.exit_code == 2 and "--cv-fold picks folds of a --cv K run: give --cv K too" in alone.output
    beyond = CliRunner().invoke(main, ["--cv", "3", "--cv-fold", "4"])
    assert beyond.exit_code == 2 and "--cv-fold 4: --cv 3 has folds 1 to 3" in beyond.output


def test_the_reliability_figure_draws_the_same_temperature_as_the_export(recipe, tmp_path, capsys):
    """tools/reliability_figure.py (artifacts/calibration.png) fits the temperature the export stores."""
    import importlib.util

    from tests.helpers.datasets import REPO

    spec = importlib.util.spec_from_file_location("reliability_figure", REPO / "tools" / "reliability_figure.py")
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    figure.main(str(recipe / "cv"), str(recipe / "final" / "model.pth"), str(tmp_path / "c.png"))
    probabilities, labels = out_of_fold(recipe / "cv")
    printed = float(capsys.readouterr().out.split("temperature ")[1].split()[0])
    assert printed == pytest.approx(scoring.fit_temperature(probabilities, labels), rel=1e-3)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    confidence, accuracy, share = scoring.reliability_bins(probabilities, labels)
    assert share.sum() == pytest.approx(1.0) and np.all((0 <= accuracy) & (accuracy <= 1))
    assert np.all(np.diff(confidence) > 0)  # one point per bin, in order
