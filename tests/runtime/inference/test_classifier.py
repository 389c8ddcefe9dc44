"""`runtime/inference/classifier.py`: the Python API's argument checks and results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.comparisons import ACROSS_BATCHES, assert_same_probabilities
from tests.helpers.datasets import CLASSES, SAMPLES
from tests.helpers.dicom import write_dicom
from tumor_runtime.core.errors import ModelError
from tumor_runtime.imaging.listing import Unreadable
from tumor_runtime.inference import classifier as classifier_module
from tumor_runtime.inference.classifier import Classifier

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


@pytest.mark.parametrize("value", [float("nan"), 2.0, -0.5, float("inf")])
def test_02_api_threshold_must_be_finite_and_in_range(int8, value):
    with pytest.raises(ValueError):
        Classifier.load(int8, tumor_threshold=value)


# The Python API's behaviour on the shipped model and on stand-ins.

FILES = sorted(SAMPLES.rglob("*.jpg"))


@pytest.fixture(scope="module")
def clf():
    return Classifier.load(threads=1)


def test_options_are_checked_and_threads_capped_at_the_cores(monkeypatch):
    monkeypatch.setattr(classifier_module, "available_cores", lambda: 2)
    assert classifier_module.checked_options(None, 32, None) == (2, 32, None)
    assert classifier_module.checked_options(8, 1, 0.25) == (2, 1, 0.25)
    assert classifier_module.checked_options(1, 4096, 1.0) == (1, 4096, 1.0)
    for threads, batch in ((0, 32), (1, 0), (1, 4097), (2**16 + 1, 1)):
        with pytest.raises(ValueError):
            classifier_module.checked_options(threads, batch, None)


def test_the_card_describes_the_model_and_its_provenance(clf):
    card = clf.card()
    meta = clf.info.metadata
    assert card["classes"] == ["glioma", "meningioma", "notumor", "pituitary"] and card["negative_class"] == "notumor"
    assert card["input"] == {
        "size": 160,
        "channels": 1,
        "mean": clf.info.mean,
        "std": clf.info.std,
        "resize": meta["resize"],
        "crop": "brain",
    }
    assert card["tumor_threshold"] == clf.tumor_threshold and card["precision"] == meta.get("precision", "unknown")
    assert (
        card["exported_with"] == json.loads(meta["exported_with"])
        and card["version"] == card["exported_with"]["tumor_kit"]
    )
    assert card["trained_with"] == json.loads(meta["trained_with"]) and card["arch"] == clf.info.arch
    assert card["out_of_distribution"]["thresholds"] == {
        "features": clf.info.ood.features.threshold,
        "image": clf.info.ood.image.threshold,
    }
    assert card["out_of_distribution"]["flag"] == "ood_score >= 1"
    assert card["heatmaps"] is True and card["backend"] == "onnxruntime" and len(card["sha256"]) == 64
    assert card["path"] == str(clf.path)


def test_a_foreign_model_card_has_no_version_and_no_score(tmp_path):
    from tests.helpers.onnx_fakes import tiny_model

    card = Classifier.load(tiny_model(tmp_path / "m.onnx"), threads=1).card()
    assert card["version"] is None and card["out_of_distribution"] is None and card["heatmaps"] is False
    assert card["precision"] == "fp32" and "calibration" not in card


def test_a_threshold_given_overrides_the_models(clf):
    assert Classifier.load(threads=1, tumor_threshold=0.9).tumor_threshold == 0.9
    assert clf.tumor_threshold == clf.info.tumor_threshold


class CountingSession:
    """Wraps a session and records the batch size of every call."""

    def __init__(self, session):
        self.session, self.sizes = session, []

    def run(self, names, feeds):
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_large_batches_run_the_model_in_slices_of_64(clf):
    gray = np.random.default_rng(0).integers(0, 256, (130, 160, 160), dtype=np.uint8)
    whole = clf.probabilities(gray)
    counting = CountingSession(clf.session)
    sliced = Classifier(counting, clf.info, threads=1, batch_size=32)
    assert counting.sizes == [1]  # the load-time check of the out-of-distribution record, on one image
    counting.sizes.clear()
    np.testing.assert_allclose(sliced.probabilities(gray), whole, rtol=0, atol=ACROSS_BATCHES)
    assert counting.sizes == [64, 64, 2] and classifier_module.SESSION_BATCH == 64


def test_records_carry_every_column_and_errors_carry_none(clf):
    rec = clf.predict(FILES[0])[0]
    probs = np.array([rec["probabilities"][c] for c in clf.info.classes])
    assert rec["path"] == str(FILES[0]) and rec["label"] == clf.info.classes[int(probs.argmax())]
    assert rec["confidence"] == pytest.approx(probs.max()) and rec["tumor_probability"] == pytest.approx(1 - probs[2])
    assert rec["tumor"] == (rec["tumor_probability"] >= clf.tumor_threshold) and rec["error"] is None
    assert rec["in_distribution"] == (rec["ood_score"] < 1)
    bad = clf.record("x.jpg", None, "broken", cams=np.zeros(0))
    assert bad == {
        "path": "x.jpg",
        "label": None,
        "confidence": None,
        "probabilities": None,
        "tumor_probability": None,
        "tumor": None,
        "ood_score": None,
        "in_distribution": None,
        "error": "broken",
        "cam": None,
    }
    assert "cam" not in clf.record("x.jpg", None, "broken")


def test_arrays_are_named_by_position_and_a_single_item_is_accepted(clf):
    gray = np.asarray(Image.open(FILES[0]).convert("L"))
    rows = clf.predict([FILES[0], gray, str(FILES[1])])
    assert [r["path"] for r in rows] == [str(FILES[0]), "<array 1>", str(FILES[1])]
    assert_same_probabilities(rows[1], rows[0])
    assert clf.predict(gray)[0]["path"] == "<array 0>" and len(clf.predict(str(FILES[0]))) == 1


def test_inputs_stream_a_few_batches_ahead_not_the_whole_list(tmp_path):
    small = Classifier.load(threads=1, batch_size=2)
    taken = []

    def items():
        for f in FILES:
            taken.append(f)
            yield f

    stream = small.iter_predict(items())
    next(stream)
    assert len(taken) <= 2 * (classifier_module.PREFETCH_BATCHES + 1)  # not all 20
    assert len(list(stream)) == len(FILES) - 1


def test_dicom_frames_and_unreadable_items_get_their_rows(clf, tmp_path):
    pytest.importorskip("pydicom")
    slice_ = np.asarray(Image.open(FILES[0]).convert("L"), np.uint16) * 16
    series = write_dicom(tmp_path / "s.dcm", np.stack([slice_, slice_]), bits_stored=12)
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk")
    rows = clf.predict([series, tmp_path / "bad.dcm", Unreadable(tmp_path / "locked", "cannot read folder")])
    assert [r["path"] for r in rows[:2]] == [f"{series}#1", f"{series}#2"]
    assert rows[0]["dicom"]["instance_number"] == 7 and rows[0]["label"] == rows[1]["label"]
    assert rows[2]["path"] == str(tmp_path / "bad.dcm") and rows[2]["error"]
    assert rows[3] == clf.record(str(tmp_path / "locked"), None, "cannot read folder")
    expanded = list(classifier_module.expand_dicom([Path("a.jpg"), series]))
    assert expanded[0] == Path("a.jpg") and [str(x) for x in expanded[1:]] == [f"{series}#1", f"{series}#2"]


def test_heatmaps_need_the_cam_output_before_any_work(tmp_path):
    from tests.helpers.onnx_fakes import tiny_model

    clf = Classifier.load(tiny_model(tmp_path / "m.onnx"), threads=1)
    with pytest.raises(ModelError) as caught:
        next(clf.iter_predict(iter([]), heatmaps=True))
    assert str(caught.value) == classifier_module.NO_CAM
    with pytest.raises(ModelError):
        clf.probabilities_and_cams(np.zeros((1, 227, 227), np.uint8))


def test_heatmap_rows_carry_the_predicted_class_map_and_the_slice(clf):
    rec = clf.predict([FILES[0]], heatmaps=True)[0]
    probs, cams = clf.probabilities_and_cams(rec["slice"][None])
    best = int(probs[0].argmax())
    from tumor_runtime.inference.heatmap import normalized_cam

    assert np.array_equal(rec["cam"], normalized_cam(cams[0], best, 160)) and rec["slice"].shape == (160, 160)
    assert clf.predict([np.zeros((4, 4), np.uint8)], heatmaps=True)[0]["slice"] is None


def test_the_shipped_model_labels_the_sample_slices_as_their_folders(clf):
    """In-process, end to end (decode, crop, normalise, session, record): a preprocessing or scaling slip that
    still gives finite numbers (an int8 graph turns NaN inputs into a constant answer) shows here."""
    rows = clf.predict(FILES)
    right = sum(r["label"] == f.parent.name for r, f in zip(rows, FILES))
    assert len(FILES) == 20 and right >= 18  # 19 of 20 when this test was written
    assert all(r["in_distribution"] for r in rows) and all(r["error"] is None for r in rows)
    assert len({round(r["confidence"], 6) for r in rows}) > 10  # answers that depend on the slice


def test_the_backend_asked_for_is_the_one_loaded():
    pytest.importorskip("openvino")
    assert Classifier.load(threads=1, backend="openvino").backend == "openvino"


def test_a_model_whose_metadata_has_a_score_but_whose_graph_lost_the_features_is_refused(tmp_path):
    import onnx

    from tumor_runtime.model.manifest import default_model_path

    model = onnx.load(str(default_model_path()))
    kept = [o for o in model.graph.output if o.name != "features"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(tmp_path / "no-features.onnx"))
    with pytest.raises(ModelError) as caught:
        Classifier.load(tmp_path / "no-features.onnx", threads=1)
    assert str(caught.value) == (
        "the model's metadata has an out-of-distribution score but its graph has no 'features' output: export it again"
    )


def test_a_models_temperature_reaches_every_probability_confidence_and_flag(tmp_path):
    """A model whose metadata stores a temperature gives softmax(logits / T) everywhere: probabilities,
    confidence, tumor_probability and the tumor flag agree with each other and with the same model without it."""
    from tests.helpers.onnx_fakes import tiny_model
    from tumor_runtime.core.scoring import calibrated

    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(6)]
    plain = Classifier.load(tiny_model(tmp_path / "plain.onnx", 64, input_size=64), threads=1, verify=False)
    warm = Classifier.load(
        tiny_model(tmp_path / "warm.onnx", 64, input_size=64, temperature="0.25"), threads=1, verify=False
    )
    assert warm.info.temperature == 0.25 and warm.card()["temperature"] == 0.25 and plain.card()["temperature"] == 1
    for before, after in zip(plain.predict(images), warm.predict(images)):
        raw = np.array([before["probabilities"][c] for c in CLASSES])
        expected = calibrated(raw[None], 0.25)[0]
        got = np.array([after["probabilities"][c] for c in CLASSES])
        assert np.allclose(got, expected, atol=1e-6) and after["label"] == before["label"]
        assert after["confidence"] == pytest.approx(float(expected.max()), abs=1e-6)
        assert after["tumor_probability"] == pytest.approx(1 - float(expected[CLASSES.index("notumor")]), abs=1e-6)
        assert after["tumor"] == (after["tumor_probability"] >= warm.tumor_threshold)


@pytest.mark.parametrize("value", ["0", "nan", "100", "-1"])
def test_a_temperature_that_is_no_calibration_is_refused_at_load(tmp_path, value):
    from tests.helpers.onnx_fakes import tiny_model

    with pytest.raises(ModelError, match="temperature"):
        Classifier.load(tiny_model(tmp_path / "m.onnx", 64, input_size=64, temperature=value), threads=1, verify=False)
