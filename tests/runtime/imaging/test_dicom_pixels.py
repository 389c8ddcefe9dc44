"""DICOM pixel rules that a wrong order or a missing branch would break silently."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("pydicom")

from tests.helpers.dicom import write_dicom  # noqa: E402
from tumor_runtime.core.errors import ImageError  # noqa: E402
from tumor_runtime.imaging import dicom, formats  # noqa: E402
from tumor_runtime.imaging.dicom import DicomFrame, load_frame  # noqa: E402


def ramp() -> np.ndarray:
    return (np.arange(64 * 64).reshape(64, 64) % 1000).astype(np.uint16)


def test_monochrome1_is_inverted_with_a_window_too(tmp_path):
    values = ramp()
    window = ("500", "1000")
    mono2 = load_frame(DicomFrame(write_dicom(tmp_path / "a.dcm", values, window=window, bits_stored=12), None))[0]
    mono1 = load_frame(
        DicomFrame(write_dicom(tmp_path / "b.dcm", values, "MONOCHROME1", window=window, bits_stored=12), None)
    )[0]
    assert np.array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_rescale_is_slope_then_intercept(tmp_path):
    values = ramp()
    # stored v -> 2 v + 100; a window over [100, 2100] then maps v linearly onto 0..255
    path = write_dicom(
        tmp_path / "r.dcm", values, window=("1100", "2000"), slope_intercept=("2", "100"), bits_stored=12
    )
    expected = np.clip((2.0 * values + 100 - 100) / 2000, 0, 1) * 255
    assert np.abs(load_frame(DicomFrame(path, None))[0].astype(float) - expected).max() <= 1.5


# The reader's rules one by one, on small data sets and stand-ins.


def test_frames_are_named_by_path_and_number():
    assert str(dicom.DicomFrame(Path("a/b.dcm"), None)) == "a/b.dcm"
    assert str(dicom.DicomFrame(Path("a/b.dcm"), 3)) == "a/b.dcm#3"


def test_dicom_files_are_known_by_suffix_or_by_their_preamble(tmp_path):
    write_dicom(tmp_path / "scan", ramp())
    (tmp_path / "short").write_bytes(b"\0" * 131)
    (tmp_path / "folder").mkdir()
    assert formats.is_dicom_file(tmp_path / "scan") and formats.has_dicom_preamble(tmp_path / "scan")
    assert formats.is_dicom_file(Path("x/SCAN.DCM")) and formats.is_dicom_file(Path("x/a.Dicom"))
    assert not formats.is_dicom_file(tmp_path / "short") and not formats.is_dicom_file(tmp_path / "folder")
    assert not formats.is_dicom_file(Path("x/.hidden.dcm")) and not formats.is_dicom_file(Path("x/a.jpg"))
    assert not formats.has_dicom_preamble(tmp_path / "absent")


def test_without_pydicom_every_entry_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(dicom, "installed", lambda name: name != "pydicom")
    for call in (
        lambda: dicom.frames_of(tmp_path / "a.dcm"),
        lambda: dicom.load_frame(dicom.DicomFrame(tmp_path, None)),
    ):
        with pytest.raises(ImageError) as caught:
            call()
        assert str(caught.value) == dicom.MISSING_EXTRA
    assert "[dicom] extra" in dicom.MISSING_EXTRA


def test_an_unreadable_file_names_the_error_kind(tmp_path, monkeypatch):
    import pydicom

    def broken(*args, **kwargs):
        raise EOFError("cut")

    monkeypatch.setattr(pydicom, "dcmread", broken)
    with pytest.raises(ImageError) as caught:
        dicom.read_header(tmp_path / "x.dcm")
    assert str(caught.value) == "not a readable DICOM file (EOFError)"


def test_a_file_without_pixels_says_what_it_is(tmp_path, monkeypatch):
    (tmp_path / "sr.dcm").write_bytes(b"x")
    for header, kind in (
        (SimpleNamespace(Modality="SR"), " (SR)"),
        (SimpleNamespace(SOPClassUID="1.2.3"), " (1.2.3)"),
        (SimpleNamespace(), ""),
    ):
        monkeypatch.setattr(dicom, "read_header", lambda path, h=header: FakeHeader(h))
        with pytest.raises(ImageError) as caught:
            dicom.frames_of(tmp_path / "sr.dcm")
        assert str(caught.value) == f"DICOM file without pixel data{kind}: nothing to classify"


class FakeHeader:
    """A header without pixel data elements, with the attributes of `inner`."""

    def __init__(self, inner):
        self.inner = inner

    def __contains__(self, key):
        return False

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("raw, count", [(None, 1), ("", 1), ("1", 1), ("3", 3), (3, 3)])
def test_frame_count_reads_number_of_frames(raw, count, monkeypatch):
    monkeypatch.setattr(dicom, "frames_held", lambda header: 10)
    assert dicom.frame_count(SimpleNamespace(NumberOfFrames=raw)) == count


@pytest.mark.parametrize(
    "raw, message",
    [
        ("x", "DICOM NumberOfFrames 'x' is not a number"),
        ("0", "DICOM NumberOfFrames is 0: not a frame count"),
        ("-2", "DICOM NumberOfFrames is -2: not a frame count"),
        ("11", "DICOM NumberOfFrames says 11, but the pixel data holds at most 10 frame(s)"),
    ],
)
def test_frame_count_refuses_what_the_pixels_cannot_hold(raw, message, monkeypatch):
    monkeypatch.setattr(dicom, "frames_held", lambda header: 10)
    with pytest.raises(ImageError) as caught:
        dicom.frame_count(SimpleNamespace(NumberOfFrames=raw))
    assert str(caught.value) == message
    monkeypatch.setattr(dicom, "frames_held", lambda header: 11)
    if raw == "11":
        assert dicom.frame_count(SimpleNamespace(NumberOfFrames=raw)) == 11


def test_frames_held_divides_the_native_pixel_data_by_one_frames_bits(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "m.dcm", np.stack([ramp()] * 3))
    header = pydicom.dcmread(path)
    assert dicom.frames_held(header) == 3
    header.SamplesPerPixel = 3
    assert dicom.frames_held(header) == 1
    del header.Rows
    assert dicom.frames_held(header) == 1
    header = pydicom.dcmread(path)
    header.BitsAllocated = 0
    assert dicom.frames_held(header) == 1
    del header.PixelData
    assert dicom.frames_held(header) == 1


def test_context_keeps_only_the_join_keys():
    ds = SimpleNamespace(SOPInstanceUID="1.2", SeriesInstanceUID="3.4", InstanceNumber="12", PatientName="X")
    assert dicom.context(ds) == {"sop_instance_uid": "1.2", "series_instance_uid": "3.4", "instance_number": 12}
    assert dicom.context(SimpleNamespace(InstanceNumber="")) == {
        "sop_instance_uid": None,
        "series_instance_uid": None,
        "instance_number": None,
    }


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("", None),
        ("40", 40.0),
        ([50, 60], 50.0),
        (("7.5",), 7.5),
        ([], None),
        ("abc", None),
        (object(), None),
    ],
)
def test_first_of_a_possibly_multi_valued_field(value, expected):
    assert dicom.first(value) == expected


def test_colour_to_gray_by_depth():
    rgb16 = np.zeros((2, 2, 3), np.uint16)
    rgb16[0, 0] = 65535
    rgb16[1, 1] = (257 * 100, 257 * 100, 257 * 100)
    gray = dicom.rgb_to_gray(rgb16)
    assert gray.dtype == np.uint8 and gray[0, 0] == 255 and gray[1, 1] == 100 and gray[0, 1] == 0
    rgb8 = np.zeros((1, 1, 3), np.uint8)
    rgb8[0, 0] = (110, 100, 90)  # a faint tint: a colourful frame is refused (test_colour)
    assert dicom.rgb_to_gray(rgb8)[0, 0] == 102  # the luma weights, not one channel
    floats = np.zeros((2, 2, 3), np.float32)
    floats[0, 0] = 2.0
    assert dicom.rgb_to_gray(floats)[0, 0] == 255


class Fields(SimpleNamespace):
    """A data set stand-in: attributes, and `in` as pydicom's keyword test."""

    def __contains__(self, keyword):
        return keyword in self.__dict__


