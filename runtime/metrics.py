"""Classification metrics in plain numpy: confusion matrix, F-beta, and the summary every stage reports.

F2 weighs recall four times as much as precision, because a missed tumor costs more
than a false alarm. Every stage (training, export gate, runtime evaluation) uses these.
Tumor-specific figures (sensitivity, the screening flag) live in `tumor_runtime.tumor`.
"""

from __future__ import annotations

import numpy as np

from tumor_runtime.tumor import NEGATIVE_CLASS, tumor_sensitivity


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_scores(cm: np.ndarray, beta: float = 2.0) -> dict[str, np.ndarray]:
    """Precision, recall, F-beta ("fbeta") and support per class; 0 where undefined (scikit-learn's zero_division=0)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    b2 = beta * beta
    denom = b2 * precision + recall
    fbeta = np.divide((1 + b2) * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "fbeta": fbeta, "support": actual}


def summarize(y_true, y_pred, classes: list[str], negative: str = NEGATIVE_CLASS) -> dict:
    """All headline numbers for one labelled set, as JSON-ready values."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    scores = per_class_scores(cm, beta=2.0)
    support = scores["support"]
    # Macro over classes present in y_true or y_pred, as scikit-learn does with labels unset.
    present = (support > 0) | (cm.sum(axis=0) > 0)
    n = int(cm.sum())
    return {
        "n_images": n,
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "f2_macro": float(scores["fbeta"][present].mean()) if n else 0.0,
        "f2_weighted": float((scores["fbeta"] * support).sum() / n) if n else 0.0,
        "tumor_sensitivity": tumor_sensitivity(cm, classes, negative),
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
        "per_class": {
            name: {"precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
                   "f2": float(scores["fbeta"][i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
    }
