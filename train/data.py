"""Data pipeline: find the splits, decode every image once into a uint8 cache, augment batches.

All 5,708 slices at 227x227 fit in ~300 MB as uint8, so each is decoded once and kept in
memory. A much larger set would instead stream: a torch Dataset calling the same
`tumor_runtime.imaging.transform.load_gray` per item inside DataLoader workers, with this batch
augmentation applied after collation.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tumor_runtime.core.errors import ImageError, KitError
from tumor_runtime.imaging.transform import load_gray

TRAIN_NAMES = ("Train", "Training")
VALIDATION_NAMES = ("Validation", "Val")
TEST_NAMES = ("Testing", "Test")


class DataError(KitError):
    """A problem with the data folder, reported to the user in one line."""


@dataclass
class ImageSet:
    """Decoded images of one split: uint8 (N, H, W), integer labels (N,), and their files."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def subset(self, index) -> ImageSet:
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images[index], self.labels[index], [self.paths[i] for i in index])


def _first_existing(root: Path, names) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def find_splits(root: Path) -> dict[str, Path | None]:
    """{'train', 'validation', 'test'} folders under root; a plain DIR/<class>/ layout is all train."""
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; point --data at a folder with Train/<class>/ "
            "(or Training/<class>/) or <class>/ subfolders"
        )
    train = _first_existing(root, TRAIN_NAMES) or root
    return {
        "train": train,
        "validation": _first_existing(root, VALIDATION_NAMES),
        "test": _first_existing(root, TEST_NAMES),
    }


def class_names(train_dir: Path) -> list[str]:
    """The class folders, sorted. One must be the negative class: the tumor flag, its threshold and the
    sensitivity are all measured against it, so a model without it could not screen."""
    from tumor_runtime.core.scoring import NEGATIVE_CLASS

    names = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise DataError(f"{train_dir} needs at least two class folders, found {len(names)}")
    if NEGATIVE_CLASS not in names:
        raise DataError(
            f"{train_dir} has no '{NEGATIVE_CLASS}' class folder (found {', '.join(names)}): the kit "
            f"screens for tumors against slices without one, so the data needs {NEGATIVE_CLASS}/"
        )
    return names


def list_images(split_dir: Path, classes: list[str], limit: int = 0) -> tuple[list[Path], np.ndarray]:
    """Image files per class folder by the kit's one labelled-folder rule (`tumor_runtime.imaging.listing.labelled`);
    for training every class folder must be there, readable and non-empty. At most `limit` per class."""
    from tumor_runtime.core.errors import UsageError
    from tumor_runtime.imaging.formats import SUPPORTED_FILES
    from tumor_runtime.imaging.listing import readable_labelled

    try:
        files, labels = readable_labelled(split_dir, classes)
    except UsageError as exc:
        raise DataError(str(exc)) from None
    label_array = np.asarray(labels, dtype=np.int64)
    empty = [name for i, name in enumerate(classes) if not np.any(label_array == i)]
    if empty:
        raise DataError(f"class folder {split_dir / empty[0]} is missing or has no images {SUPPORTED_FILES}")
    keep = np.concatenate(
        [
            np.flatnonzero(label_array == i)[:limit] if limit else np.flatnonzero(label_array == i)
            for i in range(len(classes))
        ]
    )
    return [files[i] for i in keep], label_array[keep]


