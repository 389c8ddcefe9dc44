"""The files a request uploads: multipart forms parsed part by part, and which parts are files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")
pytest.importorskip("python_multipart")
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from tests.helpers.datasets import SAMPLES  # noqa: E402
from tumor_runtime.inference.classifier import Classifier  # noqa: E402
from tumor_runtime.serving.app import create_app  # noqa: E402
from tumor_runtime.serving.uploads import form_files, form_parts  # noqa: E402

SAMPLE = sorted(SAMPLES.rglob("*.jpg"))[0]
BOUNDARY = "b0undary"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart/form-data body of (field, filename or None, bytes) parts, as a client writes it."""
    body = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"' + ("" if filename is None else f'; filename="{filename}"')
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text("abcxyz_", min_size=1, max_size=8),
            st.none() | st.text("abc.jpg-", max_size=10),
            st.binary(max_size=300).filter(lambda b: BOUNDARY.encode() not in b),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_every_part_comes_back_with_its_exact_bytes(parts):
    """Bytes of any kind, with or without a filename: Starlette turned a part without one into text."""
    assert form_parts(form(*parts), f"multipart/form-data; boundary={BOUNDARY}") == parts


def test_which_parts_are_files():
    jpeg = SAMPLE.read_bytes()
    parts = [
        ("data", None, jpeg),  # curl -F 'data=<x.jpg': no filename, an image's bytes
        ("note", None, b"just text"),  # a text field: not a file
        ("data", "", b""),  # a file input left empty
        ("data", "empty.jpg", b""),  # an empty file: an upload, whose row says so
        ("data", "", jpeg),  # an empty filename with bytes: named after its field
    ]
    assert form_files(parts) == [("data", jpeg), ("empty.jpg", b""), ("data", jpeg)]


def test_a_form_without_a_boundary_or_with_a_broken_one_is_400():
    with pytest.raises(HTTPException) as raised:
        form_parts(b"", "multipart/form-data")
    assert raised.value.status_code == 400 and "boundary" in raised.value.detail
    with pytest.raises(HTTPException) as raised:
        form_parts(b"--other\r\nnonsense", f"multipart/form-data; boundary={BOUNDARY}")
    assert raised.value.status_code == 400


def test_a_part_without_filename_is_classified_and_an_empty_part_is_only_its_own_error_row():
    expected = Classifier.load().predict([SAMPLE])[0]
    body = form(("data", None, SAMPLE.read_bytes()), ("data", "empty.jpg", b""))
    with TestClient(create_app(load_now=True)) as client:
        response = client.post(
            "/predictions/tumor", content=body, headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        )
    assert response.status_code == 200
    image, empty = response.json()
    assert image["path"] == "data" and image["label"] == expected["label"] and image["error"] is None
    assert image["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert empty["path"] == "empty.jpg" and empty["error"] == "empty file" and empty["label"] is None


def test_a_refused_file_beside_a_dicom_keeps_its_place_among_the_rows(tmp_path):
    """A request with DICOM files takes tumor-infer's file path; a refused upload there is its row, in order."""
    pytest.importorskip("pydicom")
    import numpy as np
    from PIL import Image

    from tests.helpers.dicom import write_dicom

    gray = np.asarray(Image.open(SAMPLE).convert("L"))
    dicom = write_dicom(tmp_path / "x.dcm", gray.astype(np.uint16), bits_stored=8).read_bytes()
    files = [("data", ("a.gif", b"GIF89a...", "image/gif")), ("data", ("x.dcm", dicom, "application/dicom"))]
    with TestClient(create_app(load_now=True)) as client:
        rows = client.post("/predictions/tumor", files=files).json()
    assert [r["path"] for r in rows] == ["a.gif", "x.dcm"]
    assert rows[0]["error"] == "not a JPEG, PNG, BMP, TIFF or DICOM file" and rows[1]["label"] and not rows[1]["error"]
