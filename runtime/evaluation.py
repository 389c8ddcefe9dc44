"""Score classifier records against labels: what `tumor-infer --evaluate`, the benchmarks and a server share.

Beside the argmax figures (macro/weighted F2, accuracy, tumor sensitivity) it reports
the screening flag at the threshold in use: its sensitivity and false-alarm rate.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tumor_runtime import tumor
from tumor_runtime.metrics import summarize

SUMMARY_KEYS = ("f2_macro", "f2_weighted", "accuracy", "tumor_sensitivity", "confusion_matrix", "classes",
                "n_images", "per_class")


def evaluate_records(records: Iterable[dict], labels: Iterable[int], classes: list[str],
                     negative: str = tumor.NEGATIVE_CLASS, threshold: float = tumor.MAX_THRESHOLD) -> dict:
    """Records (as Classifier.predict gives) zipped with true label indices -> the evaluation summary.

    Records with an error are counted in `n_errors` and left out of every figure; records flagged out of
    distribution are counted in `n_out_of_distribution` and still scored (they have a class).
    """
    y_true, y_pred, tumor_p, failed, flagged = [], [], [], 0, 0
    for rec, label in zip(records, labels):
        if rec["error"]:
            failed += 1
            continue
        flagged += rec.get("in_distribution") is False
        y_true.append(int(label))
        y_pred.append(classes.index(rec["label"]))
        tumor_p.append(rec["tumor_probability"] if rec["tumor_probability"] is not None else np.nan)
    stats = summarize(y_true, y_pred, classes, negative)
    result = {key: stats[key] for key in SUMMARY_KEYS} | {"n_errors": failed, "n_out_of_distribution": flagged}
    if negative in classes:
        is_tumor = np.asarray(y_true, dtype=np.int64) != classes.index(negative)
        result["screening"] = tumor.screening_stats(np.asarray(tumor_p, dtype=np.float64), is_tumor, threshold)
    return result
