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

from tests.helpers.datasets import SAMPLES
from tumor_runtime.inference.classifier import Classifier

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


@pytest.fixture(scope="module")
def clf():
    return Classifier.load(threads=1)


def test_csv_tumor_columns_follow_the_probabilities(clf, tmp_path):
    from tumor_runtime.cli.infer import main

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
    from tumor_runtime.cli.infer import main

    data = tmp_path / "eval"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
        src = sorted((SAMPLES / name).glob("*.jpg"))[0]
        shutil.copy(src, data / name / src.name)
    (data / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    rows = [json.loads(x) for x in CliRunner().invoke(main, ["-r", str(data), "--format", "jsonl"]).stdout.splitlines()]
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and all(
        bad[0][k] is None
        for k in ("label", "tumor", "tumor_probability", "ood_score", "in_distribution", "probabilities")
    )
    table = list(csv.DictReader(io.StringIO(CliRunner().invoke(main, ["-r", str(data), "--format", "csv"]).stdout)))
    broken = next(r for r in table if r["path"].endswith("broken.jpg"))
    assert broken["tumor"] == "" and broken["label"] == "" and broken["error"]
    evaluation = CliRunner().invoke(main, ["--evaluate", str(data), "--format", "json"])
    assert evaluation.exit_code == 1 and json.loads(evaluation.stdout)["n_errors"] == 1


def test_the_weighted_row_is_the_weighted_f2():
    from tumor_runtime.cli.writers import evaluation_csv
    from tumor_runtime.core.scoring import evaluate_records

    labels = [0] * 30 + [1] * 3 + [2] * 3 + [3] * 3  # unbalanced: weighted and macro F2 differ
    predicted = [0] * 28 + [1, 2] + [1, 1, 0] + [2, 2, 2] + [3, 0, 3]
    records = [
        {"error": None, "label": CLASSES[p], "tumor_probability": 0.9, "in_distribution": True} for p in predicted
    ]
    result = evaluate_records(records, labels, CLASSES)
    rows = {r["class"]: r for r in csv.DictReader(io.StringIO(evaluation_csv(result)))}
    assert float(rows["weighted"]["f2"]) == pytest.approx(result["f2_weighted"], abs=1e-6)
    assert float(rows["macro"]["f2"]) == pytest.approx(result["f2_macro"], abs=1e-6)
    assert abs(result["f2_weighted"] - result["f2_macro"]) > 0.05


def test_heat_map_is_the_predicted_class(clf):
    from tumor_runtime.core.contract import CAM_OUTPUT
    from tumor_runtime.inference.heatmap import normalized_cam

    for path in sorted(SAMPLES.rglob("*.jpg"))[::5]:
        rec = clf.predict([path], heatmaps=True)[0]
        best = CLASSES.index(rec["label"])
        cams = clf.run(rec["slice"][None], [CAM_OUTPUT])[0][0]
        assert np.allclose(rec["cam"], normalized_cam(cams, best, clf.info.input_size))
        if best != 0:
            assert not np.allclose(rec["cam"], normalized_cam(cams, 0, clf.info.input_size))


def test_hidden_folders_and_plain_listing(tmp_path):
    from tumor_runtime.imaging.listing import images_in

    sample = sorted(SAMPLES.rglob("*.jpg"))[0].read_bytes()
    for folder in ("", "sub", ".git", ".Trash/deep"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "a.jpg").write_bytes(sample)
    (tmp_path / "UPPER.DCM").write_bytes(b"\0" * 128 + b"DICM")
    names = sorted(str(p.relative_to(tmp_path)) for p in images_in(tmp_path, recursive=True))
    assert names == ["UPPER.DCM", "a.jpg", "sub/a.jpg"]
    assert sorted(p.name for p in images_in(tmp_path, recursive=False)) == ["UPPER.DCM", "a.jpg"]


def test_a_model_under_another_files_name_is_refused(tmp_path):
    from tumor_runtime.core.errors import ModelError
    from tumor_runtime.model.manifest import default_model_path

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

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predictions/tumor",
        "raw_path": b"/predictions/tumor",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    pytest.importorskip("starlette")
    from tumor_runtime.serving.app import create_app

    app = create_app(max_upload_mb=0.01, load_now=True)
    small = sorted(SAMPLES.rglob("*.jpg"))[0].read_bytes()[:5000]
    assert asgi_post(app, {"content-length": str(10**9)}, small) == 413
    assert asgi_post(app, {"content-length": str(len(small))}, small) in (200, 400)


def test_a_symlinked_model_is_checked_against_the_manifest_beside_its_target(tmp_path):
    from tumor_runtime.core.errors import ModelError
    from tumor_runtime.model.manifest import default_model_path

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


def test_table_warnings_follow_the_models_score_and_only_the_flagged_rows(tmp_path):
    """A model exported without an out-of-distribution score never warns (its rows have no flag at all), in the
    table or on stderr; the shipped model warns on the rows it flags and on no others, and counts them once."""
    from PIL import Image

    from tests.helpers.onnx_fakes import tiny_model
    from tests.helpers.processes import infer
    from tumor_runtime.cli.writers import OOD_WARNING

    scans = tmp_path / "scans"
    scans.mkdir()
    for path in sorted(SAMPLES.rglob("*.jpg"))[:3]:
        shutil.copy(path, scans / path.name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8)).save(scans / "zz_noise.png")
    plain = tiny_model(tmp_path / "plain.onnx", 227)
    without = infer([scans, "--model", plain, "--format", "table"])
    assert without.returncode == 0, without.stderr
    assert OOD_WARNING not in without.stdout and "in_distribution" not in without.stderr
    shipped = infer([scans, "--format", "table"])
    assert shipped.returncode == 0, shipped.stderr
    warned = [line for line in shipped.stdout.splitlines() if OOD_WARNING in line]
    assert len(warned) == 1 and "zz_noise.png" in warned[0]
    assert "1 input(s) do not look like the brain MRI slices" in shipped.stderr


def test_what_training_fed_the_network_is_what_the_runtime_feeds_it(tmp_path):
    """The same files through a training run's own data path (its recorded configuration) and through the runtime's
    decoding with the preprocessing its checkpoint records: the same pixels. The heads sit off-centre in a black
    frame, so a training cache built without the recorded crop (or at another size) fails here."""
    from click.testing import CliRunner
    from PIL import Image

    from tests.helpers.datasets import make_dataset
    from tumor_runtime.imaging.pool import decode_item
    from tumor_train.cli import main
    from tumor_train.config import TrainConfig
    from tumor_train.data import prepare_data
    from tumor_train.model_file import load_file

    data = make_dataset(tmp_path / "data", per_class=6)
    for path in data.rglob("*.jpg"):
        frame = Image.new("L", (150, 120))
        frame.paste(Image.open(path).convert("L"), (12, 30))  # the 64 px head, off-centre
        frame.save(path, quality=95)
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--epochs", "1", "--width", "4", "--size", "48"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "metrics.json").read_text())["config"]
    record = load_file(out / "model.pth")["preprocess"]
    assert record["crop"] == config["crop"] == "brain" and record["size"] == 48
    prepared = prepare_data(TrainConfig(**config))
    for images in (prepared.train, prepared.val):
        fed = images.images.astype(int)
        seen = np.stack([decode_item(path, record["size"], record["crop"], False)[0] for path in images.paths])
        assert np.abs(fed - seen.astype(int)).max() <= 1
        uncropped = np.stack([decode_item(path, record["size"], "none", False)[0] for path in images.paths])
        assert np.abs(fed - uncropped.astype(int)).max() > 50  # the crop matters for these files