def test_a_window_must_be_finite_and_wide():
    assert dicom.has_voi(Fields(WindowCenter="40", WindowWidth="400"))
    assert dicom.has_voi(Fields(VOILUTSequence=[1], WindowCenter="40", WindowWidth="0"))  # the LUT comes first
    assert not dicom.has_voi(Fields(WindowCenter="40"))
    assert not dicom.has_voi(Fields())
    for width in ("0", "-5", "nan"):
        with pytest.raises(ImageError) as caught:
            dicom.has_voi(Fields(WindowCenter="40", WindowWidth=width))
        assert str(caught.value) == f"DICOM VOI window is not usable (center 40.0, width {float(width)})"


def test_a_zero_slope_and_a_multi_frame_file_for_one_image_are_refused(tmp_path):
    with pytest.raises(ImageError) as caught:
        load_frame(DicomFrame(write_dicom(tmp_path / "s.dcm", ramp(), slope_intercept=("0", "1")), None))
    assert str(caught.value) == "DICOM RescaleSlope is 0.0: every pixel would map to one value"
    with pytest.raises(ImageError) as caught:
        dicom.single_frame_gray(write_dicom(tmp_path / "m.dcm", np.stack([ramp()] * 2)))
    assert str(caught.value).startswith(
        "multi-frame DICOM (2 frames): training and calibration take one image per file"
    )
    assert dicom.single_frame_gray(write_dicom(tmp_path / "one.dcm", ramp())).shape == (64, 64)


