"""The calibration sample: reproducible, never the evaluation images, fed in equal batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.helpers.datasets import make_dataset
from tumor_export.calibration import (
    ArrayReader,
    CalibrationError,
    batch_size_for,
    load_inputs,
    load_slices,
    sample_files,
)
from tumor_runtime.imaging.transform import load_gray, normalize


def test_the_sample_is_seeded_sorted_and_leaves_out_excluded_files(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=5)
    every = sorted(data.rglob("*.jpg"))
    first = sample_files(data, 7, seed=1)
    assert first == sample_files(data, 7, seed=1) and first == sorted(first) and len(set(first)) == 7
    assert first != sample_files(data, 7, seed=2)
    assert sample_files(data, 100, seed=0) == every  # asking for more than there are gives them all
    excluded = {p.resolve() for p in every[:15]}
    assert sample_files(data, 100, seed=0, exclude=excluded) == every[15:]


def test_a_folder_of_only_evaluation_images_or_no_images_is_refused(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    with pytest.raises(CalibrationError) as caught:
        sample_files(data, 4, 0, exclude={p.resolve() for p in data.rglob("*.jpg")})
    assert str(caught.value) == (
        f"every image under {data} is an evaluation image, and calibrating on the images that "
        "judge the int8 model would flatter it: pass a --calibration folder other than --eval "
        "(for example the training images)"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError) as caught:
        sample_files(tmp_path / "empty", 4, 0)
    assert str(caught.value) == (
        f"no calibration images (.jpg .png .bmp .tif .dcm) under {tmp_path / 'empty'}; pass --calibration DIR"
    )


def test_load_inputs_are_the_runtime_transform_and_skip_unreadable_files(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    files = sorted(data.rglob("*.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff junk")
    x = load_inputs([files[0], tmp_path / "broken.jpg", files[1]], 40, 0.3, 0.2, "brain")
    expected = normalize(np.stack([load_gray(f, 40, "brain") for f in files[:2]]), 0.3, 0.2)
    assert x.dtype == np.float32 and x.shape == (2, 1, 40, 40) and np.array_equal(x, expected)
    framed = np.zeros((128, 128), np.uint8)
    framed[40:90, 30:100] = np.random.default_rng(0).integers(60, 250, (50, 70))  # a head inside a black border
    Image.fromarray(framed).save(tmp_path / "framed.png")
    cropped, whole = (load_inputs([tmp_path / "framed.png"], 40, 0.3, 0.2, crop) for crop in ("brain", "none"))
    assert np.array_equal(cropped[0, 0], normalize(load_gray(tmp_path / "framed.png", 40, "brain"), 0.3, 0.2)[0])
    assert not np.array_equal(cropped, whole)  # the crop is honoured
    assert load_inputs([tmp_path / "broken.jpg"], 40, 0.3, 0.2, "none").shape == (0, 1, 40, 40)
    nothing = load_slices([tmp_path / "broken.jpg"], 40, "none")  # still the slices' type: uint8 (0, S, S)
    assert nothing.dtype == np.uint8 and nothing.shape == (0, 40, 40)


@given(st.integers(0, 500), st.integers(1, 64))
def test_the_batch_size_divides_the_count_and_is_the_largest_that_does(count, largest):
    b = batch_size_for(count, largest)
    assert 1 <= b <= max(1, min(largest, count)) and count % b == 0
    assert not any(count % c == 0 for c in range(b + 1, min(largest, count) + 1))


def test_the_default_largest_batch_is_16():
    assert batch_size_for(48) == 16 and batch_size_for(45) == 15 and batch_size_for(17) == 1


def test_the_reader_feeds_equal_batches_by_name_and_rewinds():
    inputs = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1)
    reader = ArrayReader(inputs, "image")
    assert reader.batch_size == 12
    reader = ArrayReader(inputs, "image", batch_size=5)
    batches = [reader.get_next() for _ in range(4)]
    assert [list(b) for b in batches[:3]] == [["image"]] * 3 and batches[3] is None
    assert [b["image"].ravel().tolist() for b in batches[:3]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    reader.rewind()
    assert reader.get_next()["image"].ravel().tolist() == [0, 1, 2, 3, 4]
    exact = ArrayReader(inputs[:10], "image", batch_size=5)  # a count the batch divides: no empty third batch
    assert [exact.get_next() is None for _ in range(3)] == [False, False, True]
    with pytest.raises(CalibrationError, match="^none of the calibration images could be read$"):
        ArrayReader(inputs[:0], "image")
