"""Duplicate groups and the grouped, stratified validation split.

Two images are one group when their bytes are identical, or when the Pearson correlation
of their 48x48 grayscale thumbnails is at least `threshold` (default 0.92). On the shared
training set, 0.92 joins re-encoded copies and adjacent slices of one scan (checked by eye
on sampled pairs): the 5,708 images form 3,063 groups, 923 of them of two or more images
(3,568 images in all), the largest of 71; at 0.85 chaining merges
unrelated scans into one group of 1,200. Groups never straddle the split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

THUMB = 48


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 48*48), each centred and scaled to unit norm."""
    thumbs = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((THUMB, THUMB), Image.Resampling.BOX), np.float32).ravel()
            for im in images
        ]
    )
    thumbs -= thumbs.mean(axis=1, keepdims=True)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True) + 1e-8
    return thumbs


def duplicate_groups(paths: list[Path], images: np.ndarray, threshold: float, chunk: int = 1024) -> np.ndarray:
    """Group id (smallest member index) for every image."""
    uf = UnionFind(len(paths))
    first_by_hash: dict[str, int] = {}
    for i, path in enumerate(paths):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        uf.union(first_by_hash.setdefault(digest, i), i)
    thumbs = thumbnails(images)
    for start in range(0, len(thumbs), chunk):  # (chunk, N) correlations at a time keeps memory small
        corr = thumbs[start : start + chunk] @ thumbs.T
        rows, cols = np.nonzero(corr >= threshold)
        for row, col in zip(rows + start, cols):
            if col > row:
                uf.union(int(row), int(col))
    return np.array([uf.find(i) for i in range(len(paths))])


def grouped_split(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int):
    """Stratified split by whole groups: returns (train_index, val_index).

    Each group takes its majority label; groups of each class are shuffled and moved to
    validation until that class has its share of images (skipping groups that would
    overshoot the share by half, so one huge group cannot empty the training side).
    """
    rng = np.random.default_rng(seed)
    val: list[int] = []
    unique = np.unique(groups)
    group_label = np.array([np.bincount(labels[groups == g]).argmax() for g in unique])
    for label in np.unique(labels):
        target = val_fraction * np.sum(labels == label)
        taken = 0
        for g in rng.permutation(unique[group_label == label]):
            if taken >= target:
                break
            members = np.flatnonzero(groups == g)
            if taken + len(members) > 1.5 * target:
                continue  # a group this big would distort the split: it stays in training
            val.extend(members)
            taken += len(members)
    is_val = np.zeros(len(labels), bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def grouped_kfold(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold by whole groups: [(train_index, val_index)] per fold.

    Each group takes its majority label; the groups of each class, largest first (ties in
    seeded random order), go to the fold that holds the fewest images of that class so far.
    Every image is validated exactly once and no group straddles a fold's split.
    """
    rng = np.random.default_rng(seed)
    unique, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    group_label = np.array([np.bincount(labels[inverse == g]).argmax() for g in range(len(unique))])
    fold_of_group = np.zeros(len(unique), np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(group_label == label))
        members = members[np.argsort(-sizes[members], kind="stable")]
        load = np.zeros(folds, np.int64)
        for g in members:
            fold = int(np.argmin(load))
            fold_of_group[g] = fold
            load[fold] += sizes[g]
    fold_of_image = fold_of_group[inverse]
    return [(np.flatnonzero(fold_of_image != k), np.flatnonzero(fold_of_image == k)) for k in range(folds)]
