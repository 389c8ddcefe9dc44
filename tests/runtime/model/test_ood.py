"""`runtime/model/ood.py`: the out-of-distribution score: its arithmetic, its storage, and every output path that
carries the flag."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.datasets import SAMPLES
from tests.helpers.onnx_fakes import tiny_model
from tumor_runtime.core.errors import ModelError
from tumor_runtime.imaging import descriptors
from tumor_runtime.inference.classifier import Classifier
from tumor_runtime.model import ood


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
    model = ood.with_thresholds(ood.fit_ood(features, descriptors, labels), features, descriptors, 0.99)
    scores = model.score(features, descriptors)
    assert 0.005 <= model.flags(scores).mean() <= 0.02  # two measurements at 1 % each: 1-2 % flagged
    again = ood.OodModel.from_metadata(model.to_metadata())
    assert np.allclose(again.score(features, descriptors), scores, rtol=1e-3)


@pytest.mark.parametrize("damage", ["method", "nan", "shape", "text"])
def test_a_damaged_record_refuses_the_model(tmp_path, damage):
    rng = np.random.default_rng(3)
    features, labels = clusters(rng, 200, 8)
    descriptors = rng.normal(0, 1, (200, 23)).astype(np.float32)
    record = json.loads(
        ood.with_thresholds(ood.fit_ood(features, descriptors, labels), features, descriptors).to_metadata()
    )
    if damage == "method":
        record["method"] = "guess"
    elif damage == "nan":
        record["image"]["threshold"] = float("nan")
    elif damage == "shape":
        record["features"]["centers"]["shape"] = [1, 1]
    text = "{not json" if damage == "text" else json.dumps(record)
    with pytest.raises(ModelError, match="'ood' metadata"):
        Classifier.load(tiny_model(tmp_path / "m.onnx", ood=text), verify=False)


def test_every_output_carries_the_flag(exported, tmp_path):
    from tumor_runtime.cli.infer import main

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
    from tests.helpers.datasets import make_dataset
    from tumor_runtime.cli.infer import main

    data = make_dataset(tmp_path / "d", per_class=2)
    __import__("PIL").Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(
        data / "glioma" / "noise.png"
    )
    result = CliRunner().invoke(
        main, ["--evaluate", str(data), "--model", str(exported / "model.int8.onnx"), "--format", "json"]
    )
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


def test_unit_rows_have_length_one_and_a_zero_row_stays_zero():
    rows = ood.unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]]))
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows[0], [0.6, 0.8])
    assert not rows[1].any() and np.isfinite(rows).all()


def test_storage_is_float16_base64_and_refuses_a_damaged_text():
    a = np.array([[1.0, -2.5], [1e-3, 65504.0]], np.float32)
    entry = ood._encode(a)
    assert entry["shape"] == [2, 2] and len(entry["float16"]) == 12  # 8 bytes in base64
    assert np.array_equal(ood._decode(entry), a.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError):
        ood._decode({"shape": [2, 2], "float16": entry["float16"][:-2] + "*="})
    with pytest.raises(ValueError):  # stray characters are refused, not skipped (the rest would still decode)
        ood._decode({"shape": [2, 2], "float16": entry["float16"][:4] + "!" + entry["float16"][4:]})


def test_distance_is_the_whitened_distance_to_the_nearest_centre_plus_the_residual():
    rng = np.random.default_rng(7)
    basis, _ = np.linalg.qr(rng.normal(0, 1, (5, 2)))  # principal directions are orthogonal,
    directions = (basis * [0.5, 2.0]).astype(np.float32)  # each divided by the square root of its variance
    g = ood.Gaussian(
        mean=rng.normal(0, 1, 5).astype(np.float32),
        directions=directions,
        centers=np.array([[0.0, 0.0], [3.0, -1.0]], np.float32),
        rest_variance=0.5,
        threshold=1.0,
    )
    x = rng.normal(0, 2, (4, 5))
    q, _ = np.linalg.qr(directions.astype(np.float64))  # an orthonormal basis of the kept directions
    for row, got in zip(x, g.distance(x)):
        centred = row - g.mean
        z = centred @ directions
        nearest = min(((z - c) ** 2).sum() for c in g.centers)
        residual = centred - q @ (q.T @ centred)
        assert got == pytest.approx(nearest + (residual**2).sum() / 0.5, rel=1e-4)


def test_fit_whitens_the_within_class_spread_and_keeps_the_asked_directions():
    rng = np.random.default_rng(8)
    labels = np.repeat([0, 1], 2000)
    x = rng.normal(0, 1, (4000, 4)) * np.array([4.0, 2.0, 1.0, 0.5]) + labels[:, None] * 10
    g = ood.fit_gaussian(x, labels, components=2)
    assert g.directions.shape == (4, 2) and g.centers.shape == (2, 2) and g.threshold == 1.0
    within = x - np.where(labels[:, None] == 0, x[labels == 0].mean(0), x[labels == 1].mean(0))
    np.testing.assert_allclose(np.cov((within @ g.directions).T), np.eye(2), atol=0.05)  # unit variance, no correlation
    assert g.rest_variance == pytest.approx((1.0 + 0.25) / 2, rel=0.1)  # the mean variance left out
    assert ood.fit_gaussian(x, labels, components=10).directions.shape == (4, 3)  # at most D - 1
    assert ood.fit_gaussian(x[:3], labels[:3], components=10).directions.shape == (4, 2)  # at most N - 1


def test_fit_floors_a_direction_without_variance():
    x = np.zeros((50, 3))
    x[:, 0] = np.random.default_rng(9).normal(0, 2, 50)
    g = ood.fit_gaussian(x, np.zeros(50, int), components=2)
    assert np.isfinite(g.directions).all() and g.rest_variance > 0
    assert np.abs(g.directions[:, 1]).max() == pytest.approx(1 / np.sqrt(1e-3 * np.var(x[:, 0], ddof=1)), rel=1e-3)


def gaussian_json(**change):
    g = ood.Gaussian(np.zeros(3, np.float32), np.eye(3, 2, dtype=np.float32), np.zeros((2, 2), np.float32), 1.0, 2.0)
    return g.to_json() | change


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rest_variance": 0.0}, "values that are not finite or not positive"),
        ({"threshold": -1.0}, "values that are not finite or not positive"),
        ({"threshold": float("inf")}, "values that are not finite or not positive"),
        ({"mean": ood._encode(np.zeros(4))}, "shapes that do not fit together"),
        ({"centers": ood._encode(np.zeros((2, 3)))}, "shapes that do not fit together"),
        ({"centers": ood._encode(np.zeros(2))}, "shapes that do not fit together"),
        ({"directions": ood._encode(np.zeros((3, 2)))}, "values that are not finite or not positive"),
        ({"directions": ood._encode(np.eye(3, 2) * [1, 0])}, "values that are not finite or not positive"),  # one is 0
        ({"mean": ood._encode(np.array([0, np.nan, 0]))}, "values that are not finite or not positive"),
    ],
)
def test_a_stored_measurement_that_cannot_be_trusted_is_refused(change, message):
    assert ood.Gaussian.from_json(gaussian_json()).threshold == 2.0
    with pytest.raises(ValueError, match=f"^{message}$"):
        ood.Gaussian.from_json(gaussian_json(**change))


def image_gaussian():
    d = descriptors.DESCRIPTOR_LENGTH
    return ood.Gaussian(np.zeros(d, np.float32), np.eye(d, 2, dtype=np.float32), np.zeros((1, 2), np.float32), 1.0, 4.0)


def test_score_is_the_larger_ratio_and_one_is_already_out():
    features = ood.Gaussian(
        np.zeros(2, np.float32), np.eye(2, 1, dtype=np.float32), np.zeros((1, 1), np.float32), 1.0, 2.0
    )
    model = ood.OodModel(features, image_gaussian())
    f = np.array([[1.0, 0.0], [0.0, 1.0]])  # unit rows: distance 1 (whitened) or 1 (residual)
    d = np.zeros((2, descriptors.DESCRIPTOR_LENGTH), np.float32)
    d[1, 0] = 3.0  # image distance 9, over its threshold 4
    np.testing.assert_allclose(model.score(f, d), [0.5, 2.25])
    assert model.flags([0.999, 1.0, 2.0]).tolist() == [False, True, True]


def test_metadata_names_its_method_and_checks_the_image_length():
    features = image_gaussian()
    model = ood.OodModel(features, image_gaussian())
    text = model.to_metadata()
    assert json.loads(text)["method"] == "mahalanobis-ppca:features+image" == ood.METHOD
    assert ood.OodModel.from_metadata(text).image.threshold == 4.0
    record = json.loads(text)
    with pytest.raises(ValueError) as caught:
        ood.OodModel.from_metadata(json.dumps(record | {"method": "energy"}))
    assert str(caught.value) == "the 'ood' metadata is not a valid record (unknown method 'energy')"
    short = ood.Gaussian(
        np.zeros(5, np.float32), np.eye(5, 2, dtype=np.float32), np.zeros((1, 2), np.float32), 1.0, 1.0
    )
    with pytest.raises(ValueError, match="^the 'ood' metadata's image measurement has the wrong length$"):
        ood.OodModel.from_metadata(ood.OodModel(features, short).to_metadata())


def test_thresholds_sit_just_above_the_chosen_quantile():
    model = ood.OodModel(image_gaussian(), image_gaussian())
    rng = np.random.default_rng(10)
    d = rng.normal(0, 1, (200, descriptors.DESCRIPTOR_LENGTH)).astype(np.float32)
    f = rng.normal(0, 1, (200, descriptors.DESCRIPTOR_LENGTH)).astype(np.float32)
    fitted = ood.with_thresholds(model, f, d, pass_share=0.9)
    distances = model.image.distance(d)
    expected = float(np.quantile(distances, 0.9, method="higher")) * (1 + 1e-6)
    assert fitted.image.threshold == pytest.approx(expected, rel=1e-9)
    assert (distances < fitted.image.threshold).mean() == pytest.approx(0.905, abs=0.006)
    assert ood.PASS_SHARE == 0.9975 and ood.COMPONENTS == {"features": 24, "image": 16}


@given(st.floats(0.2, 5.0), st.floats(0.5, 0.999))
@settings(max_examples=25, deadline=None)
def test_a_margin_scales_its_own_measurements_threshold_only(margin, share):
    """Held-out margins (tumor_export.heldout): the features threshold is the margin times the quantile of these
    inputs' distances; the image measurement, with no margin given, keeps its plain quantile."""
    model = ood.OodModel(image_gaussian(), image_gaussian())
    rng = np.random.default_rng(11)
    d = rng.normal(0, 1, (200, descriptors.DESCRIPTOR_LENGTH)).astype(np.float32)
    f = rng.normal(0, 1, (200, descriptors.DESCRIPTOR_LENGTH)).astype(np.float32)
    plain = ood.with_thresholds(model, f, d, share)
    scaled = ood.with_thresholds(model, f, d, share, {"features": margin})
    assert scaled.features.threshold == pytest.approx(plain.features.threshold * margin, rel=1e-9)
    assert scaled.image.threshold == plain.image.threshold


