"""`runtime/imaging/transform.py`: the brain crop (`brain_box`, `load_gray(crop="brain")`) and its use by training
and the runtime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.helpers.onnx_fakes import tiny_model
from tumor_runtime.imaging.transform import BRAIN_MARGIN, brain_box, load_gray


def head(shape=(224, 224), centre=(112, 112), radii=(60, 40), level=180) -> np.ndarray:
    """A black frame with one bright ellipse (a head seen from above), uint8 (H, W)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    inside = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1
    return np.where(inside, level, 0).astype(np.uint8)


def covers(box, top, bottom, left, right) -> bool:
    return box[0] <= left and box[1] <= top and box[2] >= right + 1 and box[3] >= bottom + 1


def test_blank_and_constant_slices_are_not_cropped():
    assert brain_box(np.zeros((224, 224), np.uint8)) is None
    assert brain_box(np.full((224, 224), 200, np.uint8)) is None  # fills the frame


def test_a_tiny_speck_is_not_a_head():
    img = np.zeros((224, 224), np.uint8)
    img[100:104, 50:54] = 255
    assert brain_box(img) is None


def test_a_head_filling_a_square_frame_keeps_the_frame():
    assert brain_box(head(radii=(115, 115))) is None


def test_box_is_the_square_around_the_head_with_a_margin():
    box = brain_box(head(centre=(100, 130), radii=(60, 40)))
    side = box[2] - box[0]
    assert side == box[3] - box[1]
    assert covers(box, 40, 160, 90, 170)
    # Rows with under 2 % head pixels (the ellipse's very tips) are border: the box may be a few pixels short.
    assert round(115 * (1 + 2 * BRAIN_MARGIN)) <= side <= round(121 * (1 + 2 * BRAIN_MARGIN))
    assert abs((box[0] + box[2]) / 2 - 130.5) <= 1 and abs((box[1] + box[3]) / 2 - 100.5) <= 1


def test_noise_and_specks_in_the_border_are_ignored():
    rng = np.random.default_rng(0)
    img = head(radii=(50, 50)).astype(np.int16) + rng.integers(0, 9, (224, 224))  # JPEG-like noise below 10
    img[5, 5] = img[210, 3] = img[2, 220] = 255  # isolated hot pixels in the corners
    box = brain_box(np.clip(img, 0, 255).astype(np.uint8))
    assert box is not None and covers(box, 62, 162, 62, 162)
    assert box[2] - box[0] <= 101 * (1 + 2 * BRAIN_MARGIN) + 1


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(64, 400),
    w=st.integers(64, 400),
    cy=st.floats(0.3, 0.7),
    cx=st.floats(0.3, 0.7),
    ry=st.floats(0.15, 0.3),
    rx=st.floats(0.15, 0.3),
    level=st.integers(40, 255),
)
def test_any_head_is_inside_a_square_box_not_much_larger(h, w, cy, cx, ry, rx, level):
    img = head((h, w), (int(cy * h), int(cx * w)), (max(8, ry * h), max(8, rx * w)), level)
    rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
    box = brain_box(img)
    if box is None:  # only when the square would be the (square) frame itself
        assert h == w
        return
    side = box[2] - box[0]
    assert side == box[3] - box[1]
    assert covers(box, rows[0], rows[-1], cols[0], cols[-1])
    assert side <= max(rows[-1] - rows[0], cols[-1] - cols[0]) * (1 + 2 * BRAIN_MARGIN) + 3
    out = load_gray(img, 64, "brain")
    assert out.shape == (64, 64) and out.max() > 0


def test_crop_centres_a_head_and_pads_outside_the_frame_with_black():
    img = head((200, 300), centre=(100, 40), radii=(35, 35))  # near the left edge of a wide frame
    out = load_gray(img, 100, "brain")
    lit = np.argwhere(out > 90)
    assert abs(lit[:, 0].mean() - 49.5) < 2 and abs(lit[:, 1].mean() - 49.5) < 2
    assert (lit[:, 1].max() - lit[:, 1].min()) > 80  # the head now spans the input instead of 23 % of it
    plain = load_gray(img, 100)
    assert not np.array_equal(out, plain)


def test_no_crop_is_the_plain_resize():
    img = head((200, 300), centre=(100, 40), radii=(35, 35))
    expected = np.asarray(Image.fromarray(img).resize((100, 100), Image.BILINEAR))
    assert np.array_equal(load_gray(img, 100), expected)
    with pytest.raises(ValueError, match="unknown crop"):
        load_gray(img, 100, "skull")


def test_training_cache_and_runtime_see_the_same_cropped_pixels(tmp_path):
    from tumor_runtime.inference.classifier import Classifier
    from tumor_train.data import decode_images

    paths = []
    for i, centre in enumerate([(60, 60), (120, 90), (100, 150)]):
        path = tmp_path / f"slice{i}.jpg"
        Image.fromarray(head((200, 240), centre, (40, 30))).save(path, quality=92)
        paths.append(path)
    cached = decode_images(paths, np.zeros(3, np.int64), 96, crop="brain").images
    clf = Classifier.load(tiny_model(tmp_path / "m.onnx", 96, input_size=96, crop="brain"), threads=1, verify=False)
    seen = np.stack([clf.decode(p)[0] for p in paths])
    assert np.abs(cached.astype(int) - seen.astype(int)).max() <= 1


def test_the_model_metadata_decides_the_crop(tmp_path):
    from tumor_runtime.core.errors import ModelError
    from tumor_runtime.inference.classifier import Classifier

    img = head((224, 224), (60, 60), (30, 30))
    old = Classifier.load(tiny_model(tmp_path / "old.onnx", 64, input_size=64), threads=1, verify=False)
    new = Classifier.load(tiny_model(tmp_path / "new.onnx", 64, input_size=64, crop="brain"), threads=1, verify=False)
    assert old.info.crop == "none" and new.info.crop == "brain"
    assert np.array_equal(old.decode(img)[0], load_gray(img, 64))
    assert np.array_equal(new.decode(img)[0], load_gray(img, 64, "brain"))
    old_p, new_p = (c.predict([img])[0]["probabilities"] for c in (old, new))
    assert old_p != new_p  # the fake model averages the pixels: the crop makes the head larger, so brighter
    assert new.card()["input"]["crop"] == "brain"
    with pytest.raises(ModelError, match="crop 'skull'"):
        Classifier.load(tiny_model(tmp_path / "bad.onnx", 64, input_size=64, crop="skull"), threads=1, verify=False)


@pytest.mark.parametrize("artifact", ["bright border", "corner label", "text line"])
def test_what_is_burned_into_the_frame_does_not_turn_the_crop_off(artifact):
    """A 2-pixel bright frame border, a bright label box in a corner and a line of burned-in text are each a run of
    rows or columns apart from the head: the box is the clean slice's (to a few pixels), not the whole frame."""
    from tests.helpers.datasets import SAMPLES

    clean = np.asarray(Image.open(sorted(SAMPLES.rglob("*.jpg"))[0]).convert("L")).copy()
    expected = brain_box(clean)
    assert expected is not None
    marked = clean.copy()
    if artifact == "bright border":
        marked[:2, :] = marked[-2:, :] = marked[:, :2] = marked[:, -2:] = 255
    elif artifact == "corner label":
        marked[3:15, 3:40] = 255
    else:
        marked[3:7, 10:-10:3] = 255  # a dotted line of "characters" along the top, above the head
    got = brain_box(marked)
    assert got is not None and max(abs(a - b) for a, b in zip(got, expected)) <= 6, (got, expected)
