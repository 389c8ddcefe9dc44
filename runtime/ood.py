"""Out-of-distribution score: how far a slice's pooled features lie from the training slices'.

The model answers every input with one of its classes; a knee, a chest film or a photo would be
"diagnosed" as confidently as a brain slice. The score flags what does not look like the training
data. It is a Mahalanobis distance (Lee et al., NeurIPS 2018) to the nearest class mean under one
shared within-class covariance, in probabilistic-PCA form (Tipping & Bishop) so that it is cheap
and small to store:

    z = V^T (f - m) / sqrt(lambda)                  the top-k whitened principal coordinates
    score = min_c |z - z_c|^2 + |r|^2 / lambda_rest  nearest class centre, plus what the k
                                                     directions do not explain (r), scaled by the
                                                     mean of the remaining eigenvalues

f: the model's `features` output (N, D); m: the training mean; V (D, k), lambda (k,): the top
principal directions and variances of the training features around their class means; z_c: the
class centres. Fitted at export on training images (`fit`), with the threshold set on validation
images so that a chosen share of real slices pass (`threshold_for`); stored in the ONNX metadata
under "ood" (float16, base64). Models exported before this have no "ood" key: no flag, as before.
Chosen over the energy score (Liu et al. 2020) and the maximum softmax probability by measurement:
see the model card.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

COMPONENTS = 24  # principal directions kept: 24 x 320 float16 weights add about 20 KB to the model file
PASS_SHARE = 0.995  # at export, the threshold lets this share of the validation slices pass


def _encode(array: np.ndarray) -> dict:
    a = np.ascontiguousarray(array, dtype=np.float16)
    return {"shape": list(a.shape), "float16": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(entry: dict) -> np.ndarray:
    raw = base64.b64decode(entry["float16"], validate=True)
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32).reshape(entry["shape"])


@dataclass(frozen=True)
class OodModel:
    mean: np.ndarray  # (D,) training feature mean
    directions: np.ndarray  # (D, k) principal directions, each divided by sqrt(its variance)
    centers: np.ndarray  # (C, k) class centres in those whitened coordinates
    rest_variance: float  # mean variance of the directions not kept
    threshold: float  # scores at or above it are out of distribution

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) scores; larger is less like the training slices."""
        centred = np.asarray(features, np.float32) - self.mean
        z = centred @ self.directions  # (N, k)
        # the part of `centred` the k directions do not explain: subtract its projection
        unit = self.directions / np.linalg.norm(self.directions, axis=0, keepdims=True)
        residual = centred - (centred @ unit) @ unit.T
        nearest = ((z[:, None, :] - self.centers[None]) ** 2).sum(-1).min(1)
        return nearest + (residual ** 2).sum(1) / self.rest_variance

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def to_metadata(self) -> str:
        return json.dumps({"method": "mahalanobis-ppca", "features": "features", "mean": _encode(self.mean),
                           "directions": _encode(self.directions), "centers": _encode(self.centers),
                           "rest_variance": float(self.rest_variance), "threshold": float(self.threshold)})

    @classmethod
    def from_metadata(cls, text: str, width: int | None = None) -> "OodModel":
        """ValueError for anything but a consistent, finite record (the caller refuses the model)."""
        try:
            data = json.loads(text)
            if data.get("method") != "mahalanobis-ppca":
                raise ValueError(f"unknown method {data.get('method')!r}")
            model = cls(_decode(data["mean"]), _decode(data["directions"]), _decode(data["centers"]),
                        float(data["rest_variance"]), float(data["threshold"]))
        except (KeyError, TypeError, AttributeError, RecursionError, ValueError) as exc:
            raise ValueError(f"the 'ood' metadata is not a valid record ({exc})") from None
        model.check(width)
        return model

    def check(self, width: int | None = None) -> None:
        d, k = self.directions.shape if self.directions.ndim == 2 else (-1, -1)
        if self.mean.shape != (d,) or self.centers.ndim != 2 or self.centers.shape[1] != k or (width and d != width):
            raise ValueError("the 'ood' metadata's shapes do not fit together or the model's features")
        arrays_finite = all(np.isfinite(a).all() for a in (self.mean, self.directions, self.centers))
        if not (arrays_finite and np.isfinite(self.threshold) and self.rest_variance > 0
                and np.all(np.linalg.norm(self.directions, axis=0) > 0)):
            raise ValueError("the 'ood' metadata holds values that are not finite or not positive")


def fit(features: np.ndarray, labels: np.ndarray, components: int = COMPONENTS) -> OodModel:
    """The score's parameters from training features (N, D) and their class labels (N,); threshold 0 until
    `threshold_for` sets it."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    class_means = np.stack([features[labels == c].mean(0) for c in classes])
    within = features - class_means[np.searchsorted(classes, labels)]
    covariance = within.T @ within / max(1, len(features) - len(classes))
    variances, vectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(variances)[::-1]
    variances, vectors = np.clip(variances[order], 1e-12, None), vectors[:, order]
    k = min(components, features.shape[1] - 1, len(features) - 1)
    floor = 1e-3 * variances[0]  # shrinkage: no direction may count as (near) noiseless
    kept = np.maximum(variances[:k], floor)
    rest = max(float(variances[k:].mean()) if k < len(variances) else floor, floor)
    mean = features.mean(0)
    directions = vectors[:, :k] / np.sqrt(kept)
    return OodModel(mean.astype(np.float32), directions.astype(np.float32),
                    ((class_means - mean) @ directions).astype(np.float32), rest, 0.0)


def threshold_for(model: OodModel, features: np.ndarray, pass_share: float = PASS_SHARE) -> OodModel:
    """The same model with the threshold that lets `pass_share` of these (validation) features pass."""
    from dataclasses import replace

    scores = model.score(features)
    return replace(model, threshold=float(np.quantile(scores, pass_share, method="higher")) * (1 + 1e-6))
