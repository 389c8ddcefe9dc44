"""The data pipeline (`train/data.py`): finding splits, decoding once, splitting, statistics, augmentation."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers.datasets import CLASSES, make_dataset
from tumor_runtime.imaging.transform import load_gray, normalize
from tumor_train import data
from tumor_train.config import TrainConfig
from tumor_train.data import DataError


def test_find_splits_prefers_the_first_known_name_and_treats_a_class_layout_as_train(tmp_path):
    for name in ("Train", "Training", "Val", "Validation", "Test", "Testing"):
        (tmp_path / name).mkdir()
    assert data.find_splits(tmp_path) == {
        "train": tmp_path / "Train",
        "validation": tmp_path / "Validation",
        "test": tmp_path / "Testing",
    }
    plain = make_dataset(tmp_path / "plain", per_class=1)
    assert data.find_splits(plain) == {"train": plain, "validation": None, "test": None}
    with pytest.raises(DataError) as caught:
        data.find_splits(tmp_path / "absent")
    assert str(caught.value) == (
        f"data folder {tmp_path / 'absent'} does not exist; point --data at a folder with "
        "Train/<class>/ (or Training/<class>/) or <class>/ subfolders"
    )


def test_class_names_are_sorted_visible_folders_and_need_notumor(tmp_path):
    for name in ("pituitary", "notumor", ".cache", "glioma"):
        (tmp_path / name).mkdir()
    (tmp_path / "readme.txt").write_text("x")
    assert data.class_names(tmp_path) == ["glioma", "notumor", "pituitary"]
    (tmp_path / "notumor").rmdir()
    with pytest.raises(DataError) as caught:
        data.class_names(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path} has no 'notumor' class folder (found glioma, pituitary): the kit screens "
        "for tumors against slices without one, so the data needs notumor/"
    )
    (tmp_path / "pituitary").rmdir()
    with pytest.raises(DataError) as caught:
        data.class_names(tmp_path)
    assert str(caught.value) == f"{tmp_path} needs at least two class folders, found 1"


def test_list_images_caps_each_class_and_names_an_empty_one(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3)
    files, labels = data.list_images(root, CLASSES, limit=2)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and labels.dtype == np.int64
    assert [f.name for f in files[:2]] == ["img_000.jpg", "img_001.jpg"]
    assert len(data.list_images(root, CLASSES)[0]) == 12
    for f in (root / "meningioma").iterdir():
        f.unlink()
    with pytest.raises(DataError) as caught:
        data.list_images(root, CLASSES)
    assert str(caught.value) == (
        f"class folder {root / 'meningioma'} is missing or has no images (.jpg .png .bmp .tif .dcm)"
    )
    with pytest.raises(DataError, match="must hold class folders named"):
        data.list_images(tmp_path, CLASSES)


def test_decoding_skips_and_names_unreadable_files_and_counts_progress(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=1)
    files = sorted(root.rglob("*.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    paths = [files[0], tmp_path / "bad.jpg", files[1]]

    class Bar:
        count = 0

        def update(self, n):
            self.count += n

    bar = Bar()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = data.decode_images(paths, np.array([0, 1, 2]), 40, bar, crop="brain")
    assert bar.count == 3 and split.labels.tolist() == [0, 2] and split.paths == [files[0], files[1]]
    assert np.array_equal(split.images[1], load_gray(files[1], 40, "brain"))
    assert split.skipped == [(str(tmp_path / "bad.jpg"), "not a readable image (UnidentifiedImageError)")]
    assert [str(w.message) for w in caught] == [
        f"skipping {tmp_path / 'bad.jpg'}: not a readable image (UnidentifiedImageError)"
    ]
    with pytest.warns(UserWarning, match="^skipping .*bad.jpg: not a readable image"):
        empty = data.decode_images([tmp_path / "bad.jpg"], np.array([0]), 40)
    assert empty.images.shape == (0, 40, 40) and empty.images.dtype == np.uint8


def test_require_every_class_names_the_class_left_without_images():
    split = data.ImageSet(np.zeros((2, 4, 4), np.uint8), np.array([0, 2]), [])
    with pytest.raises(DataError) as caught:
        data.require_every_class(split, ["a", "b", "c", "d"], "validation")
    assert str(caught.value) == (
        "no readable validation images for class b, d: every file of it was skipped as "
        "unreadable (see the warnings above)"
    )
    data.require_every_class(data.ImageSet(split.images, np.array([0, 1]), []), ["a", "b"], "train")


def test_subset_keeps_images_labels_and_paths_together():
    split = data.ImageSet(
        np.arange(3)[:, None, None].astype(np.uint8) * np.ones((3, 2, 2), np.uint8),
        np.array([5, 6, 7]),
        ["a", "b", "c"],
        skipped=[("x", "y")],
    )
    sub = split.subset([2, 0])
    assert sub.images[:, 0, 0].tolist() == [2, 0] and sub.labels.tolist() == [7, 5] and sub.paths == ["c", "a"]
    assert sub.skipped == [] and split.subset([]).images.shape == (0, 2, 2)


def test_relative_paths_keep_symlinked_folders(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "root")
    assert data.relative_to_root(tmp_path / "root" / "glioma" / "a.jpg", tmp_path / "root") == "glioma/a.jpg"


def test_pixel_stats_are_exact_across_chunks():
    images = np.random.default_rng(0).integers(0, 256, (7, 9, 9), dtype=np.uint8)
    mean, std = data.pixel_stats(images, chunk=3)
    scaled = images.astype(np.float64) / 255
    assert mean == pytest.approx(scaled.mean(), abs=1e-12) and std == pytest.approx(scaled.std(), abs=1e-12)
    assert data.pixel_stats(images) == pytest.approx((mean, std), abs=1e-12)


def test_to_input_is_the_torch_twin_of_the_runtime_normalisation():
    images = np.random.default_rng(1).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    x = data.to_input(torch.from_numpy(images), 0.3, 0.2)
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), normalize(images, 0.3, 0.2), atol=1e-6)


def seeded():
    return torch.Generator().manual_seed(0)


def test_augment_without_any_change_returns_the_batch():
    batch = torch.rand(3, 1, 16, 16)
    same = data.augment(batch, seeded(), rotation=0, translate=0, scale=0, hflip=0, intensity=0)
    torch.testing.assert_close(same, batch, atol=1e-5, rtol=0)


def test_augment_flip_probability_one_mirrors_every_image():
    batch = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(data.augment(batch, seeded(), 0, 0, 0, hflip=1.0), batch.flip(-1), atol=1e-5, rtol=0)


def test_augment_rotation_by_up_to_the_angle_and_reproducible_by_seed():
    batch = torch.zeros(64, 1, 33, 33)
    batch[:, :, 16, 2:31] = 1.0  # a horizontal bar through the centre
    warped = data.augment(batch, seeded(), rotation=90, translate=0, scale=0, hflip=0)
    again = data.augment(batch, seeded(), rotation=90, translate=0, scale=0, hflip=0)
    assert torch.equal(warped, again)
    rows_hit = (warped[:, 0].sum(-1) > 0.5).sum(-1)  # a rotated bar covers more rows than the flat one
    assert (rows_hit > 3).float().mean() > 0.5
    small = data.augment(batch, seeded(), rotation=1, translate=0, scale=0, hflip=0)
    assert ((small[:, 0].sum(-1) > 0.5).sum(-1) <= 3).all()  # within one degree the bar stays flat


def test_augment_shift_and_zoom_stay_within_their_bounds():
    batch = torch.zeros(32, 1, 41, 41)
    batch[:, :, 20, 20] = 1.0  # one bright pixel in the centre
    shifted = data.augment(batch, seeded(), rotation=0, translate=0.25, scale=0, hflip=0)
    peaks = [divmod(int(torch.argmax(img)), 41) for img in shifted[:, 0]]
    offsets = np.abs(np.array(peaks) - 20)
    assert 4 <= offsets.max() <= 0.25 * 41 + 1  # up to a quarter of the side (shift in [-1, 1] units x 2), and used
    zoomed = data.augment(torch.ones(8, 1, 20, 20), seeded(), rotation=0, translate=0, scale=0.5, hflip=0)
    black = (zoomed < 0.01).float().mean((1, 2, 3))
    assert (black > 0.05).any() and (black < 0.01).any()  # zoomed out: black margins; zoomed in: none


def test_augment_intensity_changes_gamma_and_contrast_but_keeps_black():
    batch = torch.rand(16, 1, 8, 8)
    batch[:, :, 0, 0] = 0.0
    out = data.augment(batch, seeded(), 0, 0, 0, 0, intensity=0.5)
    assert out.shape == batch.shape and (out[:, :, 0, 0] == 0).all() and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, batch, atol=1e-3)


def test_grouping_reuses_the_cache_only_for_whole_frames_at_227(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=1)
    split = data.decode_images(sorted(root.rglob("*.jpg")), np.arange(4), 227)
    assert data.grouping_images(split, replace(TrainConfig(), image_size=227, crop="none")) is split.images
    small = data.decode_images(split.paths, split.labels, 64, crop="brain")
    regrouped = data.grouping_images(small, replace(TrainConfig(), image_size=64, crop="brain"))
    assert np.array_equal(regrouped, split.images)


def test_split_by_list_takes_the_named_files_ignoring_comments_and_refuses_unknown_names(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2)
    split = data.decode_images(sorted(root.rglob("*.jpg")), np.repeat(np.arange(4), 2), 32)
    listing = tmp_path / "val.txt"
    listing.write_text("# validation\nglioma/img_001.jpg\n\n  notumor/img_000.jpg  \n")
    train, val = data.split_by_list(split, listing, root)
    assert sorted(map(str, val.paths)) == [str(root / "glioma/img_001.jpg"), str(root / "notumor/img_000.jpg")]
    assert len(train.paths) == 6 and not set(train.paths) & set(val.paths)
    listing.write_text("glioma/img_001.jpg\nglioma/zzz.jpg\nglioma/aaa.jpg\n")
    with pytest.raises(DataError) as caught:
        data.split_by_list(split, listing, root)
    assert str(caught.value) == "--val-list names 2 file(s) not among the training images, e.g. glioma/aaa.jpg"
    with pytest.raises(DataError, match=f"^cannot read --val-list {tmp_path / 'absent.txt'}: "):
        data.split_by_list(split, tmp_path / "absent.txt", root)


def config(root, **changes):
    return replace(TrainConfig(), data=str(root), image_size=32, crop="none", **changes)


def test_prepare_data_carves_a_grouped_validation_split_and_records_it(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=8)
    prepared = data.prepare_data(config(root, val_fraction=0.25))
    assert len(prepared.train.labels) + len(prepared.val.labels) == 32 and len(prepared.val.labels) >= 4
    assert prepared.classes == CLASSES and prepared.root == root and prepared.train_dir == root
    assert prepared.val_files == [os.path.relpath(p, root) for p in prepared.val.paths]
    assert prepared.info["duplicate_groups"] >= 0 and prepared.info["skipped_files"] == []
    assert prepared.test is None


def test_prepare_data_final_fit_and_fixed_list(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3)
    final = data.prepare_data(config(root, val_fraction=0.0))
    assert len(final.train.labels) == 12 and len(final.val.labels) == 0 and final.info["final_fit"] is True
    listing = tmp_path / "val.txt"
    listing.write_text("glioma/img_000.jpg\npituitary/img_002.jpg\n")
    fixed = data.prepare_data(config(root, val_list=str(listing), max_per_class=1))
    assert fixed.val_files == ["glioma/img_000.jpg", "pituitary/img_002.jpg"]
    assert fixed.train.labels.tolist() == [0, 1, 2, 3]  # the cap applies to what is left for training
    assert fixed.info["val_list"] == str(listing)


def test_prepare_data_reads_validation_and_test_folders_and_checks_their_classes(tmp_path):
    make_dataset(tmp_path / "r" / "Training", per_class=2)
    make_dataset(tmp_path / "r" / "Validation", per_class=1, seed=1)
    make_dataset(tmp_path / "r" / "Testing", per_class=1, seed=2)
    (tmp_path / "r" / "Testing" / "glioma" / "bad.jpg").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = data.prepare_data(config(tmp_path / "r"))
    assert (len(prepared.train.labels), len(prepared.val.labels), len(prepared.test.labels)) == (8, 4, 4)
    assert [set(s) for s in prepared.info["skipped_files"]] == [{"file", "reason"}]
    assert [s["file"] for s in prepared.info["skipped_files"]] == [str(tmp_path / "r/Testing/glioma/bad.jpg")]
    assert prepared.info["train_dir"] == str(tmp_path / "r" / "Training")
    (tmp_path / "r" / "Validation" / "extra").mkdir()
    with pytest.raises(DataError) as caught:
        data.prepare_data(config(tmp_path / "r"))
    assert str(caught.value) == (
        f"{tmp_path / 'r/Validation'} holds classes extra, glioma, meningioma, notumor, "
        f"pituitary, but {tmp_path / 'r/Training'} holds glioma, meningioma, notumor, "
        "pituitary: they must be the same"
    )


def test_prepare_data_refuses_too_few_images_to_split(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=1)
    with pytest.raises(DataError) as caught:
        data.prepare_data(config(root, val_fraction=0.05))
    assert str(caught.value).startswith("4 readable images are too few to split: ")
    assert str(caught.value).endswith("add images, give a Validation folder, or train on all with --val-fraction 0")


def test_prepare_data_counts_duplicate_groups_and_caps_each_class(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=6)
    for name in ("a", "b"):  # three byte-identical copies of one glioma slice: one group of 3
        (root / "glioma" / f"copy_{name}.jpg").write_bytes((root / "glioma" / "img_000.jpg").read_bytes())
    (root / "notumor" / "copy.jpg").write_bytes((root / "notumor" / "img_001.jpg").read_bytes())  # a pair
    prepared = data.prepare_data(config(root, val_fraction=0.25))
    assert prepared.info["duplicate_groups"] == 2 and prepared.info["images_in_duplicate_groups"] == 5
    capped = data.prepare_data(config(root, val_fraction=0.25, max_per_class=4))
    counts = np.bincount(np.concatenate([capped.train.labels, capped.val.labels]), minlength=4)
    assert counts.tolist() == [4, 4, 4, 4]


def test_a_test_folder_missing_a_readable_class_is_named_as_the_test_split(tmp_path):
    make_dataset(tmp_path / "r" / "Training", per_class=2)
    make_dataset(tmp_path / "r" / "Validation", per_class=1, seed=1)
    make_dataset(tmp_path / "r" / "Testing", per_class=1, seed=2)
    (tmp_path / "r" / "Testing" / "glioma" / "img_000.jpg").write_bytes(b"junk")  # its only image
    with warnings.catch_warnings(), pytest.raises(DataError) as caught:
        warnings.simplefilter("ignore")
        data.prepare_data(config(tmp_path / "r"))
    assert str(caught.value).startswith("no readable test images for class glioma: ")


def test_a_val_list_may_name_files_with_dot_slash_or_absolutely_inside_the_root(tmp_path):
    """The same two files named three ways: relative, "./"-relative and absolute inside the dataset root."""
    root = make_dataset(tmp_path / "d", per_class=2)
    split = data.decode_images(sorted(root.rglob("*.jpg")), np.repeat(np.arange(4), 2), 32)
    listing = tmp_path / "val.txt"
    expected = [str(root / "glioma/img_001.jpg"), str(root / "notumor/img_000.jpg")]
    for lines in (
        ["glioma/img_001.jpg", "notumor/img_000.jpg"],
        ["./glioma/img_001.jpg", "./notumor//img_000.jpg"],
        expected,
    ):
        listing.write_text("\n".join(lines) + "\n")
        _, val = data.split_by_list(split, listing, root)
        assert sorted(map(str, val.paths)) == expected, lines
    listing.write_text(f"{tmp_path / 'elsewhere.jpg'}\n")
    with pytest.raises(DataError, match="not among the training images"):
        data.split_by_list(split, listing, root)
