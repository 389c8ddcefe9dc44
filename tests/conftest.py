"""Shared fixtures: small generated datasets (no ../shared needed) and the committed samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.datasets import make_dataset


@pytest.fixture(scope="session", autouse=True)
def work_in_a_temporary_folder(tmp_path_factory):
    """The session runs in a fresh folder: nothing written by a relative path lands in the repository (nor, in
    mutation testing, in the copy that the next mutant's session runs in, where it could change its result)."""
    import os

    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def images(tmp_path) -> Path:
    """Eight small synthetic slices, two per class, in class folders."""
    return make_dataset(tmp_path / "imgs", per_class=2)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """One tiny model trained once per session (2 epochs), for the tests of later stages."""
    from click.testing import CliRunner

    from tumor_train.cli import main

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "data", per_class=12)
    result = CliRunner().invoke(
        main, ["--data", str(data), "--out", str(root / "out"), "--epochs", "2", "--width", "16", "--lr", "0.01"]
    )
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.fixture(scope="session")
def recipe(tmp_path_factory):
    """One tiny recipe on one generated dataset: a 2-fold --cv run (fold 2 trained alone first, as a second
    process would with --cv-fold) and a final fit."""
    from click.testing import CliRunner

    from tumor_train.cli import main

    root = tmp_path_factory.mktemp("recipe")
    data = make_dataset(root / "data", per_class=12)
    make_dataset(root / "eval", per_class=3, seed=7)  # the final fit's evaluation images (it trains on all of data)
    args = ["--data", str(data), "--epochs", "2", "--width", "16", "--lr", "0.01"]
    part = CliRunner().invoke(main, args + ["--out", str(root / "cv"), "--cv", "2", "--cv-fold", "2"])
    assert part.exit_code == 0, part.output
    assert "fold 2 of 2: macro F2" in part.output and " ± " not in part.output
    assert "without --cv-fold writes the complete one" in part.output
    assert not (root / "cv" / "fold-1").exists()
    full = CliRunner().invoke(main, args + ["--out", str(root / "cv"), "--cv", "2"])
    assert full.exit_code == 0, full.output
    assert "fold 2/2: reusing" in full.output and "2-fold grouped CV: macro F2" in full.output
    final = CliRunner().invoke(main, args + ["--out", str(root / "final"), "--val-fraction", "0"])
    assert final.exit_code == 0, final.output
    return root


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory) -> Path:
    """The tiny model exported to FP32 and int8 once per session; returns its folder."""
    from tumor_export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("exported")
    run_export(
        ExportOptions(checkpoint=trained / "model.pth", out=out, int8=True, calibration_size=32), log=lambda msg: None
    )
    return out


@pytest.fixture
def int8(exported) -> Path:
    return exported / "model.int8.onnx"
