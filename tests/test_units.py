"""Unit tests of the pure parts: metrics and tumor decisions, the gate search, the grouped split,
the grayscale conversion. Fast, and aimed at the bugs a review planted (issue #10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tumor_export.gate import Scored, search
from tumor_runtime import tumor
from tumor_runtime.metrics import confusion_matrix, per_class_scores, summarize
from tumor_runtime.preprocess import load_gray, rescale_to_8bit, to_gray

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
labels = st.lists(st.integers(0, 3), min_size=1, max_size=60)


# Metrics against scikit-learn ---------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.data())
def test_metrics_match_scikit_learn(data):
    sklearn = pytest.importorskip("sklearn.metrics")
    y_true = data.draw(labels)
    y_pred = data.draw(st.lists(st.integers(0, 3), min_size=len(y_true), max_size=len(y_true)))
    got = summarize(y_true, y_pred, CLASSES)
    assert got["f2_macro"] == pytest.approx(sklearn.fbeta_score(y_true, y_pred, beta=2, average="macro",
                                                                zero_division=0))
    assert got["f2_weighted"] == pytest.approx(sklearn.fbeta_score(y_true, y_pred, beta=2, average="weighted",
                                                                   zero_division=0))
    assert got["accuracy"] == pytest.approx(sklearn.accuracy_score(y_true, y_pred))
    assert got["confusion_matrix"] == sklearn.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    precision, recall, f2, support = sklearn.precision_recall_fscore_support(
        y_true, y_pred, beta=2, labels=range(4), zero_division=0)
    for i, name in enumerate(CLASSES):
        row = got["per_class"][name]
        assert (row["precision"], row["recall"], row["f2"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f2[i], support[i]))
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


def test_tumor_sensitivity_counts_missed_tumors():
    cm = np.array([[8, 1, 1, 0], [0, 9, 1, 0], [0, 0, 10, 0], [0, 0, 2, 8]])  # 4 tumors called notumor of 30
    assert tumor.tumor_sensitivity(cm, CLASSES) == pytest.approx(26 / 30)
    assert tumor.tumor_sensitivity(cm, ["a", "b", "c", "d"]) is None
    assert tumor.tumor_sensitivity(np.zeros((4, 4), int), CLASSES) is None
    # a tumor called another tumor class still counts as caught
    assert tumor.tumor_sensitivity(np.array([[0, 5, 0, 0], [0] * 4, [0] * 4, [0] * 4]), CLASSES) == 1.0


def test_tumor_probability_and_flag():
    probs = np.array([[0.1, 0.2, 0.6, 0.1], [0.3, 0.3, 0.1, 0.3]])
    np.testing.assert_allclose(tumor.tumor_probability(probs, CLASSES), [0.4, 0.9])
    assert tumor.tumor_probability(probs, ["a", "b", "c", "d"]) is None
    assert tumor.flag(tumor.tumor_probability(probs, CLASSES), 0.4).tolist() == [True, True]
    assert tumor.flag(tumor.tumor_probability(probs, CLASSES), 0.41).tolist() == [False, True]


def test_screening_stats():
    p = np.array([0.9, 0.2, 0.6, 0.4, 0.7])
    is_tumor = np.array([True, True, True, False, False])
    stats = tumor.screening_stats(p, is_tumor, 0.5)
    assert stats == {"threshold": 0.5, "sensitivity": pytest.approx(2 / 3), "false_alarm_rate": 0.5}
    assert tumor.screening_stats(p[:1], is_tumor[:1], 0.5)["false_alarm_rate"] is None


@given(st.lists(st.floats(0, 1), min_size=1, max_size=300), st.data())
def test_threshold_is_the_highest_that_keeps_sensitivity(scores, data):
    is_tumor = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores))))
    scores = np.array(scores)
    t = tumor.choose_threshold(scores, is_tumor)
    assert 0 <= t <= tumor.MAX_THRESHOLD
    if is_tumor.any():
        tumor_scores = scores[is_tumor]
        if t < tumor.MAX_THRESHOLD:
            assert (tumor_scores >= t).mean() >= tumor.TARGET_SENSITIVITY
            higher = tumor_scores[tumor_scores > t]
            if len(higher):  # any higher threshold would miss too many
                assert (tumor_scores >= higher.min()).mean() < tumor.TARGET_SENSITIVITY
    else:
        assert t == tumor.MAX_THRESHOLD


# The gate search with a fake scorer --------------------------------------------------------------

def fake_trial(table: dict[frozenset, float], calls: list):
    def trial(keep: frozenset) -> Scored:
        calls.append(keep)
        return Scored(np.zeros((1, 4)), table.get(keep, 0.80))

    return trial


def test_search_keeps_int8_when_it_is_good_enough():
    calls = []
    best, kept, trials = search(fake_trial({frozenset(): 0.996}, calls), ["a", "b", "c"], 1.0, 0.005)
    assert kept == [] and best.f2 == 0.996 and calls == [frozenset()] and len(trials) == 1


def test_search_picks_the_best_layer_then_stops():
    table = {frozenset(): 0.90, frozenset("a"): 0.93, frozenset("b"): 0.999, frozenset("c"): 0.95}
    calls = []
    best, kept, trials = search(fake_trial(table, calls), ["a", "b", "c"], 1.0, 0.005)
    assert kept == ["b"] and best.f2 == 0.999
    assert calls == [frozenset(), frozenset("a"), frozenset("b"), frozenset("c")]  # every layer tried once
    assert [t["f2"] for t in trials] == [0.90, 0.93, 0.999, 0.95]


def test_search_goes_on_greedily_and_refuses_after_max_float():
    table = {frozenset(): 0.90, frozenset("a"): 0.92, frozenset("b"): 0.91, frozenset("ab"): 0.96,
             frozenset("ac"): 0.94}
    calls = []
    best, kept, _ = search(fake_trial(table, calls), ["a", "b", "c"], 1.0, 0.005, max_float=2)
    assert kept == ["a", "b"] and best.f2 == 0.96  # still short: the caller refuses
    assert frozenset("bc") not in calls  # the second round builds on the first choice
    assert len(calls) == 1 + 3 + 2


def test_search_stops_when_no_candidates_are_left():
    best, kept, _ = search(fake_trial({}, []), ["a"], 1.0, 0.005, max_float=5)
    assert kept == ["a"] and best.f2 == 0.80


def test_gate_leaves_the_chosen_model_on_disk(tmp_path, monkeypatch):
    """quantize_with_gate: the file left behind is the chosen trial's, not the last one tried."""
    import onnx

    import tumor_export.gate as gate
    from tests.onnx_fakes import conv_model
    from tumor_export.calibration import ArrayReader
    from tumor_export.static_int8 import prepare_graph, quantizable_nodes

    prepare_graph(conv_model(tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    nodes = quantizable_nodes(tmp_path / "pre.onnx")
    assert len(nodes) == 3
    wanted = nodes[1]  # not the last candidate: a missing re-quantization would leave the last one

    def float_nodes(path) -> set[str]:
        graph = onnx.load(str(path)).graph
        dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        return {n.name for n in graph.node if n.name in nodes and n.input[1] not in dequantized}

    def fake_score(path, inputs, labels, classes):
        return Scored(np.zeros((1, 4)), 1.0 if float_nodes(path) == {wanted} else 0.5)

    monkeypatch.setattr(gate, "score", fake_score)
    inputs = np.random.default_rng(0).standard_normal((16, 1, 32, 32)).astype(np.float32)
    best, kept, _ = gate.quantize_with_gate(tmp_path / "pre.onnx", tmp_path / "q.onnx", ArrayReader(inputs, "image"),
                                            Scored(np.zeros((1, 4)), 1.0), inputs, np.zeros(16), CLASSES, 0.005,
                                            "minmax", "u8", log=lambda m: None)
    assert kept == [wanted] and best.f2 == 1.0
    assert float_nodes(tmp_path / "q.onnx") == {wanted}


# The grouped split ------------------------------------------------------------------------------

def test_grouped_split_gives_validation_its_share_per_class():
    from tumor_train.dedup import grouped_split

    labels = np.repeat(np.arange(4), 250)
    groups = np.arange(1000) // 2 * 2  # pairs: each group of two images shares a label
    train, val = grouped_split(labels, groups, 0.15, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000
    for c in range(4):
        share = np.isin(np.flatnonzero(labels == c), val).mean()
        assert 0.15 <= share <= 0.16, share
    assert not set(groups[train]) & set(groups[val])
    again = grouped_split(labels, groups, 0.15, seed=3)
    assert [a.tolist() for a in again] == [train.tolist(), val.tolist()]
    assert grouped_split(labels, groups, 0.15, seed=4)[1].tolist() != val.tolist()


def test_grouped_split_keeps_a_huge_group_in_training():
    from tumor_train.dedup import grouped_split

    labels = np.zeros(100, int)
    groups = np.r_[np.zeros(60, int), np.arange(60, 100)]  # one group of 60, then 40 singletons
    for seed in range(10):
        train, val = grouped_split(labels, groups, 0.2, seed)
        assert set(range(60)) <= set(train)  # would overshoot the 20-image share threefold
        assert 20 <= len(val) <= 30


def test_duplicate_groups_join_copies_and_near_copies_only(tmp_path):
    from tests.conftest import synthetic_image
    from tumor_train.dedup import duplicate_groups

    rng = np.random.default_rng(0)
    images = [synthetic_image(i % 4, rng) for i in range(6)]
    images.append(images[0].copy())  # exact pixel copy -> same group as 0
    images.append(np.clip(images[1].astype(int) + rng.integers(-3, 4, images[1].shape), 0, 255).astype(np.uint8))
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    paths.append(tmp_path / "dup.png")
    paths[-1].write_bytes(paths[2].read_bytes())  # byte-identical file
    images.append(images[2])
    groups = duplicate_groups(paths, np.stack(images), 0.92)
    assert groups[6] == groups[0] and groups[7] == groups[1] and groups[8] == groups[2]
    assert len(set(groups[:6])) == 6


# Grayscale conversion ---------------------------------------------------------------------------

def test_colour_is_converted_with_luma_weights_not_one_channel():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 50, 10
    gray = np.asarray(to_gray(Image.fromarray(rgb)))  # one colour everywhere: load_gray refuses it as constant
    assert int(gray[0, 0]) == round(200 * 0.299 + 50 * 0.587 + 10 * 0.114)


def test_transparent_pixels_become_black():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:4, :, 3] = 0  # top half fully transparent white
    rgba[4:, :, 3] = 255
    gray = np.asarray(to_gray(Image.fromarray(rgba, "RGBA")))
    assert gray[:4].max() == 0 and gray[4:].min() == 255
    half = rgba.copy()
    half[..., 3] = 128
    assert abs(int(np.asarray(to_gray(Image.fromarray(half, "RGBA")))[0, 0]) - 128) <= 1


@given(st.sampled_from([255, 1023, 4095, 16383, 65535]), st.integers(0, 2**32 - 1))
def test_deep_images_scale_by_their_bit_depth(white, seed):
    gray = np.random.default_rng(seed).integers(0, 256, (16, 16)).astype(np.uint16)
    gray[0, 0] = 255  # a full-range slice
    deep = np.rint(gray.astype(np.float64) * white / 255).astype(np.uint16)
    assert np.abs(rescale_to_8bit(deep).astype(int) - gray).max() <= 1


def test_deep_image_rules():
    assert rescale_to_8bit(np.zeros((4, 4), np.uint16)).max() == 0
    dim = np.full((4, 4), 100, np.uint16)  # 8-bit values in 16 bits are not stretched
    assert rescale_to_8bit(dim).tolist() == dim.tolist()
    signed = np.array([[-100, 0], [100, 300]], np.int32)  # negative values: the darkest maps to black
    assert rescale_to_8bit(signed)[0, 0] == 0 and rescale_to_8bit(signed)[1, 1] == round(400 * 255 / (1023 + 100))  # 300 needs 10 bits
    floats = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    assert rescale_to_8bit(floats).tolist() == [[0, 128], [255, 0]]


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 6), st.integers(0, 1000), st.lists(st.integers(1, 5), min_size=12, max_size=80))
def test_grouped_kfold_validates_each_image_once_with_groups_whole(folds, seed, group_sizes):
    from tumor_train.dedup import grouped_kfold

    groups = np.repeat(np.arange(len(group_sizes)), group_sizes)
    labels = np.repeat(np.arange(len(group_sizes)) % 4, group_sizes)
    splits = grouped_kfold(labels, groups, folds, seed)
    assert len(splits) == folds
    seen = np.concatenate([val for _, val in splits])
    assert sorted(seen.tolist()) == list(range(len(labels)))  # every image validated exactly once
    for train, val in splits:
        assert not set(groups[train]) & set(groups[val])
        assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    for c in range(4):  # each class spread evenly: fold loads differ by at most the largest group
        loads = [np.sum(labels[val] == c) for _, val in splits]
        assert max(loads) - min(loads) <= max(group_sizes)
    assert [v.tolist() for _, v in grouped_kfold(labels, groups, folds, seed)] == [v.tolist() for _, v in splits]


