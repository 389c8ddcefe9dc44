"""`train/dedup.py`: near-duplicate groups, and the grouped split and k-fold built on them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image


def test_grouped_split_gives_validation_its_share_per_class():
    from tumor_train.dedup import grouped_split

    labels = np.repeat(np.arange(4), 250)
    groups = np.arange(1000) // 2 * 2  # pairs: each group of two images shares a label
    train, val = grouped_split(labels, groups, 0.15, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000
    for c in range(4):
        share = np.isin(np.flatnonzero(labels == c), val).mean()
        assert 0.15 <= share <= 0.16, share
    assert not set(groups[train]) & set(groups[val])
    again = grouped_split(labels, groups, 0.15, seed=3)
    assert [a.tolist() for a in again] == [train.tolist(), val.tolist()]
    assert grouped_split(labels, groups, 0.15, seed=4)[1].tolist() != val.tolist()


def test_grouped_split_keeps_a_huge_group_in_training():
    from tumor_train.dedup import grouped_split

    labels = np.zeros(100, int)
    groups = np.r_[np.zeros(60, int), np.arange(60, 100)]  # one group of 60, then 40 singletons
    for seed in range(10):
        train, val = grouped_split(labels, groups, 0.2, seed)
        assert set(range(60)) <= set(train)  # would overshoot the 20-image share threefold
        assert 20 <= len(val) <= 30


def test_duplicate_groups_join_copies_and_near_copies_only(tmp_path):
    from tests.helpers.datasets import synthetic_image
    from tumor_train.dedup import duplicate_groups

    rng = np.random.default_rng(0)
    images = [synthetic_image(i % 4, rng) for i in range(6)]
    images.append(images[0].copy())  # exact pixel copy -> same group as 0
    images.append(np.clip(images[1].astype(int) + rng.integers(-3, 4, images[1].shape), 0, 255).astype(np.uint8))
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    paths.append(tmp_path / "dup.png")
    paths[-1].write_bytes(paths[2].read_bytes())  # byte-identical file
    images.append(images[2])
    groups = duplicate_groups(paths, np.stack(images), 0.92)
    assert groups[6] == groups[0] and groups[7] == groups[1] and groups[8] == groups[2]
    assert len(set(groups[:6])) == 6


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 6), st.integers(0, 1000), st.lists(st.integers(1, 5), min_size=12, max_size=80))
def test_grouped_kfold_validates_each_image_once_with_groups_whole(folds, seed, group_sizes):
    from tumor_train.dedup import grouped_kfold

    groups = np.repeat(np.arange(len(group_sizes)), group_sizes)
    labels = np.repeat(np.arange(len(group_sizes)) % 4, group_sizes)
    splits = grouped_kfold(labels, groups, folds, seed)
    assert len(splits) == folds
    seen = np.concatenate([val for _, val in splits])
    assert sorted(seen.tolist()) == list(range(len(labels)))  # every image validated exactly once
    for train, val in splits:
        assert not set(groups[train]) & set(groups[val])
        assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    for c in range(4):  # each class spread evenly: fold loads differ by at most the largest group
        loads = [np.sum(labels[val] == c) for _, val in splits]
        assert max(loads) - min(loads) <= max(group_sizes)
    assert [v.tolist() for _, v in grouped_kfold(labels, groups, folds, seed)] == [v.tolist() for _, v in splits]


def test_grouped_kfold_places_big_groups_first():
    from tumor_train.dedup import grouped_kfold

    labels = np.zeros(10, int)
    groups = np.array([0, 0, 0, 0, 0, 5, 6, 7, 8, 9])  # one group of 5 and five singletons
    loads = sorted(len(val) for _, val in grouped_kfold(labels, groups, 2, seed=0))
    assert loads == [5, 5]


def test_grouped_split_guard_and_share_are_exact():
    from tumor_train.dedup import grouped_split

    labels = np.zeros(100, int)
    # target 10 images: a group of 15 (1.5x) may be taken, one of 16 may not; groups of 5 fill the rest
    for big, allowed in ((15, True), (16, False), (25, False)):
        groups = np.r_[np.zeros(big, int), big + np.arange(100 - big) // 5]
        taken = [set(range(big)) <= set(grouped_split(labels, groups, 0.1, seed)[1]) for seed in range(200)]
        assert any(taken) == allowed, big
    singles = np.arange(100)
    assert len(grouped_split(labels, singles, 0.1, 0)[1]) == 10  # stops exactly at the share


def test_duplicate_groups_across_chunks(tmp_path):
    from tests.helpers.datasets import synthetic_image
    from tumor_train.dedup import duplicate_groups, thumbnails

    rng = np.random.default_rng(3)
    images = [synthetic_image(i % 4, rng) for i in range(7)]
    images.append(images[1] // 2 + 60)  # same picture, other brightness and contrast: correlation 1
    images.append(255 - (255 - images[0]) // 2)  # and a near-copy of the very first image
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    stack = np.stack(images)
    for chunk in (1, 3, 1024):  # the result must not depend on how the correlations are chunked
        groups = duplicate_groups(paths, stack, 0.92, chunk=chunk)
        assert groups[7] == groups[1] == 1 and groups[8] == groups[0] == 0 and len(set(groups[:7])) == 7
    thumbs = thumbnails(stack)
    np.testing.assert_allclose(np.linalg.norm(thumbs, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(thumbs.mean(axis=1), 0, atol=1e-6)
    assert thumbs[1] @ thumbs[7] == pytest.approx(1, abs=1e-3)


def test_thumbnails_are_box_filtered_and_normalised():
    from tumor_train.dedup import THUMB, thumbnails

    image = np.random.default_rng(4).integers(0, 256, (96, 96)).astype(np.uint8)
    box = np.asarray(Image.fromarray(image).resize((THUMB, THUMB), Image.BOX), np.float32).ravel()
    box -= box.mean()
    np.testing.assert_allclose(thumbnails(image[None])[0], box / np.linalg.norm(box), atol=1e-6)


def test_a_correlation_equal_to_the_threshold_joins(tmp_path):
    """'At least `threshold`': a pair exactly at the threshold is one group."""
    from tests.helpers.datasets import synthetic_image
    from tumor_train.dedup import duplicate_groups, thumbnails

    rng = np.random.default_rng(3)
    images = np.stack([synthetic_image(0, rng), synthetic_image(1, rng)])
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    thumbs = thumbnails(images)
    exact = float((thumbs[:2] @ thumbs.T)[0, 1])  # the same product duplicate_groups computes
    assert len(set(duplicate_groups(paths, images, exact))) == 1
    assert len(set(duplicate_groups(paths, images, np.nextafter(exact, 2, dtype=np.float32)))) == 2


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_kfold_deals_equal_groups_in_seeded_random_order(seed):
    """Largest groups first; ties (equal-sized groups) go round the folds in the order of the seeded shuffle."""
    from tumor_train.dedup import grouped_kfold

    groups = np.concatenate([np.arange(40).repeat(2), np.arange(40, 80)])  # 40 pairs, then 40 singletons
    labels = np.zeros(len(groups), int)
    order = np.random.default_rng(seed).permutation(80)  # the shuffle grouped_kfold draws for this class
    pairs, singles = order[order < 40], order[order >= 40]
    expected = [set(pairs[k::4]) | set(singles[k::4]) for k in range(4)]
    assert [set(groups[val]) for _, val in grouped_kfold(labels, groups, 4, seed)] == expected
