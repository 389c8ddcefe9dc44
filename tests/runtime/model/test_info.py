"""`runtime/model/info.py`: the metadata a model must declare before the runtime trusts it."""

from __future__ import annotations

import pytest

from tests.helpers.onnx_fakes import metadata
from tumor_runtime.core.errors import ModelError
from tumor_runtime.model.info import ModelInfo

pytestmark = pytest.mark.faults  # the bad-input and fault sweep: pytest -m faults

# ModelInfo and the file checks, one rule at a time (no ONNX Runtime session needed for most).


def test_metadata_gives_every_field_with_defaults_for_the_optional_ones():
    info = ModelInfo.from_metadata(metadata())
    assert (info.classes, info.input_size, info.mean, info.std) == (
        ["glioma", "meningioma", "notumor", "pituitary"],
        227,
        0.2,
        0.2,
    )
    assert (info.negative_class, info.tumor_threshold, info.arch, info.crop, info.ood) == (
        "notumor",
        0.5,
        "fake",
        "none",
        None,
    )
    assert info.metadata == metadata()
    bare = {k: v for k, v in metadata().items() if k != "arch"} | {"crop": "brain"}
    assert ModelInfo.from_metadata(bare).arch == "unknown" and ModelInfo.from_metadata(bare).crop == "brain"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": '["a", "a"]'}, "model metadata lists invalid classes ['a', 'a']"),
        ({"classes": '["a", ""]'}, "model metadata lists invalid classes ['a', '']"),
        ({"classes": '["a", 3]'}, "model metadata lists invalid classes ['a', 3]"),
        ({"classes": '{"a": 1, "b": 2}'}, "model metadata lists invalid classes {'a': 1, 'b': 2}"),
        ({"input_size": 4097}, "model metadata input_size 4097 is not in 1..4096"),
        (
            {"negative_class": "healthy"},
            "model metadata negative_class 'healthy' is not one of its classes "
            "['glioma', 'meningioma', 'notumor', 'pituitary']: the tumor columns could not be computed",
        ),
        (
            {"crop": "skull"},
            "model metadata asks for crop 'skull', which this runtime does not know (none, brain): upgrade tumor-kit",
        ),
        ({"mean": 1.5}, "model metadata mean 1.5 / std 0.2 is invalid"),
        ({"mean": -0.1}, "model metadata mean -0.1 / std 0.2 is invalid"),
        ({"std": 1.5}, "model metadata mean 0.2 / std 1.5 is invalid"),
        ({"std": "inf"}, "model metadata mean 0.2 / std inf is invalid"),
        ({"tumor_threshold": 1.5}, "model metadata tumor_threshold must be a finite number in [0.0, 1.0], got 1.5"),
        (
            {"input_size": "x"},
            "model metadata is incomplete (invalid literal for int() with base 10: 'x'); export it with tumor-export",
        ),
        ({"ood": "{}"}, "model metadata: "),
    ],
)
def test_each_metadata_rule_refuses_with_its_own_message(change, message):
    with pytest.raises(ModelError) as caught:
        ModelInfo.from_metadata(metadata(**change))
    assert str(caught.value).startswith(message)


def test_the_bounds_themselves_are_accepted():
    info = ModelInfo.from_metadata(
        metadata(input_size=4096, mean=0, std=1, tumor_threshold=1, classes='["a", "notumor"]')
    )
    assert (info.input_size, info.mean, info.std, info.tumor_threshold) == (4096, 0.0, 1.0, 1.0)
    assert ModelInfo.from_metadata(metadata(input_size=1, mean=1, tumor_threshold=0)).input_size == 1


def test_a_missing_key_names_it():
    meta = metadata()
    del meta["std"]
    with pytest.raises(ModelError, match=r"^model metadata is incomplete \('std'\); export it with tumor-export$"):
        ModelInfo.from_metadata(meta)


def test_metadata_values_are_json_where_they_parse():
    from tumor_runtime.model.info import metadata_json

    assert metadata_json('{"a": 1}') == {"a": 1}
    assert metadata_json("plain text") == "plain text"
    assert metadata_json("[" * 100000) == "[" * 100000