# Decoding ---------------------------------------------------------------------------------------

def test_open_image_refuses_what_is_not_an_image(tmp_path):
    from tumor_runtime.preprocess import MAX_PIXELS, ImageError, open_image

    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    Image.new("L", (64, 64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    Image.new("1", (8000, 7000)).save(tmp_path / "big.png")
    assert 8000 * 7000 > MAX_PIXELS
    for name, word in (("empty.png", "empty"), ("text.jpg", "not a readable image"), ("cut.png", "corrupt"),
                       ("big.png", "too large")):
        with pytest.raises(ImageError, match=word):
            open_image(tmp_path / name)
    assert open_image(tmp_path / "ok.png").size == (64, 64)


def test_jpeg_draft_decoding_keeps_at_least_the_target_size(tmp_path):
    from tumor_runtime.preprocess import open_image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    drafted = open_image(tmp_path / "a.jpg", 227)
    assert drafted.mode == "L" and min(drafted.size) >= 227 and drafted.size[0] < 600  # scaled 1/2 in the DCT
    assert open_image(tmp_path / "a.jpg").size == (600, 600)
    assert load_gray(tmp_path / "a.jpg", 227).shape == (227, 227)


def test_image_file_rule():
    from tumor_runtime.preprocess import is_image_file

    assert [is_image_file(Path(n)) for n in ("a.JPG", "b.jpeg", "c.png", "d.tif", "e.tiff", "f.bmp")] == [True] * 6
    assert [is_image_file(Path(n)) for n in (".hidden.jpg", "notes.txt", "jpg", "a.jpg.txt")] == [False] * 4


def test_normalize_shape_and_values():
    from tumor_runtime.preprocess import normalize

    gray = np.array([[[0, 255], [51, 102]]], np.uint8)
    x = normalize(gray, 0.2, 0.5)
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [[-0.4, 1.6], [0.0, 0.4]], atol=1e-6)


def test_load_gray_resizes_bilinear_only_when_needed():
    gray = np.random.default_rng(1).integers(0, 256, (40, 40)).astype(np.uint8)
    assert load_gray(gray, 40).tolist() == gray.tolist()
    resized = load_gray(gray, 20)
    assert resized.tolist() == np.asarray(Image.fromarray(gray).resize((20, 20), Image.BILINEAR)).tolist()
    assert load_gray(Image.fromarray(gray), 40).tolist() == gray.tolist()
    palette = Image.fromarray(gray).convert("P")
    assert np.abs(load_gray(palette, 40).astype(int) - gray).max() <= 8
    one_bit = Image.fromarray((gray > 128).astype(np.uint8) * 255).convert("1")
    assert set(np.unique(load_gray(one_bit, 40))) <= {0, 255}


# Edge cases that mutation testing showed untested -------------------------------------------------

def test_rescale_edges_are_exact():
    gray = np.arange(256, dtype=np.uint16).reshape(16, 16)
    assert rescale_to_8bit(gray * 257).tolist() == gray.tolist()  # full 16-bit range: exact, never 256 levels
    assert rescale_to_8bit(gray * 4095 // 255).dtype == np.uint8
    nothing_finite = rescale_to_8bit(np.full((3, 4), np.nan, np.float32))
    assert nothing_finite.shape == (3, 4) and nothing_finite.dtype == np.uint8 and nothing_finite.max() == 0
    flat = rescale_to_8bit(np.full((3, 4), 7, np.uint16))
    assert flat.shape == (3, 4) and flat.tolist() == [[7] * 4] * 3  # 7 of 255: an 8-bit value stays
    zeros = rescale_to_8bit(np.zeros((2, 5), np.float32))
    assert zeros.shape == (2, 5) and zeros.dtype == np.uint8 and zeros.max() == 0
    one = rescale_to_8bit(np.array([[0.5, np.nan]], np.float32))
    assert one.tolist() == [[255, 0]]  # a single finite value is its own white; NaN is black
    extremes = rescale_to_8bit(np.array([[0.0, 1.0, np.inf, -np.inf]], np.float32))
    assert extremes.tolist() == [[0, 255, 255, 0]]


def test_white_point_rules():
    from tumor_runtime.preprocess import white_point

    base = np.zeros(100_000)
    base[:2000] = 1000.0  # 2 % of the pixels at 1000
    assert white_point(base, integer=False) == 1000.0
    assert white_point(base, integer=True) == 1023.0  # 10 bits hold it
    edge = base.copy()
    edge[:2000] = 1023.0
    assert white_point(edge, integer=True) == 1023.0 and white_point(edge + (edge > 0), integer=True) == 4095.0
    for hot, clipped in ((2001.0, True), (2500.0, True), (1999.0, False), (1500.0, False)):
        spiky = base.copy()
        spiky[-1] = hot  # one pixel; the 99.99th percentile is 1000
        assert white_point(spiky, integer=False) == (1000.0 if clipped else hot), hot
    between = np.r_[np.zeros(99_990), np.full(9, 10.0), [40.0]]  # "higher" takes a value that exists
    assert white_point(between, integer=False) == 10.0
    huge = np.full(10, float(2 ** 33))
    assert white_point(huge, integer=True) == float(2 ** 33)  # beyond the listed depths: the value itself
    assert white_point(np.array([255.0] * 10), integer=True) == 255.0
    assert white_point(np.array([256.0] * 10), integer=True) == 1023.0


def test_threshold_counts_allowed_misses_exactly():
    scores = np.linspace(0.001, 0.999, 1000)
    assert tumor.choose_threshold(scores, np.ones(1000, int)) == pytest.approx(min(scores[5], 0.5))  # 5 misses
    assert tumor.choose_threshold(np.linspace(0.01, 0.1, 10), np.ones(10, int), target=0.9) == pytest.approx(0.02)
    labels = np.array([1, 0, 1, 1])  # integers, not booleans
    assert tumor.choose_threshold(np.array([0.3, 0.01, 0.4, 0.45]), labels) == pytest.approx(0.3)
    stats = tumor.screening_stats(np.array([0.9, 0.1, 0.2]), np.array([1, 0, 1]), 0.5)
    assert stats["sensitivity"] == 0.5 and stats["false_alarm_rate"] == 0.0
    assert tumor.screening_stats(np.array([0.9]), np.array([0]), 0.5)["sensitivity"] is None
    assert tumor.tumor_probability(np.array([[0.25, 0.25, 0.5, 0.0]], np.float32), CLASSES).dtype == np.float64


def test_gate_score_and_agreement_on_a_real_onnx_file(tmp_path):
    from tests.onnx_fakes import tiny_model
    from tumor_export.gate import agreement, score
    from tumor_runtime.model import create_session

    model = tiny_model(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(0, 1, (70, 1, 227, 227)).astype(np.float32)  # more than one batch of 64
    labels = np.random.default_rng(1).integers(0, 4, 70)
    result = score(model, x, labels, CLASSES)
    direct = create_session(model).run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(result.probabilities, direct, atol=1e-6)
    assert result.f2 == summarize(labels, direct.argmax(1), CLASSES)["f2_macro"]
    assert result.summary["n_images"] == 70
    other = Scored(result.probabilities[:, ::-1].copy(), 0.0)
    assert agreement(result, result) == 1.0
    assert agreement(result, other) == pytest.approx(float((direct.argmax(1) == direct[:, ::-1].argmax(1)).mean()))


@pytest.mark.parametrize("scores, expected_quantizations", [
    ({(): 1.0}, 1),  # good at once: one quantization, no search
    ({(): 0.5, ("c",): 1.0}, 4),  # the last candidate wins: the file on disk is already it
    ({(): 0.5, ("a",): 1.0}, 5),  # an earlier one wins: quantize it once more
])
def test_gate_requantizes_only_when_needed(monkeypatch, tmp_path, scores, expected_quantizations):
    import tumor_export.gate as gate

    calls, inputs, labels = [], np.zeros((2, 1, 4, 4), np.float32), np.array([0, 1])
    prepared = tmp_path / "p"

    def nodes(path):
        assert path == prepared
        return ["a", "b", "c"]

    def quantize(prep, out, reader, method, act, keep):
        assert prep == prepared and out == tmp_path / "q" and (method, act) == ("minmax", "u8")
        calls.append(tuple(keep))

    monkeypatch.setattr(gate, "quantizable_nodes", nodes)
    monkeypatch.setattr(gate, "quantize_int8", quantize)

    def fake_score(path, got_inputs, got_labels, classes):
        assert got_inputs is inputs and got_labels is labels and classes == CLASSES
        return Scored(np.zeros((2, 4)), scores.get(calls[-1], 0.5))

    monkeypatch.setattr(gate, "score", fake_score)
    best, kept, _ = gate.quantize_with_gate(prepared, tmp_path / "q", None, Scored(np.zeros((2, 4)), 1.0),
                                            inputs, labels, CLASSES, 0.005, "minmax", "u8", log=lambda m: None)
    assert len(calls) == expected_quantizations and calls[-1] == tuple(kept)


def test_gate_gives_up_after_three_layers_by_default(monkeypatch, tmp_path):
    import tumor_export.gate as gate

    monkeypatch.setattr(gate, "quantizable_nodes", lambda path: list("abcde"))
    monkeypatch.setattr(gate, "quantize_int8", lambda *args: None)
    monkeypatch.setattr(gate, "score", lambda *args: Scored(np.zeros((1, 4)), 0.5))
    messages = []
    _, kept, _ = gate.quantize_with_gate(tmp_path / "p", tmp_path / "q", None, Scored(np.zeros((1, 4)), 1.0),
                                         np.zeros(1), np.zeros(1), CLASSES, 0.005, "minmax", "u8", log=messages.append)
    import re

    assert len(kept) == 3 and any(re.search(r"trying \w, \w in float", m) for m in messages)


def test_grouped_kfold_places_big_groups_first():
    from tumor_train.dedup import grouped_kfold

    labels = np.zeros(10, int)
    groups = np.array([0, 0, 0, 0, 0, 5, 6, 7, 8, 9])  # one group of 5 and five singletons
    loads = sorted(len(val) for _, val in grouped_kfold(labels, groups, 2, seed=0))
    assert loads == [5, 5]


def reference_gray(img: Image.Image) -> np.ndarray:
    """An independent reading: deep modes by bit depth (from numpy), colour by luma, alpha over black."""
    arr = np.asarray(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return rescale_to_8bit(arr.astype(np.int64))
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(img.convert("RGBA"), np.float64)
        luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
        return np.rint(luma * rgba[..., 3] / 255).astype(np.uint8)
    return np.asarray(img.convert("L"))


@pytest.mark.parametrize("mode", ["L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F", "RGBA", "LA", "PA", "P", "P-transparent",
                                  "1", "RGB", "CMYK", "YCbCr"])
def test_every_mode_converts_to_the_reference_gray(mode):
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 256, (12, 12)).astype(np.uint8)
    gray[0, 0] = 255
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        deep = (gray.astype(np.uint32) * 4095 // 255).astype(">u2" if mode == "I;16B" else "=u2")
        img = Image.frombytes(mode, (12, 12), deep.tobytes())
    elif mode == "I":
        img = Image.fromarray(gray.astype(np.int32) * 1000)
    elif mode == "F":
        img = Image.fromarray(gray.astype(np.float32) / 255)
    elif mode in ("RGBA", "LA", "PA"):
        colour = np.stack([gray, 255 - gray, gray // 2, rng.integers(0, 256, (12, 12)).astype(np.uint8)], axis=2)
        img = Image.fromarray(colour, "RGBA")
        img = img if mode == "RGBA" else img.convert("LA") if mode == "LA" else img.convert("PA")
    elif mode == "P-transparent":
        img = Image.fromarray(gray).convert("P")
        img.info["transparency"] = int(np.asarray(img)[0, 0])  # that palette entry is see-through
    else:
        img = Image.fromarray(np.stack([gray, 255 - gray, gray // 3], axis=2), "RGB").convert(mode)
    assert img.mode == mode.split("-")[0]
    got = np.asarray(to_gray(img))
    if mode == "P-transparent":
        see_through = np.asarray(img) == img.info["transparency"]
        assert got[see_through].max() == 0 and see_through.any()
        np.testing.assert_array_equal(got[~see_through], np.asarray(img.convert("L"))[~see_through])
        return
    if mode == "F":
        assert np.abs(got.astype(int) - gray).max() <= 1  # float in [0, 1]: its own range
        return
    assert np.abs(got.astype(int) - reference_gray(img)).max() <= 1, mode


def test_grayscale_jpeg_is_drafted_too(tmp_path):
    from tumor_runtime.preprocess import open_image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600), dtype=np.uint8)).save(tmp_path / "g.jpg")
    assert open_image(tmp_path / "g.jpg", 227).size[0] < 600
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).convert("CMYK").save(tmp_path / "c.jpg")
    assert open_image(tmp_path / "c.jpg", 227).size == (600, 600)  # CMYK is not drafted


def test_open_image_messages(tmp_path):
    from tumor_runtime.preprocess import ImageError, open_image

    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "e.png")
    assert str(info.value) == "empty file"
    (tmp_path / "t.png").write_text("text")
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "t.png")
    assert str(info.value) == "not a readable image (UnidentifiedImageError)"


def test_grouped_split_guard_and_share_are_exact():
    from tumor_train.dedup import grouped_split

    labels = np.zeros(100, int)
    # target 10 images: a group of 15 (1.5x) may be taken, one of 16 may not; groups of 5 fill the rest
    for big, allowed in ((15, True), (16, False), (25, False)):
        groups = np.r_[np.zeros(big, int), big + np.arange(100 - big) // 5]
        taken = [set(range(big)) <= set(grouped_split(labels, groups, 0.1, seed)[1]) for seed in range(200)]
        assert any(taken) == allowed, big
    singles = np.arange(100)
    assert len(grouped_split(labels, singles, 0.1, 0)[1]) == 10  # stops exactly at the share


def test_duplicate_groups_across_chunks(tmp_path):
    from tests.conftest import synthetic_image
    from tumor_train.dedup import duplicate_groups, thumbnails

    rng = np.random.default_rng(3)
    images = [synthetic_image(i % 4, rng) for i in range(7)]
    images.append(images[1] // 2 + 60)  # same picture, other brightness and contrast: correlation 1
    images.append(255 - (255 - images[0]) // 2)  # and a near-copy of the very first image
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    stack = np.stack(images)
    for chunk in (1, 3, 1024):  # the result must not depend on how the correlations are chunked
        groups = duplicate_groups(paths, stack, 0.92, chunk=chunk)
        assert groups[7] == groups[1] == 1 and groups[8] == groups[0] == 0 and len(set(groups[:7])) == 7
    thumbs = thumbnails(stack)
    np.testing.assert_allclose(np.linalg.norm(thumbs, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(thumbs.mean(axis=1), 0, atol=1e-6)
    assert thumbs[1] @ thumbs[7] == pytest.approx(1, abs=1e-3)


def test_search_records_trials_and_uses_its_defaults():
    table = {frozenset(): 0.75, frozenset("a"): 0.80}
    best, kept, trials = search(fake_trial(table, []), ["a", "b"], 1.0, 0.25)
    assert kept == [] and trials == [{"keep_float": [], "f2": 0.75}]  # a drop of exactly max_drop is allowed
    _, _, trials = search(fake_trial(table, []), ["a", "b"], 1.0, 0.1, max_float=1)
    assert trials[:2] == [{"keep_float": [], "f2": 0.75}, {"keep_float": ["a"], "f2": 0.80}]
    _, kept, _ = search(fake_trial({}, []), list("abcdef"), 1.0, 0.005)
    assert len(kept) == 3  # at most three layers in float by default


def test_summary_of_nothing():
    got = summarize([], [], CLASSES)
    assert got["n_images"] == 0 and got["accuracy"] == 0.0 and got["f2_macro"] == 0.0 and got["f2_weighted"] == 0.0


def test_score_reads_the_probabilities_output_by_name(tmp_path):
    from tests.onnx_fakes import conv_model
    from tumor_export.gate import score
    from tumor_runtime.model import create_session

    model = conv_model(tmp_path / "m.onnx", logits_first=True)
    x = np.random.default_rng(0).normal(0, 1, (5, 1, 32, 32)).astype(np.float32)
    got = score(model, x, np.zeros(5, int), CLASSES)
    np.testing.assert_allclose(got.probabilities, create_session(model).run(["probabilities"], {"image": x})[0])
    np.testing.assert_allclose(got.probabilities.sum(1), 1, atol=1e-5)


def test_hot_pixels_clip_at_white_and_nan_is_the_darkest():
    deep = np.full((300, 300), 1000, np.uint16)
    deep[:150] = 0
    deep[0, 0] = 60000  # one hot pixel (under 0.01 % of the image) far above the rest
    out = rescale_to_8bit(deep)
    assert out[0, 0] == 255 and out[1, 0] == 0  # clipped at white, not wrapped around
    assert out[299, 299] == round(1000 * 255 / 1023)  # white is 1023: the rest keeps its 10-bit scale
    signed = rescale_to_8bit(np.array([[-1.0, 1.0, np.nan]], np.float32))
    assert signed.tolist() == [[0, 255, 0]]


def test_load_gray_uses_draft_decoding_like_the_cache(tmp_path):
    from tumor_runtime.preprocess import open_image

    rgb = np.random.default_rng(2).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=90)
    drafted = np.asarray(to_gray(open_image(tmp_path / "a.jpg", 227)).resize((227, 227), Image.BILINEAR))
    full = np.asarray(to_gray(open_image(tmp_path / "a.jpg")).resize((227, 227), Image.BILINEAR))
    assert not np.array_equal(drafted, full)  # the two decodings differ, so this test can tell them apart
    np.testing.assert_array_equal(load_gray(tmp_path / "a.jpg", 227), drafted)


def test_palette_images_open_as_rgb_or_rgba(tmp_path):
    from tumor_runtime.preprocess import open_image

    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    plain = Image.fromarray(gray).convert("P")
    plain.save(tmp_path / "plain.png")
    see_through = plain.copy()
    see_through.info["transparency"] = int(np.asarray(plain)[0, 0])
    see_through.save(tmp_path / "alpha.png", transparency=int(np.asarray(plain)[0, 0]))
    assert open_image(tmp_path / "plain.png").mode == "RGB"
    opened = open_image(tmp_path / "alpha.png")
    assert opened.mode == "RGBA" and np.asarray(opened)[0, 0, 3] == 0 and np.asarray(opened)[7, 7, 3] == 255


def test_decompression_bomb_message(tmp_path):
    from tumor_runtime.preprocess import ImageError, open_image

    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "bomb.png")
    assert str(info.value) == f"image too large (over {2 * Image.MAX_IMAGE_PIXELS} pixels)"


def test_thumbnails_are_box_filtered_and_normalised():
    from tumor_train.dedup import THUMB, thumbnails

    image = np.random.default_rng(4).integers(0, 256, (96, 96)).astype(np.uint8)
    box = np.asarray(Image.fromarray(image).resize((THUMB, THUMB), Image.BOX), np.float32).ravel()
    box -= box.mean()
    np.testing.assert_allclose(thumbnails(image[None])[0], box / np.linalg.norm(box), atol=1e-6)
