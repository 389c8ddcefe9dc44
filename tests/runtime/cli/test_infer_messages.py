"""What the commands say a user should do next: a torch file given as a model, what -o and --heatmaps wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

import tomllib

from tests.helpers.datasets import SAMPLES
from tests.helpers.processes import one_line_error, run_infer

ROOT = Path(__file__).resolve().parents[3]


def test_a_torch_checkpoint_as_model_says_to_export_it(trained):
    result = run_infer(["-m", trained / "model.pth", SAMPLES / "glioma"])
    one_line_error(result)
    assert result.stderr == (
        f"Error: {trained / 'model.pth'} is a torch checkpoint, not an ONNX model: export it "
        f"with tumor-export --checkpoint {trained / 'model.pth'} --int8, then pass the "
        "model.int8.onnx it writes\n"
    )


def test_output_and_heatmaps_say_what_was_written(tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(SAMPLES / "glioma", inputs)
    (inputs / "broken.jpg").write_bytes(b"not a jpeg")
    result = run_infer([inputs, "--format", "csv", "-o", tmp_path / "r.csv", "--heatmaps", tmp_path / "maps"])
    assert result.returncode == 1, result.stderr  # one error row
    maps = sorted((tmp_path / "maps").iterdir())
    assert len(maps) == 5 and all(m.name.endswith(".heatmap.png") for m in maps)
    assert result.stderr.splitlines()[-1] == (
        f"Wrote 6 row(s) to {tmp_path / 'r.csv'} and 5 heat-map(s) to "
        f"{tmp_path / 'maps'}/ (<file name>.<hash>.heatmap.png)."
    )
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 7


def test_stdout_runs_and_quiet_runs_add_no_closing_line(tmp_path):
    assert "Wrote" not in run_infer([SAMPLES / "glioma", "--format", "csv"]).stderr
    assert run_infer([SAMPLES / "glioma", "-q", "-o", tmp_path / "r.csv"]).stderr == ""


def test_the_license_file_is_the_one_pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