def require_every_class(split: ImageSet, classes: list[str], name: str) -> None:
    """After decoding: a class with no readable image would train silently without it. Refuse."""
    counts = np.bincount(split.labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DataError(
            f"no readable {name} images for class {', '.join(empty)}: every file of it was "
            "skipped as unreadable (see the warnings above)"
        )


def relative_to_root(path: str | os.PathLike, root: Path) -> str:
    """`path` relative to the dataset root without resolving symlinks (class folders may be links)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root))


def decode_images(paths: list[Path], labels: np.ndarray, size: int, progress=None, crop: str = "none") -> ImageSet:
    """Decode every file once (threads: PIL releases the GIL); unreadable files are skipped and named."""

    def decode(path):
        try:
            return load_gray(path, size, crop), None
        except (ImageError, OSError) as exc:
            return None, str(exc)

    images, kept, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for i, (image, error) in enumerate(pool.map(decode, paths)):
            if progress is not None:
                progress.update(1)
            if error is not None:
                warnings.warn(f"skipping {paths[i]}: {error}", stacklevel=2)
                skipped.append((str(paths[i]), error))
                continue
            images.append(image)
            kept.append(i)
    stacked = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return ImageSet(stacked, labels[kept], [paths[i] for i in kept], skipped)


def pixel_stats(images: np.ndarray, chunk: int = 256) -> tuple[float, float]:
    """Mean and std of the [0, 1]-scaled pixels of the training split (stored with the model).

    Exact, from a 256-bin histogram built a chunk at a time: a float64 copy of 5,000 slices
    would take 2 GB.
    """
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(images), chunk):
        counts += np.bincount(images[start : start + chunk].ravel(), minlength=256)
    levels = np.arange(256) / 255.0
    mean = float((counts * levels).sum() / counts.sum())
    return mean, float(np.sqrt((counts * (levels - mean) ** 2).sum() / counts.sum()))


def augment(
    batch: torch.Tensor,
    generator: torch.Generator,
    rotation: float,
    translate: float,
    scale: float,
    hflip: float,
    intensity: float = 0.0,
) -> torch.Tensor:
    """Random rotation, flip, shift and zoom as one affine warp per image, then gamma and contrast.

    float (N, 1, H, W) in [0, 1] in, same out; black stays black (MRI background).
    """
    n = batch.shape[0]

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-rotation, rotation) * math.pi / 180
    zoom = uniform(1 - scale, 1 + scale)
    flip = torch.where(torch.rand(n, generator=generator) < hflip, -1.0, 1.0)
    shift = torch.stack([uniform(-translate, translate), uniform(-translate, translate)], 1) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps output to input coordinates: inverse rotation and zoom, x mirrored by `flip`.
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    # Parameters are drawn on the CPU generator, so a run is the same random sequence on any device.
    grid = F.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
    warped = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if intensity <= 0:
        return warped
    gamma = uniform(1 - intensity, 1 + intensity).view(n, 1, 1, 1).to(batch.device)
    contrast = uniform(1 - intensity, 1 + intensity).view(n, 1, 1, 1).to(batch.device)
    return (warped.clamp_min(0) ** gamma * contrast).clamp(0, 1)


def to_input(images_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W), the torch twin of tumor_runtime.imaging.transform.normalize."""
    return (images_u8.unsqueeze(1).float() / 255.0 - mean) / std


@dataclass
class PreparedData:
    """Everything a run trains and validates on, decoded once."""

    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    root: Path  # the dataset root as given (absolute, symlinks kept)
    train_dir: Path
    val_files: list[str]  # validation files relative to `root`, recorded in model.pth for the export gate
    info: dict  # duplicate groups and skipped files, for metrics.json


GROUPING_SIZE = 227  # duplicates are found on whole frames at this size, whatever the recipe: same groups, same folds
GROUPING_CROP = "none"


def grouping_images(split: ImageSet, cfg) -> np.ndarray:
    """uint8 (N, 227, 227) whole frames of `split` for duplicate grouping: the cached images when the recipe
    already decodes them so, else a second decode (seconds), so that every recipe splits the data alike."""
    if cfg.image_size == GROUPING_SIZE and cfg.crop == GROUPING_CROP:
        return split.images
    return decode_images(split.paths, split.labels, GROUPING_SIZE).images


def split_by_list(images: ImageSet, val_list: Path, root: Path) -> tuple[ImageSet, ImageSet]:
    """(train, validation): validation is the files named in `val_list` (relative to the dataset root,
    one a line, # comments; "./" or an absolute path inside the root are the same name), training everything else.
    A named file that is not in the data is an error."""
    try:
        wanted = [line.strip() for line in val_list.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read --val-list {val_list}: {exc}") from None
    # Relative to the dataset root as written ("Training/glioma/x.jpg"), or "./..." or an absolute path inside it.
    named = {
        os.path.normpath(relative_to_root(w, root) if os.path.isabs(w) else w)
        for w in wanted
        if w and not w.startswith("#")
    }
    names = [relative_to_root(p, root) for p in images.paths]
    missing = named - set(names)
    if missing:
        raise DataError(
            f"--val-list names {len(missing)} file(s) not among the training images, e.g. {sorted(missing)[0]}"
        )
    in_val = np.array([n in named for n in names], dtype=bool)
    return images.subset(np.flatnonzero(~in_val)), images.subset(np.flatnonzero(in_val))


def load_split(folder: Path, classes: list[str], size: int, name: str, limit: int, crop: str) -> ImageSet:
    from tqdm import tqdm

    paths, labels = list_images(folder, classes, limit)
    with tqdm(total=len(paths), desc=f"decode {name}", unit="img", leave=False) as bar:
        split = decode_images(paths, labels, size, bar, crop)
    require_every_class(split, classes, name)
    return split


def prepare_data(cfg) -> PreparedData:
    """Decode the splits (cfg: a TrainConfig); without a Validation folder, carve one with duplicate
    groups kept whole. Every check that could fail after training is done here, before it."""
    from tumor_train.dedup import duplicate_groups, grouped_split

    root = Path(os.path.abspath(cfg.data))
    splits = find_splits(root)
    train_dir = splits["train"]
    assert train_dir is not None  # find_splits always finds the training folder
    classes = class_names(train_dir)
    if cfg.val_list and splits["validation"] is not None:  # it was ignored: the run validated on the folder
        raise DataError(f"--val-list and {splits['validation']} both name the validation images: give one of them")
    # A fixed --val-list is taken from every image; the cap then applies to what is left for training.
    limit = 0 if cfg.val_list and splits["validation"] is None else cfg.max_per_class
    train = load_split(train_dir, classes, cfg.image_size, "train", limit, cfg.crop)
    skipped = list(train.skipped)
    info: dict[str, Any] = {"train_dir": str(train_dir), "duplicate_groups": None}
    if splits["validation"] is not None:
        if class_names(splits["validation"]) != classes:
            raise DataError(
                f"{splits['validation']} holds classes {', '.join(class_names(splits['validation']))}, "
                f"but {splits['train']} holds {', '.join(classes)}: they must be the same"
            )
        val = load_split(splits["validation"], classes, cfg.image_size, "validation", 0, cfg.crop)
        skipped += val.skipped
    elif cfg.val_list:
        train, val = split_by_list(train, Path(cfg.val_list), root)
        if cfg.max_per_class:
            train = train.subset(
                np.concatenate([np.flatnonzero(train.labels == c)[: cfg.max_per_class] for c in range(len(classes))])
            )
        info["val_list"] = str(cfg.val_list)
    elif cfg.val_fraction == 0:  # final fit: every image trains; the CV report is the evidence
        train, val = train, train.subset([])
        info["final_fit"] = True
    else:
        groups = duplicate_groups(train.paths, grouping_images(train, cfg), cfg.dup_threshold)
        sizes = np.unique(groups, return_counts=True)[1]
        info["duplicate_groups"] = int((sizes > 1).sum())
        info["images_in_duplicate_groups"] = int(sizes[sizes > 1].sum())
        print(
            f"Found {info['duplicate_groups']} duplicate groups ({info['images_in_duplicate_groups']} images); "
            "each group stays on one side of the split."
        )
        train_idx, val_idx = grouped_split(train.labels, groups, cfg.val_fraction, cfg.seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    test = None
    if splits["test"] is not None:
        test = load_split(splits["test"], classes, cfg.image_size, "test", 0, cfg.crop)
        skipped += test.skipped
    if len(train.labels) == 0 or (len(val.labels) == 0 and not info.get("final_fit")):
        raise DataError(
            f"{len(train.labels) + len(val.labels)} readable images are too few to split: "
            f"{len(train.labels)} for training, {len(val.labels)} for validation (duplicate groups stay "
            "whole); add images, give a Validation folder, or train on all with --val-fraction 0"
        )
    info["skipped_files"] = [{"file": f, "reason": r} for f, r in skipped]
    return PreparedData(
        classes, train, val, test, root, train_dir, [relative_to_root(p, root) for p in val.paths], info
    )