def test_monochrome1_without_a_window_is_inverted_too(tmp_path):
    values = ramp()
    mono2 = load_frame(DicomFrame(write_dicom(tmp_path / "a.dcm", values, bits_stored=12), None))[0]
    mono1 = load_frame(DicomFrame(write_dicom(tmp_path / "b.dcm", values, "MONOCHROME1", bits_stored=12), None))[0]
    assert np.array_equal(mono1.astype(int), 255 - mono2.astype(int)) and mono2.max() > 200


def test_the_window_maps_its_range_onto_0_to_255(tmp_path):
    values = ramp()
    gray = load_frame(
        DicomFrame(write_dicom(tmp_path / "w.dcm", values, window=("500", "1000"), bits_stored=12), None)
    )[0]
    assert gray[values <= 0].max(initial=0) == 0 and gray[values >= 999].min() >= 254
    middle = gray[values == 500]
    assert np.abs(middle.astype(int) - 128).max() <= 1


def test_load_frame_reads_only_its_frame_and_names_an_undecodable_syntax(tmp_path, monkeypatch):
    frames = np.stack([ramp(), ramp()[::-1]])
    path = write_dicom(tmp_path / "m.dcm", frames, bits_stored=12)
    first, second = (load_frame(DicomFrame(path, k))[0] for k in (1, 2))
    assert np.array_equal(first[::-1], second)
    import pydicom.pixels

    def fail(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr(pydicom.pixels, "pixel_array", fail)
    with pytest.raises(ImageError) as caught:
        load_frame(DicomFrame(path, 1))
    assert str(caught.value) == (
        "cannot decode the DICOM pixels (transfer syntax Explicit VR Little Endian: unsupported "
        "compression or damaged data, NotImplementedError)"
    )


def test_a_compressed_multi_frame_file_gives_every_frame(tmp_path):
    """RLE Lossless (pydicom encodes it without extra packages): two frames, counted by their fragments (the
    compressed bytes are fewer than two raw frames), each decoded as its uncompressed twin."""
    import pydicom
    from pydicom.uid import RLELossless

    frames = np.stack([ramp(), ramp()[::-1]])
    plain = write_dicom(tmp_path / "plain.dcm", frames, bits_stored=12)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    listed = dicom.frames_of(tmp_path / "rle.dcm")
    assert listed == [DicomFrame(tmp_path / "rle.dcm", 1), DicomFrame(tmp_path / "rle.dcm", 2)]
    for frame, twin in zip(listed, dicom.frames_of(plain)):
        assert np.array_equal(load_frame(frame)[0], load_frame(twin)[0])


def test_float_pixel_data_is_refused_by_name_when_listed_and_when_read(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "map.dcm", ramp(), bits_stored=16)
    ds = pydicom.dcmread(path)
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated, ds.FloatPixelData = 32, (ramp() / 100).astype(np.float32).tobytes()
    ds.save_as(path)
    message = "DICOM float pixel data (a parametric map, not an MR slice) is not supported"
    for read in (lambda: dicom.frames_of(path), lambda: load_frame(DicomFrame(path, None))):
        with pytest.raises(ImageError) as caught:
            read()
        assert str(caught.value) == message


def test_reading_a_frame_of_a_file_without_pixels_says_so(tmp_path, monkeypatch):
    (tmp_path / "sr.dcm").write_bytes(b"x")
    monkeypatch.setattr(dicom, "read_header", lambda path: FakeHeader(SimpleNamespace()))
    with pytest.raises(ImageError) as caught:
        load_frame(DicomFrame(tmp_path / "sr.dcm", None))
    assert str(caught.value) == "DICOM file without pixel data: nothing to classify"


def test_a_one_row_colour_image_stays_one_row_of_gray(tmp_path):
    """(1, cols, 3) is one RGB row, not a frame axis to drop: SamplesPerPixel 3 keeps it an image."""
    import pydicom

    path = write_dicom(tmp_path / "rgb.dcm", np.zeros((1, 8), np.uint16))
    ds = pydicom.dcmread(path)
    rgb = np.full((1, 8, 3), 76, np.uint8)  # gray stored as RGB (a colour image is refused: test_colour)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    ds.save_as(path)
    gray = load_frame(DicomFrame(path, None))[0]
    assert gray.shape == (1, 8) and (gray == 76).all()


def test_a_palette_colour_file_is_read_through_its_lookup_table():
    """pydicom's palette example: the stored values are indices; the slice is the luma of the colours they name."""
    import pydicom
    from pydicom.pixels import apply_color_lut

    from tests.helpers.dicom import dicom_test_files

    path = dicom_test_files() / "examples_palette.dcm"
    ds = pydicom.dcmread(path)
    expected = dicom.rgb_to_gray(apply_color_lut(ds.pixel_array, ds))
    gray = load_frame(DicomFrame(path, None))[0]
    assert gray.shape == (350, 800) and np.array_equal(gray, expected)
    assert not np.array_equal(gray, dicom.rescale_to_8bit(ds.pixel_array))  # not the indices themselves


def test_a_lookup_table_without_a_range_and_pixels_of_no_image_shape_are_named(tmp_path, monkeypatch):
    import pydicom.pixels

    path = write_dicom(tmp_path / "a.dcm", ramp(), bits_stored=12, window=("500", "1000"))
    with monkeypatch.context() as patch:
        patch.setattr(pydicom.pixels, "apply_voi_lut", lambda values, ds, index=0: np.zeros_like(values, float))
        with pytest.raises(ImageError) as caught:
            load_frame(DicomFrame(path, None))
        assert str(caught.value) == "DICOM VOI LUT gives no usable range of values"
    for shape in [(2, 2, 2, 2), (0, 5)]:
        monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda fh, index=0, s=shape: np.zeros(s, np.uint16))
        with pytest.raises(ImageError) as caught:
            load_frame(DicomFrame(path, None))
        assert str(caught.value) == f"DICOM pixel data of shape {shape} is not an image"


