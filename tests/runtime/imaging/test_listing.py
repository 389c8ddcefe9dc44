"""The kit's one rule for listing images and labelled folders (`runtime/imaging/listing.py`), rule by rule."""

from __future__ import annotations

import os

import pytest

from tumor_runtime.core.errors import UsageError
from tumor_runtime.imaging.listing import (
    Unreadable,
    collect,
    images_in,
    labelled,
    readable_labelled,
)

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def touch(path, data: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def dicom_without_suffix(path):
    return touch(path, b"\0" * 128 + b"DICM" + b"\0" * 16)


@pytest.fixture
def tree(tmp_path):
    """b.jpg, a.PNG, notes.txt, DICOMDIR, .hidden.jpg, scan (DICOM, no suffix), sub/c.jpg, sub/deeper/d.tif,
    .git/e.jpg"""
    for name in [
        "b.jpg",
        "a.PNG",
        "notes.txt",
        "DICOMDIR",
        ".hidden.jpg",
        "sub/c.jpg",
        "sub/deeper/d.tif",
        ".git/e.jpg",
    ]:
        touch(tmp_path / name)
    dicom_without_suffix(tmp_path / "scan")
    return tmp_path


def names(paths, root):
    return [str(p.relative_to(root)) for p in paths]


def test_images_in_lists_images_and_dicom_sorted_and_skips_hidden_and_the_media_index(tree):
    assert names(images_in(tree, recursive=False), tree) == ["a.PNG", "b.jpg", "scan"]
    assert names(images_in(tree, recursive=True), tree) == ["a.PNG", "b.jpg", "scan", "sub/c.jpg", "sub/deeper/d.tif"]


def test_images_in_follows_a_folder_link_once_and_never_loops(tree):
    os.symlink(tree / "sub", tree / "link")
    os.symlink(tree, tree / "sub" / "up")  # a link back to the top
    assert names(images_in(tree, recursive=True), tree) == ["a.PNG", "b.jpg", "scan", "link/c.jpg", "link/deeper/d.tif"]


def test_images_in_reports_an_unreadable_subfolder_when_asked(tree):
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    (tree / "sub").chmod(0)
    try:
        errors = []
        assert names(images_in(tree, True, errors), tree) == ["a.PNG", "b.jpg", "scan"]
        assert [str(e.path) for e in errors] == [str(tree / "sub")]
        assert errors[0].reason.startswith("cannot read folder (")
        assert images_in(tree, True) == images_in(tree, True, None)
    finally:
        (tree / "sub").chmod(0o755)


def test_collect_keeps_files_as_given_and_expands_folders_in_order(tree):
    items = collect([str(tree / "notes.txt"), str(tree)], recursive=False)
    assert names(items, tree) == ["notes.txt", "a.PNG", "b.jpg", "scan"]


def test_collect_refuses_nothing_a_missing_path_and_an_empty_folder_with_a_hint(tmp_path):
    with pytest.raises(UsageError, match="^give at least one image file or folder$"):
        collect([], recursive=True)
    with pytest.raises(UsageError, match=f"^no such file or folder: {tmp_path / 'absent'}$"):
        collect([str(tmp_path / "absent")], recursive=True)
    touch(tmp_path / "empty" / "sub" / "a.jpg")
    with pytest.raises(UsageError) as caught:
        collect([str(tmp_path / "empty")], recursive=False)
    assert (
        str(caught.value)
        == f"no images (.jpg .png .bmp .tif .dcm) in {tmp_path / 'empty'} (use --recursive for subfolders)"
    )
    assert names(collect([str(tmp_path / "empty")], recursive=True), tmp_path) == ["empty/sub/a.jpg"]
    (tmp_path / "empty" / "sub" / "a.jpg").unlink()
    with pytest.raises(UsageError) as caught:
        collect([str(tmp_path / "empty")], recursive=True)
    assert str(caught.value) == f"no images (.jpg .png .bmp .tif .dcm) in {tmp_path / 'empty'}"


def test_collect_turns_a_path_it_cannot_stat_into_an_error_row(tmp_path):
    looping = tmp_path / "loop.jpg"
    os.symlink(looping, looping)  # ELOOP: it exists as a name but cannot be opened
    (item,) = collect([str(looping)], recursive=False)
    assert isinstance(item, Unreadable) and item.path == looping and item.reason.startswith("cannot open (")
    assert str(item) == str(looping)


def labelled_tree(root):
    for name in ["glioma/a.jpg", "glioma/deep/b.jpg", "notumor/c.png", "notumor/.d.jpg", ".cache/e.jpg"]:
        touch(root / name)
    return root


def test_labelled_reads_every_class_folder_recursively_with_its_label(tmp_path):
    files, labels = labelled(labelled_tree(tmp_path), CLASSES)
    assert names(files, tmp_path) == ["glioma/a.jpg", "glioma/deep/b.jpg", "notumor/c.png"]
    assert labels == [0, 0, 2]


@pytest.mark.parametrize(
    "extra, message",
    [
        ("Training", "looks like a dataset root (Training): give the split itself, e.g. {root}/Training"),
        ("tumour", "must hold class folders named glioma, meningioma, notumor, pituitary; unknown: tumour"),
    ],
)
def test_labelled_refuses_a_folder_with_other_subfolders(tmp_path, extra, message):
    labelled_tree(tmp_path)
    (tmp_path / extra).mkdir()
    with pytest.raises(UsageError) as caught:
        labelled(tmp_path, CLASSES)
    assert str(caught.value) == f"{tmp_path} " + message.format(root=tmp_path)


def test_labelled_refuses_a_file_a_folder_without_classes_and_empty_class_folders(tmp_path):
    with pytest.raises(
        UsageError,
        match="is not a folder: give one with a subfolder per class "
        r"\(glioma, meningioma, notumor, pituitary\)$",
    ):
        labelled(touch(tmp_path / "f.jpg"), CLASSES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as caught:
        labelled(tmp_path / "empty", CLASSES)
    assert (
        str(caught.value)
        == f"{tmp_path / 'empty'} must hold class folders named glioma, meningioma, notumor, pituitary"
    )
    (tmp_path / "empty" / "glioma").mkdir()
    with pytest.raises(UsageError) as caught:
        labelled(tmp_path / "empty", CLASSES)
    assert str(caught.value) == f"no images in the class folders of {tmp_path / 'empty'}"


def test_readable_labelled_names_the_first_unreadable_item(tmp_path, monkeypatch):
    labelled_tree(tmp_path)
    assert readable_labelled(tmp_path, CLASSES) == labelled(tmp_path, CLASSES)
    bad = Unreadable(tmp_path / "glioma" / "x", "cannot read folder (Permission denied)")
    monkeypatch.setattr(
        "tumor_runtime.imaging.listing.labelled", lambda folder, classes: ([tmp_path / "a.jpg", bad], [0, 0])
    )
    with pytest.raises(UsageError) as caught:
        readable_labelled(tmp_path, CLASSES)
    assert str(caught.value) == f"{bad.path} cannot be read: cannot read folder (Permission denied)"


def test_images_in_turns_a_folder_it_cannot_list_into_an_unreadable_item(tmp_path):
    errors = []
    assert images_in(tmp_path / "gone", True, errors) == []  # os.walk cannot list it: its onerror path
    assert errors == [Unreadable(tmp_path / "gone", "cannot read folder (No such file or directory)")]
    assert images_in(tmp_path / "gone", True) == []  # without a list, nothing is reported
