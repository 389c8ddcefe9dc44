"""Scoring, in one place: the confusion matrix, F-beta and the summary every stage reports, P(tumor), the
screening flag and its threshold, and the evaluation of result rows against labels.

F2 weighs recall four times as much as precision, because a missed tumor costs more than a false alarm.
P(tumor) = 1 - P(notumor): the probability that the slice shows any tumor class. The flag is
P(tumor) >= threshold. The threshold is chosen at export on validation data as the highest value that
still catches `TARGET_SENSITIVITY` of the tumor slices, capped at 0.5 so the flag is never less
sensitive than "P(tumor) beats P(notumor)". `evaluate_records` is what `tumor-infer --evaluate`, the
benchmarks and a server share: beside the argmax figures it reports the screening flag at the
threshold in use (its sensitivity and false-alarm rate).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

NEGATIVE_CLASS = "notumor"
TARGET_SENSITIVITY = 0.995
MAX_THRESHOLD = 0.5
DEGENERATE_FALSE_ALARMS = 0.25  # a flag raised on more no-tumor slices than this screens nothing out
THRESHOLD_RULE = (
    f"the highest P(tumor) threshold that still flags {TARGET_SENSITIVITY:.1%} of the evaluation "
    f"images' tumor slices, at most {MAX_THRESHOLD}"
)  # --help, the export's report and the README


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
    return {
        "threshold": float(threshold),
        "sensitivity": float(flagged[is_tumor].mean()) if is_tumor.any() else None,
        "false_alarm_rate": float(flagged[~is_tumor].mean()) if (~is_tumor).any() else None,
    }


def threshold_warning(stats: dict) -> str | None:
    """A warning when the chosen threshold makes a useless flag (most no-tumor slices flagged), else None."""
    alarms = stats.get("false_alarm_rate")
    if alarms is None or alarms <= DEGENERATE_FALSE_ALARMS:
        return None
    return (
        f"Warning: at tumor threshold {stats['threshold']:.4f} the flag is raised on {alarms:.0%} of no-tumor "
        "slices: the model does not separate tumor from no tumor on these images (train longer, or check "
        "the labels); tumor-infer --tumor-threshold overrides it"
    )


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
            name: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f2": float(scores["fbeta"][i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }


SUMMARY_KEYS = (
    "f2_macro",
    "f2_weighted",
    "accuracy",
    "tumor_sensitivity",
    "confusion_matrix",
    "classes",
    "n_images",
    "per_class",
)


def evaluate_records(
    records: Iterable[dict],
    labels: Iterable[int],
    classes: list[str],
    negative: str = NEGATIVE_CLASS,
    threshold: float = MAX_THRESHOLD,
) -> dict:
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
        result["screening"] = screening_stats(np.asarray(tumor_p, dtype=np.float64), is_tumor, threshold)
    return result


TEMPERATURE_RANGE = (0.05, 20.0)  # a temperature outside is a fit gone wrong, not a calibration
ECE_BINS = 15


def calibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """(N, classes) softmax outputs -> softmax(logits / temperature), computed from the probabilities themselves
    (log p differs from the logits by a per-row constant): float32, the same shape. Temperature 1: unchanged."""
    if temperature == 1.0:  # every model without a temperature, on every batch: no float64 copy
        return np.asarray(probabilities, np.float32)
    p = np.asarray(probabilities, np.float64)
    with np.errstate(divide="ignore"):
        scaled = np.log(np.clip(p, 0.0, None)) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    q = np.exp(scaled)
    return (q / q.sum(axis=-1, keepdims=True)).astype(np.float32)


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty one of `bins` equal-width confidence bins: (mean confidence, accuracy, share of rows)."""
    p = np.asarray(probabilities, np.float64)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    kept = [b for b in range(bins) if np.any(which == b)]
    return (
        np.array([confidence[which == b].mean() for b in kept]),
        np.array([correct[which == b].mean() for b in kept]),
        np.array([np.mean(which == b) for b in kept]),
    )


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """|confidence - accuracy| averaged over `bins` equal-width confidence bins, weighted by their share of rows."""
    confidence, accuracy, share = reliability_bins(probabilities, labels, bins)
    return float(np.sum(np.abs(confidence - accuracy) * share))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` (held-out rows only: never the
    images a model trained on), by golden-section search over log T in TEMPERATURE_RANGE."""
    labels = np.asarray(labels)

    def nll(log_t: float) -> float:
        q = calibrated(probabilities, float(np.exp(log_t))).astype(np.float64)
        return float(-np.log(np.clip(q[np.arange(len(labels)), labels], 1e-12, None)).mean())

    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) <= nll(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))
