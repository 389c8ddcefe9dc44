"""Behaviour a user reads off the outputs, one test per kind of planted bug that used to survive the suite."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import SAMPLES
from tumor_runtime.classifier import Classifier

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


@pytest.fixture(scope="module")
def clf():
    return Classifier.load(threads=1)


def test_csv_tumor_columns_follow_the_probabilities(clf, tmp_path):
    from tumor_runtime.cli import main

    result = CliRunner().invoke(main, ["-r", str(SAMPLES), "--format", "csv", "--tumor-threshold", "0.9"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 20
    for row in rows:
        tumor_p = float(row["tumor_probability"])
        assert tumor_p == pytest.approx(1 - float(row["p_notumor"]), abs=2e-6)
        assert row["tumor"] == ("true" if tumor_p >= 0.9 else "false")
        assert row["label"] == max(CLASSES, key=lambda c: float(row[f"p_{c}"]))
    assert {row["tumor"] for row in rows} == {"true", "false"}  # the threshold splits the samples


def test_error_rows_are_null_everywhere_and_counted(tmp_path):
    from tumor_runtime.cli import main

    data = tmp_path / "eval"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
        src = sorted((SAMPLES / name).glob("*.jpg"))[0]
        shutil.copy(src, data / name / src.name)
    (data / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    rows = [json.loads(x) for x in CliRunner().invoke(main, ["-r", str(data), "--format", "jsonl"]).stdout.splitlines()]
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and all(bad[0][k] is None for k in ("label", "tumor", "tumor_probability", "ood_score",
                                                              "in_distribution", "probabilities"))
    table = list(csv.DictReader(io.StringIO(CliRunner().invoke(main, ["-r", str(data), "--format", "csv"]).stdout)))
    broken = next(r for r in table if r["path"].endswith("broken.jpg"))
    assert broken["tumor"] == "" and broken["label"] == "" and broken["error"]
    evaluation = CliRunner().invoke(main, ["--evaluate", str(data), "--format", "json"])
    assert evaluation.exit_code == 1 and json.loads(evaluation.stdout)["n_errors"] == 1


def test_the_weighted_row_is_the_weighted_f2():
    from tumor_runtime.evaluation import evaluate_records
    from tumor_runtime.output import evaluation_csv

    labels = [0] * 30 + [1] * 3 + [2] * 3 + [3] * 3  # unbalanced: weighted and macro F2 differ
    predicted = [0] * 28 + [1, 2] + [1, 1, 0] + [2, 2, 2] + [3, 0, 3]
    records = [{"error": None, "label": CLASSES[p], "tumor_probability": 0.9, "in_distribution": True}
               for p in predicted]
    result = evaluate_records(records, labels, CLASSES)
    rows = {r["class"]: r for r in csv.DictReader(io.StringIO(evaluation_csv(result)))}
    assert float(rows["weighted"]["f2"]) == pytest.approx(result["f2_weighted"], abs=1e-6)
    assert float(rows["macro"]["f2"]) == pytest.approx(result["f2_macro"], abs=1e-6)
    assert abs(result["f2_weighted"] - result["f2_macro"]) > 0.05


def test_heat_map_is_the_predicted_class(clf):
    from tumor_runtime.contract import CAM_OUTPUT
    from tumor_runtime.heatmap import normalized_cam

    for path in sorted(SAMPLES.rglob("*.jpg"))[::5]:
        rec = clf.predict([path], heatmaps=True)[0]
        best = CLASSES.index(rec["label"])
        cams = clf._run(rec["slice"][None], [CAM_OUTPUT])[0][0]
        assert np.allclose(rec["cam"], normalized_cam(cams, best, clf.info.input_size))
        if best != 0:
            assert not np.allclose(rec["cam"], normalized_cam(cams, 0, clf.info.input_size))


def test_hidden_folders_and_plain_listing(tmp_path):
    from tumor_runtime.inputs import images_in

    sample = sorted(SAMPLES.rglob("*.jpg"))[0].read_bytes()
    for folder in ("", "sub", ".git", ".Trash/deep"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "a.jpg").write_bytes(sample)
    (tmp_path / "UPPER.DCM").write_bytes(b"\0" * 128 + b"DICM")
    names = sorted(str(p.relative_to(tmp_path)) for p in images_in(tmp_path, recursive=True))
    assert names == ["UPPER.DCM", "a.jpg", "sub/a.jpg"]
    assert sorted(p.name for p in images_in(tmp_path, recursive=False)) == ["UPPER.DCM", "a.jpg"]


def test_a_model_under_another_files_name_is_refused(tmp_path):
    from tumor_runtime.model import ModelError, default_model_path

    shipped = default_model_path().parent
    for name in ("model.onnx", "model.int8.onnx", "manifest.json"):
        shutil.copy(shipped / name, tmp_path / name)
    shutil.copy(shipped / "model.onnx", tmp_path / "model.int8.onnx")  # FP32 bytes under the int8 name
    with pytest.raises(ModelError, match="does not match the sha256"):
        Classifier.load(tmp_path / "model.int8.onnx")


def asgi_post(app, headers: dict, body: bytes) -> int:
    """One POST straight through the ASGI app (no client that would fix the headers); returns the status."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predictions/tumor", "raw_path": b"/predictions/tumor", "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    pytest.importorskip("starlette")
    from tumor_runtime.server import create_app

    app = create_app(max_upload_mb=0.01, load_now=True)
    small = sorted(SAMPLES.rglob("*.jpg"))[0].read_bytes()[:5000]
    assert asgi_post(app, {"content-length": str(10 ** 9)}, small) == 413
    assert asgi_post(app, {"content-length": str(len(small))}, small) in (200, 400)


def test_a_symlinked_model_is_checked_against_the_manifest_beside_its_target(tmp_path):
    from tumor_runtime.model import ModelError, default_model_path

    real = tmp_path / "export"
    real.mkdir()
    for name in ("model.int8.onnx", "manifest.json"):
        shutil.copy(default_model_path().parent / name, real / name)
    (tmp_path / "model.int8.onnx").symlink_to(real / "model.int8.onnx")
    assert Classifier.load(tmp_path / "model.int8.onnx").info.classes == CLASSES  # vouched for where it lives
    with open(real / "model.int8.onnx", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ModelError, match="sha256"):
        Classifier.load(tmp_path / "model.int8.onnx")
