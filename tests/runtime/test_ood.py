"""The out-of-distribution score: its arithmetic, its storage, and every output path that carries the flag."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import SAMPLES
from tests.onnx_fakes import tiny_model
from tumor_runtime import ood
from tumor_runtime.classifier import Classifier
from tumor_runtime.model import ModelError


def clusters(rng, n=300, d=12):
    centres = rng.normal(0, 3, (3, d))
    labels = rng.integers(0, 3, n)
    return centres[labels] + rng.normal(0, 1, (n, d)), labels


def test_distance_is_small_for_the_training_data_and_large_far_from_it():
    rng = np.random.default_rng(0)
    x, labels = clusters(rng)
    g = ood.fit_gaussian(x, labels, 4)
    inside = g.distance(x)
    far = g.distance(x[:20] + 15)  # off every class centre
    assert np.median(far) > 10 * np.quantile(inside, 0.99)
    # the nearest class counts: a point at another class's centre is as close as that class's own points
    assert g.distance(x[labels == 1][:5]).max() < np.quantile(inside, 0.999) * 2


def test_unexplained_directions_count():
    """A shift along a direction the top components leave out is still caught (the residual term)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (400, 6)) * np.array([10, 8, 6, 1, 1, 1])
    labels = np.zeros(400, int)
    g = ood.fit_gaussian(x, labels, 3)
    shifted = x[:50].copy()
    shifted[:, 5] += 8  # eight standard deviations in a small-variance direction
    assert np.median(g.distance(shifted)) > 3 * np.quantile(g.distance(x), 0.99)


def test_thresholds_pass_the_chosen_share_and_survive_storage():
    rng = np.random.default_rng(2)
    features, labels = clusters(rng, 500, 40)
    features = np.abs(features)
    descriptors = rng.normal(0, 1, (500, 23)).astype(np.float32)
    model = ood.with_thresholds(ood.fit(features, descriptors, labels), features, descriptors, 0.99)
    scores = model.score(features, descriptors)
    assert 0.005 <= model.flags(scores).mean() <= 0.02  # two measurements at 1 % each: 1-2 % flagged
    again = ood.OodModel.from_metadata(model.to_metadata())
    assert np.allclose(again.score(features, descriptors), scores, rtol=1e-3)


@pytest.mark.parametrize("damage", ["method", "nan", "shape", "text"])
def test_a_damaged_record_refuses_the_model(tmp_path, damage):
    rng = np.random.default_rng(3)
    features, labels = clusters(rng, 200, 8)
    descriptors = rng.normal(0, 1, (200, 23)).astype(np.float32)
    record = json.loads(ood.with_thresholds(ood.fit(features, descriptors, labels), features, descriptors)
                        .to_metadata())
    if damage == "method":
        record["method"] = "guess"
    elif damage == "nan":
        record["image"]["threshold"] = float("nan")
    elif damage == "shape":
        record["features"]["centers"]["shape"] = [1, 1]
    text = "{not json" if damage == "text" else json.dumps(record)
    with pytest.raises(ModelError, match="'ood' metadata"):
        Classifier.load(tiny_model(tmp_path / "m.onnx", ood=text), verify=False)


def test_image_descriptor_tells_a_slice_from_a_photo_like_texture():
    slice_ = np.asarray(__import__("PIL").Image.open(sorted(SAMPLES.rglob("*.jpg"))[0]).convert("L").resize((128, 128)))
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    a, b = ood.image_descriptors(np.stack([slice_, noise]))
    assert a.shape == b.shape == (23,) and a.dtype == np.float32
    assert a[16] > 0.6 and b[16] < 0.3  # left-right symmetry of a head, none in noise
    assert a[20] > 0.5 > b[20]  # a slice's border is dark


def test_every_output_carries_the_flag(exported, tmp_path):
    from tumor_runtime.cli import main

    model = str(exported / "model.int8.onnx")
    noise = tmp_path / "noise.png"
    __import__("PIL").Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(noise)
    slice_ = next(SAMPLES.rglob("*.jpg"))
    rows = Classifier.load(model).predict([noise, slice_])
    assert rows[0]["in_distribution"] is False and rows[0]["ood_score"] >= 1
    assert all(isinstance(r["ood_score"], float) for r in rows)
    result = CliRunner().invoke(main, [str(noise), "--model", model, "--format", "csv"])
    assert result.exit_code == 0 and "1 input(s) do not look like" in result.stderr  # said, not an error
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert table[0]["in_distribution"] == "false" and float(table[0]["ood_score"]) >= 1
    plain = CliRunner().invoke(main, [str(noise), "--model", model])
    assert "does not look like a brain MRI slice" in plain.stdout
    card = json.loads(CliRunner().invoke(main, ["--model-info", "--model", model]).stdout)
    assert set(card["out_of_distribution"]["thresholds"]) == {"features", "image"}


def test_evaluate_counts_flagged_inputs(exported, tmp_path):
    from tests.conftest import make_dataset
    from tumor_runtime.cli import main

    data = make_dataset(tmp_path / "d", per_class=2)
    __import__("PIL").Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(
        data / "glioma" / "noise.png")
    result = CliRunner().invoke(main, ["--evaluate", str(data), "--model", str(exported / "model.int8.onnx"),
                                       "--format", "json"])
    report = json.loads(result.stdout)
    assert report["n_out_of_distribution"] >= 1 and report["n_images"] == 9


def test_a_model_without_the_score_answers_as_before(tmp_path):
    gradient = np.tile(np.arange(64, dtype=np.uint8) * 3, (64, 1))
    row = Classifier.load(tiny_model(tmp_path / "m.onnx", 64, input_size=64), verify=False).predict([gradient])[0]
    assert row["ood_score"] is None and row["in_distribution"] is None and row["label"]


def test_the_shipped_model_flags_what_is_not_a_brain_slice_and_passes_real_slices():
    """With the shipped model: the committed real slices pass; a photo, noise and text are flagged."""
    from benchmarks.ood_set import photos, synthetic

    clf = Classifier.load()
    assert clf.info.ood is not None
    real = clf.predict(sorted(SAMPLES.rglob("*.jpg")))
    assert all(r["in_distribution"] for r in real)
    rng = np.random.default_rng(0)
    pictures = photos(rng)[:1] + synthetic(rng)[:1] + [synthetic(rng)[-6]]  # a photo, noise, a page of text
    assert [r["in_distribution"] for r in clf.predict(pictures)] == [False] * len(pictures)
