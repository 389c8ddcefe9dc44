"""The one table of accepted input formats: every listing, the server's content check and 415 message, error
messages and the page's file picker are derived from `FORMATS`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    name: str  # as messages name it
    suffixes: tuple[str, ...]  # lower case; the first is the one an upload is saved under
    magic: tuple[bytes, ...]  # leading bytes of the content (DICOM: none, see DICOM_MAGIC)


FORMATS = (
    Format("JPEG", (".jpg", ".jpeg"), (b"\xff\xd8\xff",)),
    Format("PNG", (".png",), (b"\x89PNG\r\n\x1a\n",)),
    Format("BMP", (".bmp",), (b"BM",)),
    Format("TIFF", (".tif", ".tiff"), (b"II*\x00", b"MM\x00*")),
    Format("DICOM", (".dcm", ".dicom"), ()),  # "DICM" at offset 128, or a .dcm name without the preamble
)
DICOM = FORMATS[-1]
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
IMAGE_EXTENSIONS = tuple(s for f in FORMATS if f is not DICOM for s in f.suffixes)  # what Pillow decodes
DICOM_SUFFIXES = DICOM.suffixes
ALL_SUFFIXES = IMAGE_EXTENSIONS + DICOM_SUFFIXES
SUPPORTED_FILES = "(" + " ".join(f.suffixes[0] for f in FORMATS) + ")"  # as error messages name them
FORMAT_NAMES = ", ".join(f.name for f in FORMATS[:-1]) + " or " + DICOM.name  # "JPEG, PNG, TIFF, BMP or DICOM"
ACCEPT = ",".join(ALL_SUFFIXES)  # the page's <input accept=...>
HEATMAP_SUFFIX = ".heatmap.png"  # the kit's own overlays (tumor-infer --heatmaps): never listed as inputs


def is_image_file(path: Path) -> bool:
    """A file Pillow decodes, by its suffix: not hidden, not one of the kit's own heat-maps."""
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and not path.name.lower().endswith(HEATMAP_SUFFIX)
    )


def has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return has_dicom_magic(fh.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)))
    except OSError:
        return False


def has_dicom_magic(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def is_dicom_file(path: Path) -> bool:
    """`.dcm`/`.dicom` files, and files without an extension that start with the DICOM preamble."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix == "" and path.is_file() and has_dicom_preamble(path))


def sniff(data: bytes, name: str = "") -> str | None:
    """The file suffix for accepted content, by its leading bytes (or a .dcm name: DICOM files written without
    the 128-byte preamble, which tumor-infer reads too); None if it is not an accepted format."""
    header_only = len(data) <= DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)  # a preamble and nothing after it
    if (has_dicom_magic(data) and not header_only) or name.lower().endswith(DICOM_SUFFIXES):
        return DICOM.suffixes[0]
    return next((f.suffixes[0] for f in FORMATS for magic in f.magic if data.startswith(magic)), None)
