"""`runtime/imaging/decode.py`: decoding, grayscale conversion, deep images, limits before decoding, JPEG draft
decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.helpers.datasets import synthetic_image
from tumor_runtime.imaging.decode import rescale_to_8bit, to_gray
from tumor_runtime.imaging.transform import load_gray


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


def tinted(gray: np.ndarray) -> list[np.ndarray]:
    """Three channels that differ, as a slice stored in colour may: a faint tint, under the colour limit."""
    return [
        gray,
        np.clip(gray.astype(int) + 6, 0, 255).astype(np.uint8),
        np.clip(gray.astype(int) - 6, 0, 255).astype(np.uint8),
    ]


def test_colour_is_converted_with_luma_weights_not_one_channel():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 120, 110, 100  # a faint tint (a colourful image is refused: test_colour)
    gray = np.asarray(to_gray(Image.fromarray(rgb)))  # one colour everywhere: load_gray refuses it as constant
    assert int(gray[0, 0]) == round(120 * 0.299 + 110 * 0.587 + 100 * 0.114)


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
    assert rescale_to_8bit(signed)[0, 0] == 0 and rescale_to_8bit(signed)[1, 1] == round(
        400 * 255 / (1023 + 100)
    )  # 300 needs 10 bits
    floats = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    assert rescale_to_8bit(floats).tolist() == [[0, 128], [255, 0]]


def test_open_image_refuses_what_is_not_an_image(tmp_path):
    from tumor_runtime.core.errors import ImageError
    from tumor_runtime.imaging.decode import MAX_PIXELS, open_image

    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    Image.new("L", (64, 64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    Image.new("1", (8000, 7000)).save(tmp_path / "big.png")
    assert 8000 * 7000 > MAX_PIXELS
    for name, word in (
        ("empty.png", "empty"),
        ("text.jpg", "not a readable image"),
        ("cut.png", "corrupt"),
        ("big.png", "too large"),
    ):
        with pytest.raises(ImageError, match=word):
            open_image(tmp_path / name)
    assert open_image(tmp_path / "ok.png").size == (64, 64)


def test_jpeg_draft_decoding_keeps_at_least_the_target_size(tmp_path):
    from tumor_runtime.imaging.decode import open_image

    noise = np.random.default_rng(0).integers(0, 255, (600, 600), dtype=np.uint8)
    Image.fromarray(np.repeat(noise[..., None], 3, axis=2)).save(tmp_path / "a.jpg")  # a gray slice in a colour JPEG
    drafted = open_image(tmp_path / "a.jpg", 227)
    assert drafted.mode == "YCbCr" and min(drafted.size) >= 227 and drafted.size[0] < 600  # scaled 1/2 in the DCT
    assert open_image(tmp_path / "a.jpg").size == (600, 600)
    assert load_gray(tmp_path / "a.jpg", 227).shape == (227, 227)


def test_a_colour_jpeg_s_gray_is_its_luma_to_the_bit(tmp_path):
    """Decoded in YCbCr (to see its colour), a colour JPEG's gray is what a decode straight to gray gives: the
    pixels the shipped model trained on (RGB converted to gray differed on 66 of the dataset's 3,236 colour JPEGs)."""
    from tumor_runtime.imaging.decode import open_image, to_gray

    rng = np.random.default_rng(1)
    gray = rng.integers(0, 255, (96, 96), dtype=np.uint8)
    tint = rng.integers(-6, 7, (96, 96, 3))  # a faint tint, as some slices saved in colour have
    Image.fromarray(np.clip(gray[..., None] + tint, 0, 255).astype(np.uint8)).save(tmp_path / "t.jpg", quality=80)
    luma = Image.open(tmp_path / "t.jpg")
    luma.draft("L", luma.size)
    ours = np.asarray(to_gray(open_image(tmp_path / "t.jpg")))
    assert np.array_equal(ours, np.asarray(luma.convert("L")))


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
    from tumor_runtime.imaging.decode import white_point

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
    huge = np.full(10, float(2**33))
    assert white_point(huge, integer=True) == float(2**33)  # beyond the listed depths: the value itself
    assert white_point(np.array([255.0] * 10), integer=True) == 255.0
    assert white_point(np.array([256.0] * 10), integer=True) == 1023.0


@pytest.mark.parametrize(
    "mode",
    [
        "L",
        "I;16",
        "I;16L",
        "I;16B",
        "I;16N",
        "I",
        "F",
        "RGBA",
        "LA",
        "PA",
        "P",
        "P-transparent",
        "1",
        "RGB",
        "CMYK",
        "YCbCr",
    ],
)
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
        colour = np.stack([*tinted(gray), rng.integers(0, 256, (12, 12)).astype(np.uint8)], axis=2)
        img = Image.fromarray(colour, "RGBA")
        img = img if mode == "RGBA" else img.convert("LA") if mode == "LA" else img.convert("PA")
    elif mode == "P-transparent":
        img = Image.fromarray(gray).convert("P")
        img.info["transparency"] = int(np.asarray(img)[0, 0])  # that palette entry is see-through
    else:
        rgb = Image.fromarray(np.stack(tinted(gray), axis=2), "RGB")
        # P: an adaptive palette keeps the tint (the web palette's dithering would make it colourful)
        img = rgb.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)
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
    from tumor_runtime.imaging.decode import open_image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600), dtype=np.uint8)).save(tmp_path / "g.jpg")
    assert open_image(tmp_path / "g.jpg", 227).size[0] < 600
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).convert("CMYK").save(tmp_path / "c.jpg")
    assert open_image(tmp_path / "c.jpg", 227).size == (600, 600)  # CMYK is not drafted