def test_the_ood_benchmark_prints_a_table_of_what_each_source_caught():
    """`python -m benchmarks.ood_set` promises a table: one row per source with its count, catch rate and ROC area."""
    from benchmarks.ood_set import evaluate, table

    clf = Classifier.load()
    real = sorted(SAMPLES.rglob("*.jpg"))
    from tumor_runtime.imaging.transform import load_gray

    result = evaluate(clf, real, [load_gray(f, 256) for f in real[:4]])
    lines = table(result).splitlines()
    assert lines[0].startswith(f"In distribution: {len(real)} slices, ")
    rows = [line.split(" | ") for line in lines[4:]]
    assert [r[0].lstrip("| ") for r in rows] == [*result["sources"], "all"]
    assert sum(int(r[1]) for r in rows[:-1]) == int(rows[-1][1]) == result["all"]["images"]
    assert all(r[2].endswith("%") and 0 <= float(r[3].rstrip(" |")) <= 1 for r in rows)


@pytest.mark.parametrize(
    "change, says",
    [
        ("features", r"^the model's 'ood' metadata describes 319 features but its graph gives 320: export it again$"),
        ("threshold", r"^the model's 'ood' metadata gives non-finite scores"),
    ],
)
def test_an_ood_record_that_does_not_fit_the_graph_is_refused_at_load(tmp_path, change, says):
    """Round four, item 12: a record checked only against itself loaded, then failed on the first batch (exit 70)
    or wrote Infinity into JSON."""
    from dataclasses import replace

    import onnx

    from tests.helpers.datasets import REPO
    from tumor_runtime.core.errors import ModelError

    model = onnx.load(REPO / "artifacts" / "model.int8.onnx")
    entry = next(p for p in model.metadata_props if p.key == "ood")
    record = ood.OodModel.from_metadata(entry.value)
    f = record.features
    changed = (
        replace(record, features=replace(f, mean=f.mean[:-1], directions=f.directions[:-1]))
        if change == "features"
        else replace(record, image=replace(record.image, threshold=1e-45))
    )
    entry.value = changed.to_metadata()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match=says):
        Classifier.load(path, verify=False)