def test_undecodable_pixels_without_a_transfer_syntax_say_unknown(tmp_path):
    """A bare data set (no file meta) whose pixel data is cut short: the reason names no syntax, and no traceback."""
    import pydicom

    path = write_dicom(tmp_path / "a.dcm", ramp(), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:100]
    del ds.file_meta
    ds.save_as(tmp_path / "bare.dcm", implicit_vr=True, little_endian=True, enforce_file_format=False)
    with pytest.raises(ImageError) as caught:
        load_frame(DicomFrame(tmp_path / "bare.dcm", None))
    assert str(caught.value).startswith("cannot decode the DICOM pixels (transfer syntax unknown: ")


def test_a_damaged_modality_lut_sequence_is_that_files_error_row(tmp_path):
    """Round four, item 6: an item without LUTDescriptor or LUTData aborted the whole run with exit 70."""
    import pydicom
    from pydicom.dataset import Dataset

    from tests.helpers.dicom import write_dicom
    from tests.helpers.processes import infer

    path = write_dicom(tmp_path / "lut.dcm", np.tile(np.arange(64, dtype=np.uint16) * 40, (64, 1)))
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = [item]
    ds.save_as(path)
    good = write_dicom(tmp_path / "good.dcm", np.tile(np.arange(64, dtype=np.uint16) * 40, (64, 1)))
    result = infer([path, good, "--format", "csv"])
    assert result.returncode == 1, result.stderr
    rows = result.stdout.strip().splitlines()[1:]
    assert len(rows) == 2 and "LUT cannot be applied" in rows[0] and rows[1].split(",")[1], rows


