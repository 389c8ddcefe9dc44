"""The argument checks every command and the Python API share: bounds, open bounds, messages."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tumor_runtime.core.errors import OptionError
from tumor_runtime.core.options import finite_in_range, int_in_range


def test_finite_in_range_accepts_both_closed_bounds_and_returns_a_float():
    assert finite_in_range("x", 0, 0.0, 1.0) == 0.0
    assert finite_in_range("x", 1, 0.0, 1.0) == 1.0
    assert isinstance(finite_in_range("x", "0.25", 0.0, 1.0), float)
    assert finite_in_range("x", -1e300) == -1e300  # no bounds: only finiteness is checked


def test_an_open_lower_bound_refuses_the_bound_itself_and_names_it_with_a_parenthesis():
    assert finite_in_range("lr", 1e-12, 0.0, 1.0, low_open=True) == 1e-12
    with pytest.raises(OptionError) as caught:
        finite_in_range("lr", 0.0, 0.0, 1.0, low_open=True)
    assert str(caught.value) == "lr must be a finite number in (0.0, 1.0], got 0.0"


@pytest.mark.parametrize(
    "value, low, high, bounds",
    [
        (1.5, 0.0, 1.0, "[0.0, 1.0]"),
        (-0.1, 0.0, 1.0, "[0.0, 1.0]"),
        (-0.1, 0.0, None, "[0.0, inf]"),
        (2.0, None, 1.0, "[-inf, 1.0]"),
        (float("nan"), None, None, "[-inf, inf]"),
        (float("inf"), 0.0, None, "[0.0, inf]"),
    ],
)
def test_out_of_range_messages_give_the_name_the_interval_and_the_value(value, low, high, bounds):
    with pytest.raises(OptionError) as caught:
        finite_in_range("--tumor-threshold", value, low, high)
    assert str(caught.value) == f"--tumor-threshold must be a finite number in {bounds}, got {value!r}"


@pytest.mark.parametrize("value", ["abc", None, [1.0], object])
def test_a_value_that_is_not_a_number_says_so(value):
    with pytest.raises(OptionError) as caught:
        finite_in_range("threshold", value, 0.0, 1.0)
    assert str(caught.value) == f"threshold must be a number, got {value!r}"


@given(st.floats(allow_nan=True, allow_infinity=True), st.booleans())
def test_finite_in_range_returns_exactly_the_values_inside(value, low_open):
    inside = math.isfinite(value) and (value > 0.0 if low_open else value >= 0.0) and value <= 1.0
    if inside:
        assert finite_in_range("x", value, 0.0, 1.0, low_open) == value
    else:
        with pytest.raises(OptionError):
            finite_in_range("x", value, 0.0, 1.0, low_open)


def test_int_in_range_accepts_both_bounds():
    assert int_in_range("batch_size", 1, 1, 4096) == 1
    assert int_in_range("batch_size", 4096, 1, 4096) == 4096


@pytest.mark.parametrize("value", [0, 4097, True, 2.0, "8", None])
def test_int_in_range_refuses_outside_values_bools_and_non_integers(value):
    with pytest.raises(OptionError) as caught:
        int_in_range("batch_size", value, 1, 4096)
    assert str(caught.value) == f"batch_size must be an integer in [1, 4096], got {value!r}"