def test_a_score_that_overflows_is_written_as_a_finite_flagged_number():
    import json

    clf = Classifier.load()
    probs = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    for score in (np.inf, np.nan):
        row = clf.record("x.png", probs, ood_score=score)
        assert row["in_distribution"] is False and np.isfinite(row["ood_score"])
        json.dumps(row, allow_nan=False)  # what --format json writes: never Infinity or NaN


@pytest.mark.parametrize("measurement", ["features", "image"])
def test_each_threshold_sits_at_the_pass_share_of_the_runtimes_own_score(measurement):
    """The threshold fitted on validation inputs is read off the same form of them that `score` measures: through
    the runtime's own score of those inputs (the other measurement switched off), exactly the PASS_SHARE quantile
    passes. Raw features far from unit length make a threshold fitted on another form miss by orders of magnitude."""
    from dataclasses import replace

    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 100)
    features = rng.normal(0, 1, (400, 32)) * 40 + 3 * labels[:, None]
    image = rng.normal(0, 1, (400, descriptors.DESCRIPTOR_LENGTH)) * 5 + labels[:, None]
    model = ood.fit_ood(features, image, labels)
    val_features = rng.normal(0, 1, (800, 32)) * 40
    val_descriptors = rng.normal(0, 1, (800, descriptors.DESCRIPTOR_LENGTH)) * 5
    model = ood.with_thresholds(model, val_features, val_descriptors)
    other = "image" if measurement == "features" else "features"
    alone = replace(model, **{other: replace(getattr(model, other), threshold=np.inf)})
    with np.errstate(divide="ignore"):
        scores = alone.score(val_features, val_descriptors)
    passed = float((~ood.OodModel.flags(scores)).mean())
    assert passed == pytest.approx(ood.PASS_SHARE, abs=1.5 / len(scores))
    assert np.quantile(scores, ood.PASS_SHARE, method="higher") == pytest.approx(1.0, rel=1e-4)
