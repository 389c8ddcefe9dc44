"""The same ONNX file on ONNX Runtime and on OpenVINO: same answers, same refusals, a defensible `auto`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import SAMPLES
from tumor_runtime import backends
from tumor_runtime.classifier import Classifier

pytest.importorskip("openvino")
FILES = sorted(SAMPLES.rglob("*.jpg"))
TOLERANCE = 0.02  # the largest probability difference allowed between the two engines


@pytest.fixture(scope="module")
def both():
    return Classifier.load(backend="onnxruntime"), Classifier.load(backend="openvino")


def test_same_labels_and_probabilities_within_tolerance(both):
    ort_rows, ov_rows = (clf.predict(FILES) for clf in both)
    assert [r["label"] for r in ort_rows] == [r["label"] for r in ov_rows]
    diff = max(abs(a["probabilities"][c] - b["probabilities"][c]) for a, b in zip(ort_rows, ov_rows)
               for c in a["probabilities"])
    assert diff <= TOLERANCE
    assert [r["in_distribution"] for r in ort_rows] == [r["in_distribution"] for r in ov_rows]
    assert both[1].card()["backend"] == "openvino" and both[0].card()["backend"] == "onnxruntime"


def test_heatmaps_and_bad_inputs_behave_alike(both, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    items = [FILES[0], tmp_path / "broken.jpg", np.zeros((64, 64), np.uint8)]
    ort_rows, ov_rows = (clf.predict(items, heatmaps=True) for clf in both)
    assert [r["error"] for r in ort_rows] == [r["error"] for r in ov_rows]
    assert ov_rows[1]["error"] and ov_rows[2]["error"] and ov_rows[0]["error"] is None
    assert np.corrcoef(ort_rows[0]["cam"].ravel(), ov_rows[0]["cam"].ravel())[0, 1] > 0.99


def test_the_command_takes_the_backend():
    from tumor_runtime.cli import main

    result = CliRunner().invoke(main, [str(FILES[0]), "--backend", "openvino", "--format", "jsonl"])
    assert result.exit_code == 0 and json.loads(result.stdout)["label"]
    info = json.loads(CliRunner().invoke(main, ["--model-info", "--backend", "openvino"]).stdout)
    assert info["backend"] == "openvino"


@pytest.mark.parametrize("flags, installed, expected", [
    ({"avx2", "amx_int8"}, True, "openvino"), ({"avx2", "avx512_vnni"}, True, "openvino"),
    ({"avx2"}, True, "onnxruntime"), ({"amx_int8"}, False, "onnxruntime")])
def test_auto_takes_openvino_only_where_it_is_measured_faster(monkeypatch, flags, installed, expected):
    monkeypatch.setattr(backends, "cpu_flags", lambda: flags)
    monkeypatch.setattr(backends, "openvino_installed", lambda: installed)
    assert backends.choose("auto") == expected


def test_a_missing_or_unknown_backend_is_one_clear_error(monkeypatch):
    from tumor_runtime.errors import OptionError, UsageError

    with pytest.raises(OptionError, match="backend must be one of"):
        backends.choose("tensorrt")
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    with pytest.raises(UsageError, match=r"\[openvino\] extra"):
        Classifier.load(backend="openvino")
