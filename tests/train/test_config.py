"""TrainConfig: the one declaration of every knob's range, and what `check` refuses."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tumor_runtime.core.errors import OptionError
from tumor_train.config import TrainConfig


def test_defaults_pass_and_every_numeric_field_has_one_range():
    TrainConfig().check()
    numeric = {f.name for f in fields(TrainConfig) if f.type in ("int", "float")}
    assert numeric == set(TrainConfig.INT_RANGES) | set(TrainConfig.FLOAT_RANGES) | {"seed"}
    assert not set(TrainConfig.INT_RANGES) & set(TrainConfig.FLOAT_RANGES)


@pytest.mark.parametrize("name", sorted(TrainConfig.INT_RANGES))
def test_each_integer_range_holds_at_both_ends(name):
    low, high = TrainConfig.INT_RANGES[name]
    TrainConfig(**{name: low}).check()
    TrainConfig(**{name: high}).check()
    for bad in (low - 1, high + 1):
        with pytest.raises(OptionError) as caught:
            TrainConfig(**{name: bad}).check()
        assert str(caught.value) == f"{name} must be an integer in [{low}, {high}], got {bad}"


@pytest.mark.parametrize("name", sorted(TrainConfig.FLOAT_RANGES))
def test_each_float_range_holds_at_its_ends_and_refuses_nan(name):
    low, high, low_open = TrainConfig.FLOAT_RANGES[name]
    TrainConfig(**{name: high}).check()
    if low_open:
        TrainConfig(**{name: math.nextafter(low, math.inf)}).check()
    else:
        TrainConfig(**{name: low}).check()
    for bad in ([low] if low_open else []) + [math.nextafter(low, -math.inf), math.nextafter(high, math.inf), math.nan]:
        with pytest.raises(OptionError, match=f"^{name} must be a finite number in "):
            TrainConfig(**{name: bad}).check()


def test_the_declared_ranges_are_the_documented_ones():
    assert TrainConfig.INT_RANGES["width"] == (4, 4096) and TrainConfig.INT_RANGES["image_size"] == (32, 1024)
    assert TrainConfig.FLOAT_RANGES["lr"] == (0.0, 10.0, True)
    assert TrainConfig.FLOAT_RANGES["distill_temperature"] == (0.0, 100.0, True)
    assert TrainConfig.FLOAT_RANGES["val_fraction"] == (0.0, 0.9, False)


def test_an_unknown_crop_is_named():
    with pytest.raises(OptionError) as caught:
        TrainConfig(crop="skull").check()
    assert str(caught.value) == "crop must be one of none, brain, not 'skull'"
    TrainConfig(crop="none").check()


@given(st.dictionaries(st.text(max_size=12), st.integers()))
def test_known_keeps_exactly_the_fields(options):
    names = {f.name for f in fields(TrainConfig)}
    kept = TrainConfig.known(options | {"epochs": 3})
    assert kept == {k: v for k, v in (options | {"epochs": 3}).items() if k in names}


def test_every_config_field_a_message_names_is_an_option_of_tumor_train():
    """Resume and --cv conflicts name the option to change: each config field's flag exists (--size, not
    --image-size; --teacher, not --teachers), and the fields no option sets are said to be fields."""
    from tumor_train.cli import main
    from tumor_train.config import NO_OPTION, flag

    options = {opt for param in main.params for opt in param.opts}
    without = {f for f in TrainConfig.__dataclass_fields__ if flag(f) not in options}
    assert without == NO_OPTION
    assert flag("image_size") == "--size" and flag("teachers") == "--teacher" and flag("lr") == "--lr"
    assert flag("dropout") == "dropout (in train/config.py)"
