"""Regenerate artifacts/calibration.png: the reliability diagram of a recipe's out-of-fold predictions before and
after the temperature that `tumor-export --cv` fits on them (the shipped model's, when CV_DIR is its recipe's).

python tools/reliability_figure.py CV_DIR [CHECKPOINT] [OUT]

CV_DIR is the `tumor-train --cv` run; CHECKPOINT (default artifacts/model.pth) names the classes and preprocessing
the folds must share. Each fold model is exported and run on its own validation images, as the export does.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from tumor_export.heldout import measure
from tumor_runtime.core import scoring
from tumor_train.model_file import load_model
from tumor_train.plots import plt

REPO = Path(__file__).resolve().parents[1]


def main(cv_dir: str, checkpoint: str = str(REPO / "artifacts" / "model.pth"), out: str = "") -> None:
    out = out or str(REPO / "artifacts" / "calibration.png")
    _, ckpt = load_model(checkpoint)
    with tempfile.TemporaryDirectory() as scratch:
        held = measure(Path(cv_dir), ckpt, Path(scratch), 0, log=lambda message: print(message, file=sys.stderr))
    temperature = scoring.fit_temperature(held.probabilities, held.labels)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, t, colour in (("before", 1.0, "tab:red"), (f"after T = {temperature:.3f}", temperature, "tab:blue")):
        p = scoring.calibrated(held.probabilities, t).astype(np.float64)
        confidence, accuracy, share = scoring.reliability_bins(p, held.labels)
        ece = scoring.expected_calibration_error(p, held.labels)
        ax.plot(confidence, accuracy, marker="o", color=colour, label=f"{name}: ECE {ece:.4f}")
        ax.scatter(confidence, accuracy, s=2000 * share, color=colour, alpha=0.2)  # area: the bin's share
    ax.set(
        xlim=(0.25, 1.0),
        ylim=(0.25, 1.02),
        xlabel="confidence (mean of the bin)",
        ylabel="accuracy in the bin",
        title=f"Out-of-fold predictions, {len(held.labels):,} images ({scoring.ECE_BINS} bins)",
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}: temperature {temperature:.4f} from {len(held.labels)} out-of-fold predictions in {cv_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:])
