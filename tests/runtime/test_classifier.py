"""`runtime/classifier.py`: the Python API's argument checks and results."""

from __future__ import annotations

import pytest

from tumor_runtime.classifier import Classifier

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults


@pytest.mark.parametrize("value", [float("nan"), 2.0, -0.5, float("inf")])
def test_02_api_threshold_must_be_finite_and_in_range(int8, value):
    with pytest.raises(ValueError):
        Classifier.load(int8, tumor_threshold=value)
