"""Turn command-line paths into a list of files, and labelled folders into (file, label) pairs."""

from __future__ import annotations

import os
from pathlib import Path

from tumor_runtime.preprocess import is_image_file


class UsageError(Exception):
    """Bad paths on the command line (exit code 2)."""


def images_in(folder: Path, recursive: bool) -> list[Path]:
    """Image files in `folder` (and below with `recursive`), sorted; hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [Path(root) / f for f in sorted(files) if is_image_file(Path(f))]
    return found


def collect(paths: list[str], recursive: bool) -> list[Path]:
    """Files as given (tried even without an image extension) plus the images of each folder."""
    if not paths:
        raise UsageError("give at least one image file or folder")
    files = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = images_in(path, recursive)
            if not found:
                hint = "" if recursive else " (use --recursive for subfolders)"
                raise UsageError(f"no images (.jpg .png .bmp .tif) in {path}{hint}")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}")
    return files


def labelled(folder: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    """DIR/<class>/... for --evaluate: class folders must be the model's classes."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--evaluate needs a folder with one subfolder per class, got {root}")
    present = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d for d in present if d not in classes]
    if not present or unknown:
        raise UsageError(f"{root} must hold class folders named {', '.join(classes)}"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    files, labels = [], []
    for name in present:
        found = images_in(root / name, recursive=True)
        files += found
        labels += [classes.index(name)] * len(found)
    if not files:
        raise UsageError(f"no images in the class folders of {root}")
    return files, labels