@pytest.mark.parametrize(
    "value, expected", [("7", 7), (" 12 ", 12), ("abc", None), ("", None), ("1.5", None), (None, None)]
)
def test_a_malformed_instance_number_leaves_the_row_readable(value, expected):
    """InstanceNumber only joins rows back to the study: a malformed one is None, never an error row."""
    from types import SimpleNamespace

    assert dicom.context(SimpleNamespace(InstanceNumber=value))["instance_number"] == expected


def test_a_frame_too_large_to_decode_is_refused_before_its_pixels_are_read(tmp_path, monkeypatch):
    """The decoded size of a DICOM frame (rows x columns x samples, plus the float64 rescale) is bounded before
    pydicom decodes it: a small compressed file can hold a huge frame."""
    from types import SimpleNamespace

    from tests.helpers.dicom import write_dicom

    with pytest.raises(ImageError, match=r"^image too large to decode \(5000x5000 pixels need about 429 MB"):
        dicom.check_frame_size(SimpleNamespace(Rows=5000, Columns=5000, BitsAllocated=16, SamplesPerPixel=1))
    with pytest.raises(ImageError, match=r"^image too large \(8000x8000 pixels, limit 50000000\)"):
        dicom.check_frame_size(SimpleNamespace(Rows=8000, Columns=8000, BitsAllocated=8, SamplesPerPixel=1))
    dicom.check_frame_size(SimpleNamespace(Rows=512, Columns=512, BitsAllocated=16, SamplesPerPixel=1))
    path = write_dicom(tmp_path / "a.dcm", np.full((64, 64), 900, np.uint16))
    monkeypatch.setattr("tumor_runtime.imaging.decode.MAX_DECODE_BYTES", 64 * 64 * 18 - 1)  # where the limit lives
    decoded = []
    monkeypatch.setattr("pydicom.pixels.pixel_array", lambda *a, **k: decoded.append(1))
    with pytest.raises(ImageError, match="too large to decode"):
        dicom.load_frame(dicom.DicomFrame(path, None))
    assert decoded == []


def with_rescale(path: Path, slope: bytes, intercept: bytes) -> Path:
    """The file at `path` with its Rescale Slope and Intercept replaced by raw bytes that pydicom would refuse to
    write (text, several values): written as 8-byte placeholders, then swapped in the file."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = "1.234567", "7.654321"
    ds.save_as(path)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"1.234567", slope.ljust(8)).replace(b"7.654321", intercept.ljust(8)))
    return path


@pytest.mark.parametrize(
    "slope, intercept, message",
    [
        (b"abcdefgh", b"0", "DICOM RescaleSlope is 'abcdefgh', not a number"),
        (b"1\\2", b"0", "DICOM RescaleSlope holds 2 values, not one number"),
        (b"inf", b"0", "DICOM RescaleSlope is inf, not a finite number"),
        (b"1", b"x", "DICOM RescaleIntercept is 'x', not a number"),
        (b"1", b"", "DICOM RescaleIntercept is '', not a number"),
        (b"1", b"-inf", "DICOM RescaleIntercept is -inf, not a finite number"),
        (b"1e308", b"0", "DICOM rescale gives values that are not finite"),
        (b"-1e308", b"-1e308", "DICOM rescale gives values that are not finite"),
    ],
)
def test_rescale_values_numpy_cannot_use_are_named_without_numpys_words(tmp_path, slope, intercept, message):
    """pydicom hands such values to numpy: the row said 'Modality LUT cannot be applied (UFuncTypeError)' and
    stderr got numpy's overflow warnings."""
    import warnings

    path = with_rescale(write_dicom(tmp_path / "r.dcm", ramp()), slope, intercept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarnings would reach the user's terminal
        with pytest.raises(ImageError) as caught:
            load_frame(DicomFrame(path, None))
    assert str(caught.value) == message


def test_a_denormal_slope_keeps_the_image_instead_of_nan_pixels(tmp_path):
    """1e-320 makes the range of values denormal: 255 / range overflowed, and 0 * inf made the background NaN."""
    import warnings

    plain = load_frame(DicomFrame(write_dicom(tmp_path / "a.dcm", ramp()), None))[0]
    tiny = with_rescale(write_dicom(tmp_path / "b.dcm", ramp()), b"1e-320", b"0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gray = load_frame(DicomFrame(tiny, None))[0]
    # The same ramp, up to the few bits a denormal keeps and the white point they move.
    assert gray[0, 0] == 0 and np.corrcoef(gray.ravel(), plain.ravel())[0, 1] > 0.999
