"""Comparing result rows across batch sizes and machines, with stated tolerances."""

from __future__ import annotations

import numpy as np

# Probabilities of one image computed in batches of other sizes or other company: CPUs pick other kernels by
# batch size (batch 1 and 64 differ in the last bits on an AVX2-only EPYC), and an int8 activation can then round
# to the neighbouring step. Equal to this, never bit for bit; a wrong image or order moves them by far more.
ACROSS_BATCHES = 1e-4


def probability_table(records) -> np.ndarray:
    """(rows, classes) of the records' probabilities, classes in the order of the first record."""
    classes = list(records[0]["probabilities"])
    return np.array([[r["probabilities"][c] for c in classes] for r in records])


def assert_same_probabilities(got, expected, atol: float = ACROSS_BATCHES) -> None:
    """Records (or single records) with the same classes and probabilities within `atol`."""
    got, expected = (list(x) if isinstance(x, (list, tuple)) else [x] for x in (got, expected))
    assert [list(r["probabilities"]) for r in got] == [list(r["probabilities"]) for r in expected]
    np.testing.assert_allclose(probability_table(got), probability_table(expected), rtol=0, atol=atol)


def assert_same_rows(got, expected, atol: float = ACROSS_BATCHES) -> None:
    """Result rows (dicts, or CSV text) equal field by field, numbers within `atol`: the rows of one input
    set run in other batches (Ray actors, the server's batcher) are the same rows, not the same bits."""
    if isinstance(got, str):
        import csv
        import io

        got, expected = (list(csv.reader(io.StringIO(text))) for text in (got, expected))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_same_value(a, b, atol)


def assert_same_value(a, b, atol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_value(a[key], b[key], atol)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_value(x, y, atol)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= atol * max(1.0, abs(b)), (a, b)
    elif isinstance(a, str) and isinstance(b, str) and a != b:
        assert abs(float(a) - float(b)) <= atol * max(1.0, abs(float(b))), (a, b)  # a CSV number cell
    else:
        assert a == b
