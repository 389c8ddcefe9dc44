"""`runtime/core/scoring.py`: F-beta, macro and weighted scores against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tumor_runtime.core.scoring import confusion_matrix, per_class_scores, summarize

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]

labels = st.lists(st.integers(0, 3), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_metrics_match_scikit_learn(data):
    sklearn = pytest.importorskip("sklearn.metrics")
    y_true = data.draw(labels)
    y_pred = data.draw(st.lists(st.integers(0, 3), min_size=len(y_true), max_size=len(y_true)))
    got = summarize(y_true, y_pred, CLASSES)
    assert got["f2_macro"] == pytest.approx(
        sklearn.fbeta_score(y_true, y_pred, beta=2, average="macro", zero_division=0)
    )
    assert got["f2_weighted"] == pytest.approx(
        sklearn.fbeta_score(y_true, y_pred, beta=2, average="weighted", zero_division=0)
    )
    assert got["accuracy"] == pytest.approx(sklearn.accuracy_score(y_true, y_pred))
    assert got["confusion_matrix"] == sklearn.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    precision, recall, f2, support = sklearn.precision_recall_fscore_support(
        y_true, y_pred, beta=2, labels=range(4), zero_division=0
    )
    for i, name in enumerate(CLASSES):
        row = got["per_class"][name]
        assert (row["precision"], row["recall"], row["f2"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f2[i], support[i])
        )
    tumor_true = [t != 2 for t in y_true]
    caught = [p != 2 for p, t in zip(y_pred, tumor_true) if t]
    expected = sklearn.recall_score(tumor_true, [p != 2 for p in y_pred], zero_division=0) if caught else None
    assert got["tumor_sensitivity"] == (pytest.approx(expected) if caught else None)


@given(st.floats(0.5, 3.0), st.data())
def test_fbeta_follows_beta(beta, data):
    sklearn = pytest.importorskip("sklearn.metrics")
    y_true = data.draw(labels)
    y_pred = data.draw(st.lists(st.integers(0, 3), min_size=len(y_true), max_size=len(y_true)))
    got = per_class_scores(confusion_matrix(y_true, y_pred, 4), beta)["fbeta"]
    want = sklearn.fbeta_score(y_true, y_pred, beta=beta, labels=range(4), average=None, zero_division=0)
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_macro_counts_classes_only_predicted():
    # glioma never occurs but is predicted once: scikit-learn's macro average includes its 0.
    got = summarize([1, 1, 2, 2], [0, 1, 2, 2], CLASSES)
    assert got["f2_macro"] == pytest.approx((0 + (1 + 4) * 1 * 0.5 / (4 * 1 + 0.5) + 1) / 3)


def test_summary_of_nothing():
    got = summarize([], [], CLASSES)
    assert got["n_images"] == 0 and got["accuracy"] == 0.0 and got["f2_macro"] == 0.0 and got["f2_weighted"] == 0.0


def test_metrics_match_scikit_learn_on_random_labels():
    sklearn = pytest.importorskip("sklearn.metrics")
    from tumor_runtime.core.scoring import summarize

    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
        agree = rng.random(50) < 0.5
        y_pred[agree] = y_true[agree]
        got = summarize(y_true, y_pred, ["a", "b", "notumor", "d"])
        assert got["f2_macro"] == pytest.approx(
            sklearn.fbeta_score(y_true, y_pred, beta=2, average="macro", zero_division=0)
        )
        assert got["f2_weighted"] == pytest.approx(
            sklearn.fbeta_score(y_true, y_pred, beta=2, average="weighted", zero_division=0)
        )


def test_calibrated_probabilities_are_the_softmax_of_the_logits_over_the_temperature():
    from tumor_runtime.core.scoring import calibrated

    logits = np.random.default_rng(1).normal(0, 4, (50, 4))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for t in (0.5, 1.7, 3.0):
        q = np.exp(logits / t - (logits / t).max(1, keepdims=True))
        assert np.allclose(calibrated(p, t), q / q.sum(1, keepdims=True), atol=1e-6)
    assert np.array_equal(calibrated(p, 1.0), p.astype(np.float32))  # no temperature: the model's own


def test_expected_calibration_error_by_hand():
    from tumor_runtime.core.scoring import expected_calibration_error

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    # bin of 0.9: confidence 0.9, accuracy 0.5 (one right); bin of 0.6: confidence 0.6, accuracy 1.0
    assert expected_calibration_error(probs, np.array([0, 1, 0, 0])) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_the_fitted_temperature_recovers_the_one_that_made_the_labels():
    """Labels drawn from softmax(logits / 2): the fit finds about 2, and the calibration error falls."""
    from tumor_runtime.core.scoring import calibrated, expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 4))
    truth = np.exp(logits / 2 - (logits / 2).max(1, keepdims=True))
    truth /= truth.sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in truth])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = fit_temperature(p, labels)
    assert 1.8 < t < 2.2
    assert expected_calibration_error(calibrated(p, t), labels) < expected_calibration_error(p, labels) / 4
