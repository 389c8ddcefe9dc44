"""`runtime/core/scoring.py`: P(tumor), the flag, its threshold and the screening statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tumor_runtime.core import scoring

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def test_tumor_sensitivity_counts_missed_tumors():
    cm = np.array([[8, 1, 1, 0], [0, 9, 1, 0], [0, 0, 10, 0], [0, 0, 2, 8]])  # 4 tumors called notumor of 30
    assert scoring.tumor_sensitivity(cm, CLASSES) == pytest.approx(26 / 30)
    assert scoring.tumor_sensitivity(cm, ["a", "b", "c", "d"]) is None
    assert scoring.tumor_sensitivity(np.zeros((4, 4), int), CLASSES) is None
    # a tumor called another tumor class still counts as caught
    assert scoring.tumor_sensitivity(np.array([[0, 5, 0, 0], [0] * 4, [0] * 4, [0] * 4]), CLASSES) == 1.0


def test_tumor_probability_and_flag():
    probs = np.array([[0.1, 0.2, 0.6, 0.1], [0.3, 0.3, 0.1, 0.3]])
    np.testing.assert_allclose(scoring.tumor_probability(probs, CLASSES), [0.4, 0.9])
    assert scoring.tumor_probability(probs, ["a", "b", "c", "d"]) is None
    assert scoring.flag(scoring.tumor_probability(probs, CLASSES), 0.4).tolist() == [True, True]
    assert scoring.flag(scoring.tumor_probability(probs, CLASSES), 0.41).tolist() == [False, True]


def test_screening_stats():
    p = np.array([0.9, 0.2, 0.6, 0.4, 0.7])
    is_tumor = np.array([True, True, True, False, False])
    stats = scoring.screening_stats(p, is_tumor, 0.5)
    assert stats == {"threshold": 0.5, "sensitivity": pytest.approx(2 / 3), "false_alarm_rate": 0.5}
    assert scoring.screening_stats(p[:1], is_tumor[:1], 0.5)["false_alarm_rate"] is None


@given(st.lists(st.floats(0, 1), min_size=1, max_size=300), st.data())
def test_threshold_is_the_highest_that_keeps_sensitivity(scores, data):
    is_tumor = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores))))
    scores = np.array(scores)
    t = scoring.choose_threshold(scores, is_tumor)
    assert 0 <= t <= scoring.MAX_THRESHOLD
    if is_tumor.any():
        tumor_scores = scores[is_tumor]
        if t < scoring.MAX_THRESHOLD:
            assert (tumor_scores >= t).mean() >= scoring.TARGET_SENSITIVITY
            higher = tumor_scores[tumor_scores > t]
            if len(higher):  # any higher threshold would miss too many
                assert (tumor_scores >= higher.min()).mean() < scoring.TARGET_SENSITIVITY
    else:
        assert t == scoring.MAX_THRESHOLD


def test_threshold_counts_allowed_misses_exactly():
    scores = np.linspace(0.001, 0.999, 1000)
    assert scoring.choose_threshold(scores, np.ones(1000, int)) == pytest.approx(min(scores[5], 0.5))  # 5 misses
    assert scoring.choose_threshold(np.linspace(0.01, 0.1, 10), np.ones(10, int), target=0.9) == pytest.approx(0.02)
    labels = np.array([1, 0, 1, 1])  # integers, not booleans
    assert scoring.choose_threshold(np.array([0.3, 0.01, 0.4, 0.45]), labels) == pytest.approx(0.3)
    stats = scoring.screening_stats(np.array([0.9, 0.1, 0.2]), np.array([1, 0, 1]), 0.5)
    assert stats["sensitivity"] == 0.5 and stats["false_alarm_rate"] == 0.0
    assert scoring.screening_stats(np.array([0.9]), np.array([0]), 0.5)["sensitivity"] is None
    assert scoring.tumor_probability(np.array([[0.25, 0.25, 0.5, 0.0]], np.float32), CLASSES).dtype == np.float64


@pytest.mark.parametrize("alarms, warned", [(None, False), (0.0, False), (0.25, False), (0.26, True), (0.96, True)])
def test_a_flag_raised_on_most_no_tumor_slices_is_warned_about(alarms, warned):
    stats = {"threshold": 0.0017, "sensitivity": 1.0, "false_alarm_rate": alarms}
    warning = scoring.threshold_warning(stats)
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith(f"Warning: at tumor threshold 0.0017 the flag is raised on {alarms:.0%}")
