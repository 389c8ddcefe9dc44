"""The screening threshold on P(tumour) = 1 - P(notumor)."""

from __future__ import annotations

import numpy as np

TARGET_SENSITIVITY = 0.995
MAX_THRESHOLD = 0.5  # never flag fewer tumours than "P(tumour) beats P(notumor)" would


def choose_threshold(tumor_probability: np.ndarray, is_tumor: np.ndarray,
                     target: float = TARGET_SENSITIVITY) -> float:
    """Highest threshold (fewest false alarms) whose tumour sensitivity on this set is >= target, capped at 0.5."""
    scores = np.sort(np.asarray(tumor_probability, dtype=np.float64)[np.asarray(is_tumor, bool)])
    if len(scores) == 0:
        return MAX_THRESHOLD
    allowed_misses = int(np.floor((1 - target) * len(scores) + 1e-9))
    return float(min(scores[allowed_misses], MAX_THRESHOLD))


def screening_stats(tumor_probability: np.ndarray, is_tumor: np.ndarray, threshold: float) -> dict:
    flagged = np.asarray(tumor_probability) >= threshold
    is_tumor = np.asarray(is_tumor, bool)
    return {"threshold": threshold,
            "sensitivity": float(flagged[is_tumor].mean()) if is_tumor.any() else None,
            "false_alarm_rate": float(flagged[~is_tumor].mean()) if (~is_tumor).any() else None}