def test_open_image_messages(tmp_path):
    from tumor_runtime.core.errors import ImageError
    from tumor_runtime.imaging.decode import open_image

    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "e.png")
    assert str(info.value) == "empty file"
    (tmp_path / "t.png").write_text("text")
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "t.png")
    assert str(info.value) == "not a readable image (UnidentifiedImageError)"


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
    from tumor_runtime.imaging.decode import open_image

    gray = np.random.default_rng(2).integers(0, 255, (600, 600), dtype=np.uint8)
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(tmp_path / "a.jpg", quality=90)
    drafted = np.asarray(to_gray(open_image(tmp_path / "a.jpg", 227)).resize((227, 227), Image.BILINEAR))
    full = np.asarray(to_gray(open_image(tmp_path / "a.jpg")).resize((227, 227), Image.BILINEAR))
    assert not np.array_equal(drafted, full)  # the two decodings differ, so this test can tell them apart
    np.testing.assert_array_equal(load_gray(tmp_path / "a.jpg", 227), drafted)


def test_palette_images_open_as_rgb_or_rgba(tmp_path):
    from tumor_runtime.imaging.decode import open_image

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
    from tumor_runtime.core.errors import ImageError
    from tumor_runtime.imaging.decode import open_image

    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "bomb.png")
    assert str(info.value) == f"image too large (over {2 * Image.MAX_IMAGE_PIXELS} pixels)"


@pytest.mark.faults
def test_decoded_memory_is_bounded_before_decoding_whatever_the_file_size(tmp_path):
    """Round four, item 7: a 343 KB deflated 7000x7000 float32 TIFF cost 2.3 GB to decode. The bound counts the
    decoded bytes (mode included) before decoding; a float slice of ordinary size still loads."""
    import resource

    from tumor_runtime.core.errors import ImageError
    from tumor_runtime.imaging.decode import MAX_DECODE_BYTES, decode_cost

    bomb = tmp_path / "bomb.tif"
    Image.new("F", (4000, 4000), 1.5).save(bomb, compression="tiff_deflate")
    assert bomb.stat().st_size < 2_000_000 and decode_cost("F", 4000 * 4000) > MAX_DECODE_BYTES
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        ImageError,
        match=r"^image too large to decode \(4000x4000 F pixels need about 305 MB, "
        r"limit 256 MB\)$",
    ):
        load_gray(bomb, 160)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024  # KB: not decoded
    ordinary = tmp_path / "slice.tif"
    Image.fromarray((np.indices((512, 512)).sum(0) * 7.5).astype(np.float32), "F").save(ordinary)
    assert load_gray(ordinary, 160).shape == (160, 160)
    assert decode_cost("L", 50_000_000) <= MAX_DECODE_BYTES  # an 8-bit image up to the pixel limit still loads


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "P", "LA", "I;16"])
@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_every_mode_converts_like_grayscale(tmp_path, mode, ext):
    gray = synthetic_image(1, np.random.default_rng(3), size=100)
    base = Image.fromarray(gray, "L")
    if mode == "I;16":
        if ext == ".bmp":
            pytest.skip("BMP has no 16-bit grayscale")
        img = Image.fromarray(gray.astype(np.uint16) * 257)  # full 16-bit range: must scale, not clip
    elif mode == "LA" and ext == ".bmp" or mode == "CMYK" and ext in (".png", ".bmp"):
        pytest.skip(f"{ext} cannot store {mode}")
    else:
        img = base.convert(mode)
    path = tmp_path / f"img{ext}"
    img.save(path)
    np.testing.assert_array_equal(load_gray(path, 227), load_gray(base, 227))


def test_twelve_bit_data_gives_the_eight_bit_pixels(tmp_path):
    gray = synthetic_image(2, np.random.default_rng(4), size=64)
    gray[0, 0] = 255
    Image.fromarray((gray.astype(np.uint32) * 4095 // 255).astype(np.uint16)).save(tmp_path / "twelve.png")
    assert Image.open(tmp_path / "twelve.png").mode.startswith("I")
    out = load_gray(tmp_path / "twelve.png", 64)
    assert np.abs(out.astype(int) - gray).max() <= 1  # scaled by 4095, not by 65535 (which would be black)


def test_a_burned_in_marker_does_not_darken_a_deep_slice():
    """A 3x3 saturated marker (0.014 % of a 256 x 256 slice) on 8-bit data stored in 16 bits: the slice keeps its
    brightness (the marker clips at 255) instead of being scaled as 12-bit data, 16x darker."""
    rng = np.random.default_rng(3)
    tissue = np.zeros((256, 256), np.uint16)
    tissue[40:220, 50:210] = rng.integers(20, 201, (180, 160))
    marked = tissue.copy()
    marked[5:8, 5:8] = 4095
    plain, with_marker = rescale_to_8bit(tissue), rescale_to_8bit(marked)
    assert np.array_equal(with_marker[40:220, 50:210], plain[40:220, 50:210])
    assert (with_marker[5:8, 5:8] == 255).all() and plain.max() >= 200
