"""How the shipped model answers transformed slices (flips, rotations, contrast, gamma, two half-heads): a Markdown
table of wrong labels, tumors called notumor and out-of-distribution flags over 240 training slices (60 per class,
seeded), the figures of the model card's limitations.

    python -m benchmarks.transformed_slices [TRAINING_DIR]   # default: ../shared/data/brain-tumor-mri/Training
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-tumor-mri" / "Training"
PER_CLASS = 60


def gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def transforms(files: list[Path]) -> dict:
    """name -> f(uint8 slice (H, W), its index) -> the transformed slice."""

    def two_heads(g: np.ndarray, i: int) -> np.ndarray:  # left half of this slice, right half of another
        other = gray(files[(i + PER_CLASS + 1) % len(files)])
        return np.concatenate([g[:, : g.shape[1] // 2], other[:, other.shape[1] // 2 :]], axis=1)

    return {
        "as is": lambda g, i: g,
        "flipped left-right": lambda g, i: g[:, ::-1],
        "flipped up-down": lambda g, i: g[::-1],
        "rotated 180": lambda g, i: g[::-1, ::-1],
        "rotated 90": lambda g, i: np.rot90(g),
        "contrast x2": lambda g, i: np.clip((g.astype(float) - g.mean()) * 2 + g.mean(), 0, 255).astype(np.uint8),
        "gamma 0.5": lambda g, i: (255 * (g / 255.0) ** 0.5).astype(np.uint8),
        "two heads": two_heads,
    }


def main(root: Path = DEFAULT) -> None:
    from tumor_runtime import Classifier

    rng = np.random.default_rng(0)
    files = [f for c in CLASSES for f in rng.choice(sorted((root / c).glob("*.jpg")), PER_CLASS, replace=False)]
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    clf = Classifier.load(threads=1)
    print(
        f"| transform | wrong label (of {len(files)}) | tumors called notumor | flagged out of distribution |"
        " wrong and not flagged |"
    )
    print("|---|---|---|---|---|")
    for name, transform in transforms(files).items():
        rows = clf.predict([np.ascontiguousarray(transform(gray(f), i)) for i, f in enumerate(files)])
        predicted = np.array([CLASSES.index(r["label"]) for r in rows])
        flagged = np.array([not r["in_distribution"] for r in rows])
        wrong, missed = predicted != labels, (labels != CLASSES.index("notumor")) & (predicted == 2)
        print(f"| {name} | {wrong.sum()} | {missed.sum()} | {flagged.sum()} | {(wrong & ~flagged).sum()} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
