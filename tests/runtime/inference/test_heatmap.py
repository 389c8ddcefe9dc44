"""Class activation heat-maps in the runtime: the maps, the colours, the overlays and their file names."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

from tests.helpers.datasets import make_dataset
from tests.helpers.onnx_fakes import metadata, save_model
from tumor_runtime.core.errors import ModelError
from tumor_runtime.imaging.formats import HEATMAP_SUFFIX
from tumor_runtime.inference.classifier import Classifier
from tumor_runtime.inference.heatmap import (
    ALPHA,
    colour_map,
    heatmap_name,
    legend_for,
    normalized_cam,
    overlay,
    overlay_png,
)


def corner_model(path: Path) -> Path:
    """A fake model whose `cam` is the image itself pooled to 13x13 (every class): where the bright
    evidence is, the map must be. It checks the runtime's orientation, scaling and upsampling."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Concat", ["flat", "flat", "flat", "flat"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("AveragePool", ["image"], ["pooled13"], kernel_shape=[17, 17], strides=[17, 17]),
        helper.make_node("Concat", ["pooled13"] * 4, ["cam"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "corner",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 227, 227])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 4, 13, 13]),
        ],
    )
    return save_model(graph, path, metadata(mean="0", std="1"))


@pytest.mark.parametrize("corner", ["top-left", "bottom-right", "top-right"])
def test_the_map_peaks_where_the_evidence_is(tmp_path, corner):
    clf = Classifier.load(corner_model(tmp_path / "corner.onnx"))
    image = np.zeros((227, 227), np.uint8)
    rows = slice(10, 50) if corner.startswith("top") else slice(177, 217)
    cols = slice(10, 50) if corner.endswith("left") else slice(177, 217)
    image[rows, cols] = 255
    rec = clf.predict([image], heatmaps=True)[0]
    cam = rec["cam"]
    assert cam.shape == (227, 227) and cam.dtype == np.float32 and cam.min() >= 0 and 0.95 <= cam.max() <= 1
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop
    assert cam[rows, cols].mean() > 5 * cam.mean()


def test_heatmaps_cli_writes_one_overlay_per_input_without_collisions(tmp_path):
    from tumor_runtime.cli.infer import main

    make_dataset(tmp_path / "a", per_class=1)
    make_dataset(tmp_path / "b", per_class=1, seed=5)  # same file names in other folders
    (tmp_path / "a" / "glioma" / "broken.jpg").write_bytes(b"junk")
    out = tmp_path / "maps"
    result = CliRunner().invoke(
        main, [str(tmp_path / "a"), str(tmp_path / "b"), "-r", "--heatmaps", str(out), "--format", "jsonl"]
    )
    assert result.exit_code == 1  # the broken file
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    made = [r["heatmap"] for r in rows if r["error"] is None]
    assert len(made) == 8 and len(set(made)) == 8 and sorted(map(str, out.iterdir())) == sorted(made)
    assert [r["heatmap"] for r in rows if r["error"]] == [None]
    picture, size = Image.open(made[0]), Classifier.load().info.input_size
    assert picture.mode == "RGB" and picture.width == size and picture.height > size  # the slice, then the legend
    assert "cam" not in rows[0] and "slice" not in rows[0]


def test_heatmaps_need_a_model_with_cam(tmp_path):
    from tests.helpers.onnx_fakes import tiny_model
    from tumor_runtime.cli.infer import main

    model = tiny_model(tmp_path / "nocam.onnx")
    clf = Classifier.load(model)
    gradient = np.tile(np.arange(50, dtype=np.uint8) * 5, (50, 1))
    with pytest.raises(ModelError, match="no 'cam' output"):
        clf.predict([gradient], heatmaps=True)
    assert clf.predict([gradient])[0]["error"] is None  # without heat-maps: fine
    data = make_dataset(tmp_path / "d", per_class=1)
    result = CliRunner().invoke(main, [str(data), "-r", "--model", str(model), "--heatmaps", str(tmp_path / "m")])
    assert result.exit_code == 2 and "no 'cam' output" in result.stderr


# The drawing, pixel by pixel: a wrong class, a tinted cold region or a broken name shows here.


def test_normalized_cam_takes_the_asked_class_clips_negatives_and_scales_its_peak_to_one():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[1] = -1.0
    maps[1, 0, 0], maps[1, 3, 3] = 2.0, 1.0
    maps[2] = 5.0
    cam = normalized_cam(maps, 1, 4)
    assert cam.dtype == np.float32 and cam.shape == (4, 4)
    assert cam[0, 0] == 1.0 and cam[3, 3] == 0.5 and cam[0, 3] == 0.0  # same size: no resampling
    assert np.array_equal(normalized_cam(maps, 2, 8), np.ones((8, 8), np.float32))
    assert not normalized_cam(maps, 0, 8).any()  # no positive evidence: an empty map, not NaN


def test_normalized_cam_upsamples_bilinearly_within_zero_and_one():
    maps = np.array([[[0.0, 4.0], [4.0, 0.0]]], np.float32)
    cam = normalized_cam(maps, 0, 16)
    assert cam.shape == (16, 16) and 0.0 <= cam.min() and cam.max() <= 1.0
    assert 0.0 < cam[8, 8] < 1.0 and cam[0, 15] > 0.9 and cam[0, 0] < 0.1


