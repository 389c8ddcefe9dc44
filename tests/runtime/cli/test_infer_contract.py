"""One error type and exit-code rule, one vocabulary across the four commands, one home for shared names."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.helpers.datasets import SAMPLES
from tests.helpers.onnx_fakes import tiny_model
from tumor_runtime.core import contract, system


def invoke(main, args, **env):
    return CliRunner().invoke(main, [str(a) for a in args], env=env or None)


def test_a_bug_is_one_line_asking_for_a_report_and_exit_70(monkeypatch):
    import tumor_runtime.inference.classifier as classifier
    from tumor_runtime.cli.infer import main

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(classifier.Classifier, "load", broken)
    result = invoke(main, [next(SAMPLES.rglob("*.jpg"))])
    assert result.exit_code == 70 and "Traceback" not in result.output
    assert "internal error (ZeroDivisionError: planted)" in result.stderr and "please report" in result.stderr
    debug = invoke(main, [next(SAMPLES.rglob("*.jpg"))], TUMOR_KIT_DEBUG="1")
    assert isinstance(debug.exception, ZeroDivisionError)  # the traceback is there for whoever asks


def test_user_errors_keep_their_own_exit_codes(tmp_path):
    from tumor_runtime.cli.infer import main

    assert invoke(main, [tmp_path / "missing.jpg"]).exit_code == 2
    assert invoke(main, ["--model", tiny_model(tmp_path / "m.onnx", negative_class="x"), SAMPLES]).exit_code == 2


def test_threads_zero_means_the_cores_available_everywhere():
    from tumor_runtime.cli.infer import main

    result = invoke(main, [next(SAMPLES.rglob("*.jpg")), "--threads", "0", "--format", "jsonl"])
    assert result.exit_code == 0 and json.loads(result.stdout)["label"]


def test_container_cpu_limit_caps_the_cores(tmp_path):
    from tumor_runtime.core.system import cgroup_cpu_limit

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "cpu.max")) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "cpu.max")) is None
    assert cgroup_cpu_limit(str(tmp_path / "absent")) is None


def test_serve_takes_the_threshold_and_threads_as_infer_does():
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from tumor_runtime.serving.app import create_app

    sample = next(SAMPLES.rglob("*.jpg")).read_bytes()
    with TestClient(create_app(load_now=True, threads=1, tumor_threshold=0.0)) as client:
        always = client.post("/predictions/tumor?heatmaps=1", content=sample).json()
    with TestClient(create_app(load_now=True, tumor_threshold=1.0)) as client:
        row = client.post("/predictions/tumor", content=sample).json()
    assert always["tumor"] is True and always["heatmap_png"]  # ?heatmaps=1, as --heatmaps
    assert row["tumor"] is (row["tumor_probability"] >= 1.0)


def test_export_reads_evaluate_and_eval_alike(trained, tmp_path):
    from tests.helpers.datasets import make_dataset
    from tumor_export.cli import main

    data = make_dataset(tmp_path / "d", per_class=3)
    for spelling in ("--evaluate", "--eval"):
        result = invoke(main, ["--checkpoint", trained / "model.pth", "-o", tmp_path / spelling, spelling, data])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / spelling / "export_report.json").read_text())
        assert report["evaluation"]["images"] == 12


def test_the_graph_and_metadata_follow_the_contract(exported):
    import onnx

    for name in contract.MODEL_FILES:
        model = onnx.load(str(exported / name))
        assert [i.name for i in model.graph.input] == [contract.INPUT_NAME]
        assert [o.name for o in model.graph.output][:2] == list(contract.OUTPUT_NAMES)
        keys = {p.key for p in model.metadata_props}
        assert set(contract.REQUIRED_METADATA) <= keys <= set(contract.REQUIRED_METADATA + contract.OPTIONAL_METADATA)
    assert set(json.loads((exported / contract.MANIFEST).read_text())["files"]) == set(contract.MODEL_FILES)


def test_the_version_comes_from_the_package_metadata():
    import tumor_runtime

    assert tumor_runtime.__version__ == system.package_version("tumor-kit")
