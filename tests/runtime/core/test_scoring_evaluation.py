"""`runtime/core/scoring.py`: scoring classifier records against labels, by hand-checked examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tumor_runtime.core import scoring
from tumor_runtime.core.scoring import evaluate_records

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def row(label: str | None, p_tumor: float | None = None, error: str | None = None, inside: bool | None = True):
    return {"label": label, "tumor_probability": p_tumor, "error": error, "in_distribution": inside}


def test_errors_are_counted_and_left_out_and_flagged_rows_are_counted_and_scored():
    records = [
        row("glioma", 0.9),
        row(None, error="corrupt"),
        row("notumor", 0.1, inside=False),
        row("pituitary", 0.8),
        row("meningioma", 0.7),
    ]
    labels = [0, 1, 2, 3, 2]
    result = evaluate_records(records, labels, CLASSES, threshold=0.5)
    assert result["n_errors"] == 1 and result["n_out_of_distribution"] == 1
    assert result["n_images"] == 4  # the error row is not scored
    # scored pairs (true, pred): (0,0) (2,2) (3,3) (2,1): one notumor slice called meningioma
    assert result["confusion_matrix"] == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    assert result["accuracy"] == pytest.approx(3 / 4)
    assert result["tumor_sensitivity"] == 1.0  # both tumor slices called a tumor class
    # flag at 0.5: tumors (0.9, 0.8) both flagged; non-tumors (0.1, 0.7): one false alarm
    assert result["screening"] == {"threshold": 0.5, "sensitivity": 1.0, "false_alarm_rate": 0.5}
    assert result["classes"] == CLASSES


def test_the_flag_uses_the_threshold_given_and_defaults_to_the_maximum():
    records = [row("glioma", 0.6), row("glioma", 0.4), row("notumor", 0.3)]
    labels = [0, 0, 2]
    assert evaluate_records(records, labels, CLASSES, threshold=0.5)["screening"]["sensitivity"] == 0.5
    assert evaluate_records(records, labels, CLASSES, threshold=0.35)["screening"] == {
        "threshold": 0.35,
        "sensitivity": 1.0,
        "false_alarm_rate": 0.0,
    }
    default = evaluate_records(records, labels, CLASSES)["screening"]
    assert default["threshold"] == scoring.MAX_THRESHOLD
    assert default["sensitivity"] == (0.6 >= scoring.MAX_THRESHOLD) * 0.5 + (0.4 >= scoring.MAX_THRESHOLD) * 0.5


def test_classes_map_by_name_and_without_a_negative_class_there_is_no_screening():
    classes = ["cat", "dog"]
    result = evaluate_records([row("dog"), row("cat"), row("dog")], [1, 0, 0], classes, negative="none")
    assert result["confusion_matrix"] == [[1, 1], [0, 1]] and "screening" not in result
    assert result["tumor_sensitivity"] is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans(), st.floats(0, 1)), min_size=1, max_size=40)
)
def test_figures_match_an_independent_count(cases):
    """Random records: F2 and accuracy against scikit-learn on the rows without an error; counts exact."""
    metrics = pytest.importorskip("sklearn.metrics")
    records = [row(None, error="bad") if failed else row(CLASSES[pred], p) for _, pred, failed, p in cases]
    labels = [true for true, *_ in cases]
    result = evaluate_records(records, labels, CLASSES, threshold=0.5)
    kept = [(true, pred, p) for true, pred, failed, p in cases if not failed]
    assert result["n_errors"] == len(cases) - len(kept) and result["n_images"] == len(kept)
    if not kept:
        return
    y_true, y_pred = [k[0] for k in kept], [k[1] for k in kept]
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert result["f2_macro"] == pytest.approx(
        metrics.fbeta_score(y_true, y_pred, beta=2, average="macro", zero_division=0)
    )
    assert result["f2_weighted"] == pytest.approx(
        metrics.fbeta_score(y_true, y_pred, beta=2, average="weighted", zero_division=0)
    )
    tumors = [p for true, _, p in kept if true != 2]
    if tumors:
        assert result["screening"]["sensitivity"] == pytest.approx(np.mean([p >= 0.5 for p in tumors]))