def test_colour_map_runs_from_dark_blue_through_the_stops_to_red_and_clips():
    values = np.array([[-1.0, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 0.1]])
    assert colour_map(values)[0].tolist() == [
        [0, 0, 128],
        [0, 0, 128],
        [0, 128, 255],
        [0, 255, 255],
        [255, 255, 0],
        [255, 128, 0],
        [200, 0, 0],
        [200, 0, 0],
        [0, 64, 192],
    ]
    assert colour_map(values).dtype == np.uint8


def test_overlay_leaves_cold_pixels_gray_and_blends_hot_ones_with_alpha():
    gray = np.full((20, 30), 100, np.uint8)
    cam = np.zeros((20, 30), np.float32)
    cam[5, 7] = 1.0
    picture = np.asarray(overlay(gray, cam, "label 0.99"))
    assert picture.shape == (38, 30, 3)  # the slice, then an 18-pixel legend strip
    hot = np.rint(100 * (1 - ALPHA) + np.array([200, 0, 0]) * ALPHA)
    assert picture[5, 7].tolist() == hot.tolist()
    cold = np.ones((20, 30), bool)
    cold[5, 7] = False
    assert (picture[:20][cold] == 100).all()
    strip = picture[20:]
    assert strip.max() > 200 and (strip == 0).mean() > 0.8  # white text on black
    assert (strip[..., 0] == strip[..., 2]).all()  # no colour in the legend


def test_legend_and_png_of_a_record_and_none_for_an_error_row():
    rec = {
        "label": "glioma",
        "confidence": 0.876,
        "tumor_probability": 0.9,
        "error": None,
        "cam": np.zeros((10, 10), np.float32),
        "slice": np.zeros((10, 10), np.uint8),
    }
    assert legend_for(rec) == "glioma 0.88 | P(tumor) 0.90"
    assert legend_for(rec | {"tumor_probability": None}) == "glioma 0.88"
    png = overlay_png(rec)
    assert Image.open(io.BytesIO(png)).size == (10, 28) and "cam" not in rec and "slice" not in rec
    assert overlay_png(rec) is None  # its cam was taken out
    failed = {"error": "not an image", "cam": np.zeros((2, 2)), "slice": np.zeros((2, 2), np.uint8)}
    assert overlay_png(failed) is None and "cam" not in failed and "slice" not in failed


def test_heatmap_names_differ_by_folder_keep_the_stem_and_fit_a_file_system(tmp_path):
    a, b = heatmap_name(str(tmp_path / "a" / "scan#1.jpg")), heatmap_name(str(tmp_path / "b" / "scan#1.jpg"))
    assert a != b and a.startswith("scan-1.jpg.") and a.endswith(HEATMAP_SUFFIX)
    assert len(a) == len("scan-1.jpg.") + 8 + len(HEATMAP_SUFFIX)
    assert heatmap_name(str(tmp_path / "a" / "scan#1.jpg")) == a  # the same input, the same name
    long = heatmap_name(str(tmp_path / ("é" * 200 + ".jpg")))
    stem = long[: -len(HEATMAP_SUFFIX) - 9]
    assert stem == "é" * 80 and len(long.encode()) <= 255  # 160 bytes, cut between characters


def test_normalized_cam_takes_any_numeric_maps_and_upsamples_with_bilinear_weights():
    """float64 maps (or lists) work as float32 ones; 2x2 -> 4x4 gives PIL's bilinear weights, not bicubic's
    (which would overshoot and ring next to the peak)."""
    cam = normalized_cam(np.array([[[2.0, 0.0], [0.0, 0.0]]]), 0, 4)  # float64
    profile = np.array([1.0, 0.75, 0.25, 0.0])
    assert cam.dtype == np.float32 and np.allclose(cam, np.outer(profile, profile), atol=1e-6)
    assert np.array_equal(normalized_cam([[[0, 3], [0, 0]]], 0, 2), np.array([[0, 1], [0, 0]], np.float32))


def test_overlay_keeps_black_and_white_exact_where_the_map_is_cold():
    gray = np.array([[0, 255], [0, 255]], np.uint8)
    cam = np.array([[0, 0], [1, 1]], np.float32)
    picture = np.asarray(overlay(gray, cam, ""))[:2]
    red = np.array([200, 0, 0]) * ALPHA
    assert picture[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    assert picture[1].tolist() == [np.rint(red).tolist(), np.rint(255 * (1 - ALPHA) + red).tolist()]


def test_a_record_without_its_slice_gets_no_overlay():
    rec = {"label": "glioma", "confidence": 0.9, "error": None, "cam": np.zeros((4, 4), np.float32)}
    assert overlay_png(rec) is None and "cam" not in rec


def test_heatmap_names_of_undecodable_and_multibyte_file_names(tmp_path):
    """A file name with bytes that are not UTF-8 (os.fsdecode gives surrogates) and a long one whose 160-byte cut
    falls inside a character both give valid UTF-8 names."""
    odd = heatmap_name(str(tmp_path / "scan\udcff.jpg"))
    assert odd.startswith("scan?.jpg.") and odd.encode("utf-8")
    cut = heatmap_name(str(tmp_path / ("a" + "é" * 100)))  # 201 bytes: byte 160 is the middle of an é
    assert cut.startswith("a" + "é" * 79 + ".") and len(cut.split(".")[0].encode()) == 159
