"""Tumor decisions, in one place: P(tumor), the screening flag, its threshold and sensitivity.

P(tumor) = 1 - P(notumor): the probability that the slice shows any tumor class. The
flag is P(tumor) >= threshold. The threshold is chosen at export on validation data as
the highest value that still catches `TARGET_SENSITIVITY` of the tumor slices, capped
at 0.5 so the flag is never less sensitive than "P(tumor) beats P(notumor)".
"""

from __future__ import annotations

import numpy as np

NEGATIVE_CLASS = "notumor"
TARGET_SENSITIVITY = 0.995
MAX_THRESHOLD = 0.5
DEGENERATE_FALSE_ALARMS = 0.25  # a flag raised on more no-tumor slices than this screens nothing out
THRESHOLD_RULE = (f"the highest P(tumor) threshold that still flags {TARGET_SENSITIVITY:.1%} of the evaluation "
                  f"images' tumor slices, at most {MAX_THRESHOLD}")  # --help, the export's report and the README


def tumor_probability(probabilities: np.ndarray, classes: list[str], negative: str = NEGATIVE_CLASS):
    """(N, classes) or (classes,) probabilities -> P(tumor) of the same leading shape; None without `negative`."""
    if negative not in classes:
        return None
    return 1.0 - np.asarray(probabilities, dtype=np.float64)[..., classes.index(negative)]


def flag(tumor_p, threshold: float):
    """The screening decision: True where P(tumor) reaches the threshold."""
    return np.asarray(tumor_p) >= threshold


def tumor_sensitivity(cm: np.ndarray, classes: list[str], negative: str = NEGATIVE_CLASS) -> float | None:
    """Share of tumor images (rows of any class but `negative`) predicted as any tumor class."""
    if negative not in classes:
        return None
    neg = classes.index(negative)
    tumor_rows = np.delete(np.asarray(cm), neg, axis=0)
    total = tumor_rows.sum()
    return float((total - tumor_rows[:, neg].sum()) / total) if total else None


def choose_threshold(tumor_p: np.ndarray, is_tumor: np.ndarray, target: float = TARGET_SENSITIVITY) -> float:
    """Highest threshold (fewest false alarms) whose sensitivity on this set is >= target, capped at 0.5."""
    scores = np.sort(np.asarray(tumor_p, dtype=np.float64)[np.asarray(is_tumor, bool)])
    if len(scores) == 0:
        return MAX_THRESHOLD
    allowed_misses = int(np.floor((1 - target) * len(scores) + 1e-9))
    return float(min(scores[allowed_misses], MAX_THRESHOLD))


def screening_stats(tumor_p: np.ndarray, is_tumor: np.ndarray, threshold: float) -> dict:
    """Sensitivity and false-alarm rate of the flag at `threshold` (None where a side is empty)."""
    flagged = flag(tumor_p, threshold)
    is_tumor = np.asarray(is_tumor, bool)
    return {"threshold": float(threshold),
            "sensitivity": float(flagged[is_tumor].mean()) if is_tumor.any() else None,
            "false_alarm_rate": float(flagged[~is_tumor].mean()) if (~is_tumor).any() else None}


def threshold_warning(stats: dict) -> str | None:
    """A warning when the chosen threshold makes a useless flag (most no-tumor slices flagged), else None."""
    alarms = stats.get("false_alarm_rate")
    if alarms is None or alarms <= DEGENERATE_FALSE_ALARMS:
        return None
    return (f"Warning: at tumor threshold {stats['threshold']:.4f} the flag is raised on {alarms:.0%} of no-tumor "
            "slices: the model does not separate tumor from no tumor on these images (train longer, or check "
            "the labels); tumor-infer --tumor-threshold overrides it")
