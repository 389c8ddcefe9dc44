"""The result row schema: one dict per input, as tumor-infer's JSON rows and the server's answers (path,
label, confidence, probabilities, tumor_probability, tumor, ood_score, in_distribution, error; cam with heat-maps)."""

from __future__ import annotations

import numpy as np

from tumor_runtime.core import scoring
from tumor_runtime.inference.heatmap import normalized_cam
from tumor_runtime.model.info import ModelInfo

NO_CAM = (
    "this model has no 'cam' output, so it cannot give heat-maps: export it again with tumor-export "
    "(compact models; the reference AlexNet has no global-average-pool head)"
)


OOD_SCORE_CAP = 1e30  # the ood_score written for one too far out to be a finite float (or NaN): flagged


def record(
    info: ModelInfo,
    tumor_threshold: float,
    path: str | None,
    probs: np.ndarray | None,
    error: str | None = None,
    cams: np.ndarray | None = None,
    ood_score: float | None = None,
) -> dict:
    """One result row. `probs`: (classes,), None for an error row. `cams`: (classes, h, w) with heat-maps.
    `ood_score`/`in_distribution`: None when the model has no out-of-distribution score (exported before it)
    or the row is an error."""
    if probs is None:
        rec = {
            "path": path,
            "label": None,
            "confidence": None,
            "probabilities": None,
            "tumor_probability": None,
            "tumor": None,
            "ood_score": None,
            "in_distribution": None,
            "error": error,
        }
        return rec | ({"cam": None} if cams is not None else {})
    best = int(np.argmax(probs))
    tumor_p = scoring.tumor_probability(probs, info.classes, info.negative_class)
    if ood_score is not None and not np.isfinite(ood_score):  # overflowed far outside: JSON has no Infinity
        ood_score = OOD_SCORE_CAP
    inside = None if ood_score is None or info.ood is None else not bool(info.ood.flags(ood_score))
    return {
        "path": path,
        "label": info.classes[best],
        "confidence": float(probs[best]),
        "probabilities": {c: float(p) for c, p in zip(info.classes, probs)},
        "tumor_probability": None if tumor_p is None else float(tumor_p),
        "tumor": None if tumor_p is None else bool(scoring.flag(tumor_p, tumor_threshold)),
        "ood_score": None if ood_score is None else float(ood_score),
        "in_distribution": inside,
        "error": None,
    } | ({} if cams is None else {"cam": normalized_cam(cams, best, info.input_size)})
