"""`tumor-infer --ray`: the same rows as a local run, on a local Ray instance with the CI machine's 2 CPUs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from tests.conftest import SAMPLES
from tests.helpers import block_imports, one_line_error, run_infer, write_dicom
from tumor_runtime.classifier import Classifier
from tumor_runtime.errors import UsageError
from tumor_runtime.ray_batch import check_reachable


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The sample slices, a truncated JPEG, a text file named .png and a 2-frame DICOM: rows of every kind."""
    root = tmp_path_factory.mktemp("ray-inputs")
    for path in sorted(SAMPLES.rglob("*.jpg")):
        shutil.copy(path, root / f"{path.parent.name}-{path.name}")
    (root / "broken.jpg").write_bytes((SAMPLES / "glioma").glob("*.jpg").__next__().read_bytes()[:300])
    (root / "notes.png").write_text("not an image")
    slice_ = np.asarray(Image.open(sorted(SAMPLES.rglob("*.jpg"))[0]).convert("L"), np.uint16) * 16
    pytest.importorskip("pydicom")
    write_dicom(root / "series.dcm", np.stack([slice_, slice_[:, ::-1]]), bits_stored=12)
    return root


def test_ray_run_writes_the_same_file_and_exit_code_as_a_local_run(folder, tmp_path):
    pytest.importorskip("ray")
    local = run_infer([folder, "--format", "csv", "-q", "-o", tmp_path / "local.csv"])
    on_ray = run_infer([folder, "--ray", "auto", "--format", "csv", "-q", "-o", tmp_path / "ray.csv"])
    assert on_ray.returncode == local.returncode == 1, on_ray.stderr  # two unreadable inputs: exit 1 both ways
    local_text, ray_text = (tmp_path / "local.csv").read_text(), (tmp_path / "ray.csv").read_text()
    assert ray_text == local_text
    rows = local_text.splitlines()[1:]
    assert len(rows) == len(list(folder.iterdir())) + 1  # the DICOM file gives one row per frame
    assert sum(",true," in r or ",false," in r for r in rows) == len(rows) - 2  # classified rows
    assert "Traceback" not in on_ray.stderr and "broken.jpg" in on_ray.stderr  # errors reported as locally


def test_ray_records_with_two_actors_keep_input_order(folder):
    """The Python API with two one-CPU actors (batches finish out of order): rows in input order, equal to
    Classifier.predict's."""
    pytest.importorskip("ray")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    files = files[::-1] + files  # more rows than one actor batch would hold in order by chance
    program = ("import json, sys\nfrom tumor_runtime.ray_batch import ray_records\n"
               f"rows = list(ray_records({[str(f) for f in files]!r}, threads=1, actors=2))\n"
               "print(json.dumps(rows))\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    expected = json.loads(json.dumps(Classifier.load(threads=1).predict(files)))
    assert json.loads(result.stdout.splitlines()[-1]) == expected


@pytest.mark.parametrize("extra", [["--heatmaps", "maps"], ["--evaluate"]])
def test_ray_refuses_local_only_options_before_starting(extra, tmp_path):
    target = SAMPLES if "--evaluate" in extra else SAMPLES / "glioma"
    result = run_infer([target, "--ray", "auto", *[str(tmp_path / e) if e == "maps" else e for e in extra]])
    one_line_error(result)
    assert "--ray classifies only" in result.stderr and not (tmp_path / "maps").exists()


def test_ray_without_the_extra_says_how_to_install_it():
    program = block_imports("ray") + ("import sys\nfrom tumor_runtime.cli import main\n"
                                      f"sys.argv = ['tumor-infer', {str(SAMPLES / 'glioma')!r}, '--ray', 'auto']\n"
                                      "main()\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    one_line_error(result)
    assert "pip install 'tumor-kit[ray]'" in result.stderr


def test_unreachable_cluster_is_one_line_within_seconds():
    pytest.importorskip("ray")
    result = run_infer([SAMPLES / "glioma", "--ray", "127.0.0.1:1"])
    one_line_error(result)
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in result.stderr


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters=":"), max_size=40))
def test_an_address_without_a_port_is_refused_with_its_form(text):
    with pytest.raises(UsageError, match="give auto, HOST:PORT or ray://HOST:PORT"):
        check_reachable(text)


def test_an_actor_larger_than_the_cluster_is_refused_not_waited_for():
    pytest.importorskip("ray")
    result = run_infer([SAMPLES / "glioma", "--ray", "auto", "--threads", "64"])
    one_line_error(result)
    assert "asks for 64 CPUs" in result.stderr
