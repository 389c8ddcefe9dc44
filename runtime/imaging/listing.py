"""Turn command-line paths into a list of inputs, and labelled folders into (file, label) pairs.

`images_in` is the kit's one rule for listing images (training, calibration and the
runtime all use it): image extensions and DICOM files (.dcm, or no extension with the DICOM
preamble), hidden files and folders skipped, sorted.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from tumor_runtime.core.errors import UsageError  # noqa: F401  (raised here; importers use this name)
from tumor_runtime.imaging.formats import SUPPORTED_FILES, is_dicom_file, is_image_file


@dataclass(frozen=True)
class Unreadable:
    """An input that cannot even be listed or opened (an unreadable folder or file): it becomes an error row."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return str(self.path)


def images_in(folder: Path, recursive: bool, errors: list | None = None) -> list[Path]:
    """Image files in `folder` (and below with `recursive`), sorted; hidden files and folders skipped.

    Folders that cannot be read are appended to `errors` as `Unreadable` (ignored when None).
    """

    def unreadable(exc: OSError) -> None:
        if errors is not None:
            errors.append(Unreadable(Path(exc.filename or folder), f"cannot read folder ({exc.strerror or exc})"))

    found, seen = [], {os.path.realpath(folder)}
    # Symlinked folders are followed (class folders are often links into a dataset), each real folder once:
    # a link back up the tree cannot loop.
    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        dirs[:] = (
            [d for d in sorted(dirs) if not d.startswith(".") and new_folder(Path(root) / d, seen)] if recursive else []
        )
        found += [
            Path(root) / f
            for f in sorted(files)
            if f.upper() != "DICOMDIR"  # an index of a media, no image
            and (is_image_file(Path(f)) or is_dicom_file(Path(root) / f))
        ]
    return found


def new_folder(path: Path, seen: set) -> bool:
    """True the first time a real folder is met (and remembers it)."""
    real = os.path.realpath(path)
    if real in seen:
        return False
    seen.add(real)
    return True


def collect(paths: list[str], recursive: bool) -> list:
    """Files as given (tried even without an image extension) plus the images of each folder.

    A missing path is a usage error; anything that exists but cannot be read (a file or a
    folder without permission) becomes an `Unreadable` item, which gets an error row.
    """
    if not paths:
        raise UsageError("give at least one image file or folder")
    items: list[Path | Unreadable] = []
    for raw in paths:
        path = Path(raw)
        try:
            is_dir = path.is_dir()
            os.stat(path)
        except FileNotFoundError:
            raise UsageError(f"no such file or folder: {path}") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise UsageError(f"no such file or folder: {path}") from None
            items.append(Unreadable(path, f"cannot open ({exc.strerror or exc})"))
            continue
        if is_dir:
            errors: list[Unreadable] = []
            found = images_in(path, recursive, errors)
            if not found and not errors:
                hint = "" if recursive else " (use --recursive for subfolders)"
                raise UsageError(f"no images {SUPPORTED_FILES} in {path}{hint}")
            items += [*found, *errors]
        else:
            items.append(path)
    return items


SPLIT_FOLDERS = ("Training", "Train", "Testing", "Test", "Validation", "Val")


def labelled(folder: str | os.PathLike, classes: list[str]) -> tuple[list, list[int]]:
    """The kit's one labelled-folder rule: FOLDER/<class>/... with every class folder one of `classes` (not all
    need be there), images listed by `images_in` (recursive, symlinks followed, hidden skipped, DICOM
    included), each with its folder's label; unreadable files and folders come back as `Unreadable` items
    with their label, for the caller to count or refuse. Training, export's --eval and tumor-infer's
    --evaluate all read labelled folders through this function. UsageError for a folder that is not one."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder: give one with a subfolder per class ({', '.join(classes)})")
    present = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d for d in present if d not in classes]
    splits = [d for d in unknown if d in SPLIT_FOLDERS]
    if splits:
        raise UsageError(
            f"{root} looks like a dataset root ({', '.join(splits)}): give the split itself, e.g. {root / splits[0]}"
        )
    if not present or unknown:
        raise UsageError(
            f"{root} must hold class folders named {', '.join(classes)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    files, labels = [], []
    for name in present:
        errors: list[Unreadable] = []
        found = images_in(root / name, True, errors) + errors
        files += found
        labels += [classes.index(name)] * len(found)
    if not files:
        raise UsageError(f"no images in the class folders of {root}")
    return files, labels


def class_of(relative: str | os.PathLike, classes: list[str]) -> str | None:
    """The class of a file named relative to a dataset root or a split (`Training/glioma/patient1/x.jpg`, or
    `glioma/x.jpg`): its outermost folder that is a class, since class folders may hold sub-folders."""
    return next((part for part in Path(relative).parts[:-1] if part in classes), None)


def readable_labelled(folder: str | os.PathLike, classes: list[str]) -> tuple[list[Path], list[int]]:
    """`labelled`, for the stages that need every file (training, export's evaluation): UsageError naming the
    first file or folder that cannot be read, instead of an error row."""
    files, labels = labelled(folder, classes)
    bad = next((f for f in files if isinstance(f, Unreadable)), None)
    if bad is not None:
        raise UsageError(f"{bad.path} cannot be read: {bad.reason}")
    return files, labels
