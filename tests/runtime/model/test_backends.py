"""The same ONNX file on ONNX Runtime and on OpenVINO: same answers, same refusals, a defensible `auto`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers.datasets import SAMPLES
from tumor_runtime.inference.classifier import Classifier
from tumor_runtime.model import backends
from tumor_runtime.model.manifest import default_model_path

FILES = sorted(SAMPLES.rglob("*.jpg"))

TOLERANCE = 0.02  # the largest probability difference allowed between the two engines


@pytest.fixture(scope="module")
def both():
    return Classifier.load(backend="onnxruntime"), Classifier.load(backend="openvino")


def test_same_labels_and_probabilities_within_tolerance(both):
    ort_rows, ov_rows = (clf.predict(FILES) for clf in both)
    assert [r["label"] for r in ort_rows] == [r["label"] for r in ov_rows]
    diff = max(
        abs(a["probabilities"][c] - b["probabilities"][c])
        for a, b in zip(ort_rows, ov_rows)
        for c in a["probabilities"]
    )
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
    from tumor_runtime.cli.infer import main

    result = CliRunner().invoke(main, [str(FILES[0]), "--backend", "openvino", "--format", "jsonl"])
    assert result.exit_code == 0 and json.loads(result.stdout)["label"]
    info = json.loads(CliRunner().invoke(main, ["--model-info", "--backend", "openvino"]).stdout)
    assert info["backend"] == "openvino"


@pytest.mark.parametrize(
    "flags, installed, expected",
    [
        ({"avx2", "amx_int8"}, True, "openvino"),
        ({"avx2", "avx512_vnni"}, True, "openvino"),
        ({"avx2"}, True, "onnxruntime"),
        ({"amx_int8"}, False, "onnxruntime"),
    ],
)
def test_auto_takes_openvino_only_where_it_is_measured_faster(monkeypatch, flags, installed, expected):
    monkeypatch.setattr(backends, "cpu_flags", lambda: flags)
    monkeypatch.setattr(backends, "installed", lambda name: installed and name == "openvino")
    assert backends.choose_backend("auto") == expected


def test_a_missing_or_unknown_backend_is_one_clear_error(monkeypatch):
    from tumor_runtime.core.errors import OptionError, UsageError

    with pytest.raises(OptionError, match="backend must be one of"):
        backends.choose_backend("tensorrt")
    monkeypatch.setattr(backends, "installed", lambda name: False)
    with pytest.raises(UsageError, match=r"\[openvino\] extra"):
        Classifier.load(backend="openvino")


def test_choose_names_the_backends_and_keeps_an_explicit_one():
    from tumor_runtime.core.errors import OptionError

    assert backends.choose_backend("onnxruntime") == "onnxruntime" and backends.choose_backend("openvino") == "openvino"
    with pytest.raises(OptionError) as caught:
        backends.choose_backend("tvm")
    assert str(caught.value) == "backend must be one of auto, onnxruntime, openvino, not 'tvm'"


@pytest.fixture(scope="module")
def ov_session():
    return backends.OpenVinoSession(default_model_path(), threads=1)


def test_openvino_session_compiles_for_the_cpu_in_f32_with_the_asked_threads(ov_session):
    assert ov_session.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(ov_session.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert ov_session.get_inputs() == [backends.Port("image", [None, 1, 160, 160])]
    assert ov_session.get_outputs()[:2] == [
        backends.Port("probabilities", [None, 4]),
        backends.Port("logits", [None, 4]),
    ]
    assert ov_session.get_modelmeta().custom_metadata_map == backends.onnx_metadata(default_model_path())


def test_openvino_session_answers_by_name_in_the_asked_order_with_one_request_per_thread(ov_session):
    import threading

    batch = np.random.default_rng(0).normal(size=(2, 1, 160, 160)).astype(np.float32)
    probs, logits = ov_session.run(["probabilities", "logits"], {"image": batch})
    assert probs.shape == logits.shape == (2, 4)
    assert np.allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-5)
    first = ov_session.local.request
    probs[:] = -1  # the answer is the caller's copy, not the request's buffer
    (again,) = ov_session.run(["probabilities"], {"image": batch})
    assert ov_session.local.request is first and (again >= 0).all()
    seen = []
    worker = threading.Thread(
        target=lambda: (ov_session.run(["logits"], {"image": batch}), seen.append(ov_session.local.request))
    )
    worker.start()
    worker.join()
    assert seen and seen[0] is not first


def test_onnx_metadata_is_the_files_metadata_props():
    import onnx

    path = default_model_path()
    expected = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert backends.onnx_metadata(path) == expected


@pytest.mark.parametrize(
    "flags, warned", [({"avx2", "fma"}, True), ({"avx2", "avx512_vnni"}, False), ({"avx2", "amx_int8"}, False)]
)
def test_openvino_on_a_cpu_without_int8_dot_products_says_so_and_auto_avoids_it(monkeypatch, flags, warned):
    """Round four, item 15: on an AVX2-only EPYC OpenVINO's int8 differed from ONNX Runtime's by up to 0.11."""
    from tumor_runtime.model import backends

    monkeypatch.setattr(backends, "cpu_flags", lambda: flags)
    caveat = backends.openvino_caveat("openvino")
    assert (caveat is not None) == warned and backends.openvino_caveat("onnxruntime") is None
    if backends.installed("openvino"):
        assert backends.choose_backend("auto") == ("onnxruntime" if warned else "openvino")
    if backends.installed("openvino"):
        from tests.helpers.processes import infer

        result = infer([str(SAMPLES / "glioma"), "--backend", "openvino", "-q"])
        assert (
            result.returncode == 0
            and ("warning: --backend openvino on a CPU without AVX-512 VNNI or AMX" in result.stderr) == warned
        ), result.stderr
