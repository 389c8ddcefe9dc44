"""Real encodings of the sample slices and ways to damage them."""

from __future__ import annotations

import functools

from tests.helpers.datasets import SAMPLES

# Fuzzed files: random, truncated and bit-flipped encodings of one real slice -----------------------


@functools.cache
def real_encodings() -> dict[str, bytes]:
    """One real slice as JPEG (the file itself), PNG, TIFF and BMP bytes, by suffix."""
    import io

    from PIL import Image

    source = next(SAMPLES.rglob("*.jpg"))
    image = Image.open(source)
    encoded = {"jpg": source.read_bytes()}
    for ext, fmt in (("png", "PNG"), ("tif", "TIFF"), ("bmp", "BMP")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        encoded[ext] = buffer.getvalue()
    return encoded


def mangled_file():
    """A hypothesis strategy of (extension, bytes): random bytes, a truncated real file or one with flipped bits."""
    from hypothesis import strategies as st

    encoded = real_encodings()
    random_bytes = st.tuples(st.sampled_from(sorted(encoded)), st.binary(max_size=2000))
    truncated = st.sampled_from(sorted(encoded)).flatmap(
        lambda ext: st.integers(0, len(encoded[ext]) - 1).map(lambda n: (ext, encoded[ext][:n]))
    )
    flipped = st.sampled_from(sorted(encoded)).flatmap(
        lambda ext: st.lists(
            st.tuples(st.integers(0, len(encoded[ext]) - 1), st.integers(0, 7)), min_size=1, max_size=8
        ).map(lambda flips: (ext, flip_bits(encoded[ext], flips)))
    )
    return st.one_of(random_bytes, truncated, flipped)


def flip_bits(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        out[position] ^= 1 << bit
    return bytes(out)
