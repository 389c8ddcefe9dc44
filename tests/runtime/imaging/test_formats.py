"""`runtime/imaging/formats.py`: the one format table and everything derived from it."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.files import real_encodings


def test_image_file_rule():
    from tumor_runtime.imaging.formats import is_image_file

    assert [is_image_file(Path(n)) for n in ("a.JPG", "b.jpeg", "c.png", "d.tif", "e.tiff", "f.bmp")] == [True] * 6
    assert [is_image_file(Path(n)) for n in (".hidden.jpg", "notes.txt", "jpg", "a.jpg.txt")] == [False] * 4


def test_every_format_in_the_table_is_listed_decoded_and_sniffed(tmp_path):
    """Each row of FORMATS is one promise kept everywhere: a file with each of its suffixes is listed by the folder
    rule, and its real content is recognised by the server's sniffing under the suffix it is saved with."""
    from tumor_runtime.imaging.formats import FORMATS, sniff
    from tumor_runtime.imaging.listing import images_in

    content = {f.name: real_encodings().get(f.suffixes[0][1:], b"") for f in FORMATS}
    for fmt in FORMATS:
        for i, suffix in enumerate(fmt.suffixes):
            (tmp_path / f"{fmt.name}{i}{suffix}").write_bytes(content[fmt.name])
        if fmt.magic:
            assert sniff(content[fmt.name]) == fmt.suffixes[0], fmt.name
    listed = {p.name for p in images_in(tmp_path, recursive=False)}
    assert listed == {f"{f.name}{i}{s}" for f in FORMATS for i, s in enumerate(f.suffixes)}


def test_the_page_and_the_messages_are_derived_from_the_table():
    from tumor_runtime.imaging import formats
    from tumor_runtime.serving.app import page_html

    html = page_html()
    assert f'accept="{",".join(s for f in formats.FORMATS for s in f.suffixes)}"' in html
    assert "{{" not in html  # every placeholder filled
    assert formats.SUPPORTED_FILES == "(.jpg .png .bmp .tif .dcm)"
    assert formats.FORMAT_NAMES == "JPEG, PNG, BMP, TIFF or DICOM"
