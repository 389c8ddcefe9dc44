"""Out-of-distribution score: does an input look like the brain MRI slices the model was trained on?

The model answers every input with one of its classes; a knee, a chest film or a photo would be
"diagnosed" as confidently as a brain slice. Two measurements, each a Mahalanobis distance
(Lee et al., NeurIPS 2018) to the nearest class mean under one shared within-class covariance,
in probabilistic-PCA form (Tipping & Bishop) so that it is cheap and small to store:

- `features`: the model's pooled features (its `features` output), scaled to unit length: what
  the network sees;
- `image`: 23 numbers describing the model's input itself (`image_descriptors`: its intensity
  histogram, left-right symmetry, edge density, how dark its border is, ...): what a slice looks
  like, which a 4-class network was never taught to notice.

    z = V^T (x - m) / sqrt(lambda)                  top-k whitened principal coordinates
    d(x) = min_c |z - z_c|^2 + |r|^2 / lambda_rest   nearest class centre, plus what the k
                                                     directions leave unexplained (r)

Each distance is divided by its own threshold, set at export so that `PASS_SHARE` of the
validation slices pass it; `ood_score` is the larger ratio, and an input is out of distribution
when it reaches 1. Fitted at export (`fit_ood`, `with_thresholds`); stored under the metadata key
"ood" (float16, base64). Models exported before this have no "ood": no flag, as before. Chosen by
measurement against the energy score, the maximum softmax probability, a k-nearest-neighbour
distance and either measurement alone (see the model card).
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass, replace

import numpy as np

from tumor_runtime.imaging.descriptors import DESCRIPTOR_LENGTH

COMPONENTS = {"features": 24, "image": 16}  # principal directions kept per measurement
MEASUREMENTS = tuple(COMPONENTS)  # ("features", "image")
PASS_SHARE = 0.9975  # per measurement: together at most 0.5 % of real validation slices are flagged
METHOD = "mahalanobis-ppca:features+image"


def unit_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _encode(array: np.ndarray) -> dict:
    a = np.ascontiguousarray(array, dtype=np.float16)
    return {"shape": list(a.shape), "float16": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(entry: dict) -> np.ndarray:
    raw = base64.b64decode(entry["float16"], validate=True)
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32).reshape(entry["shape"])


@dataclass(frozen=True)
class Gaussian:
    """One measurement's distance: class centres and a shared covariance in probabilistic-PCA form."""

    mean: np.ndarray  # (D,)
    directions: np.ndarray  # (D, k) principal directions, each divided by sqrt(its variance)
    centers: np.ndarray  # (C, k) class centres in those coordinates
    rest_variance: float  # mean variance of the directions not kept
    threshold: float  # the distance at which this measurement flags

    @functools.cached_property
    def unit(self) -> np.ndarray:
        """(D, k): the principal directions at unit length, once (per call it was a fifth of a lone request's score)."""
        return self.directions / np.linalg.norm(self.directions, axis=0, keepdims=True)

    def distance(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,): larger is less like the training data."""
        centred = np.asarray(x, np.float32) - self.mean
        z = centred @ self.directions
        residual = centred - (centred @ self.unit) @ self.unit.T
        return ((z[:, None, :] - self.centers[None]) ** 2).sum(-1).min(1) + (residual**2).sum(1) / self.rest_variance

    def to_json(self) -> dict:
        return {
            "mean": _encode(self.mean),
            "directions": _encode(self.directions),
            "centers": _encode(self.centers),
            "rest_variance": float(self.rest_variance),
            "threshold": float(self.threshold),
        }

    @classmethod
    def from_json(cls, data: dict) -> Gaussian:
        g = cls(
            _decode(data["mean"]),
            _decode(data["directions"]),
            _decode(data["centers"]),
            float(data["rest_variance"]),
            float(data["threshold"]),
        )
        d, k = g.directions.shape
        if g.mean.shape != (d,) or g.centers.ndim != 2 or g.centers.shape[1] != k:
            raise ValueError("shapes that do not fit together")
        finite = all(np.isfinite(a).all() for a in (g.mean, g.directions, g.centers))
        if not (
            finite
            and g.rest_variance > 0
            and g.threshold > 0
            and np.isfinite(g.threshold)
            and np.all(np.linalg.norm(g.directions, axis=0) > 0)
        ):
            raise ValueError("values that are not finite or not positive")
        return g


def fit_gaussian(x: np.ndarray, labels: np.ndarray, components: int) -> Gaussian:
    """Class means, and the top principal directions of the within-class scatter (threshold unset: 1)."""
    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    classes = np.unique(labels)
    class_means = np.stack([x[labels == c].mean(0) for c in classes])
    within = x - class_means[np.searchsorted(classes, labels)]
    variances, vectors = np.linalg.eigh(within.T @ within / max(1, len(x) - len(classes)))
    order = np.argsort(variances)[::-1]
    variances, vectors = variances[order], vectors[:, order]
    k = max(1, min(components, x.shape[1] - 1, len(x) - 1))
    floor = max(1e-3 * float(variances[0]), 1e-12)  # shrinkage: no direction counts as noiseless
    kept = np.maximum(variances[:k], floor)
    rest = max(float(variances[k:].mean()) if k < len(variances) else floor, floor)
    mean = x.mean(0)
    directions = vectors[:, :k] / np.sqrt(kept)
    return Gaussian(
        mean.astype(np.float32),
        directions.astype(np.float32),
        ((class_means - mean) @ directions).astype(np.float32),
        rest,
        1.0,
    )


@dataclass(frozen=True)
class OodModel:
    features: Gaussian  # on unit-length pooled features
    image: Gaussian  # on image descriptors

    def distances(self, features: np.ndarray, descriptors: np.ndarray) -> dict[str, np.ndarray]:
        """Per measurement, the (N,) distances of pooled features (N, k) and image descriptors (N, 23)."""
        return {"features": self.features.distance(unit_rows(features)), "image": self.image.distance(descriptors)}

    def score(self, features: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
        """(N,) scores: the larger of the two distances, each over its threshold; >= 1 is out of distribution."""
        d = self.distances(features, descriptors)
        return np.maximum(d["features"] / self.features.threshold, d["image"] / self.image.threshold)

    @staticmethod
    def flags(scores) -> np.ndarray:
        return np.asarray(scores) >= 1.0

    def to_metadata(self) -> str:
        return json.dumps({"method": METHOD, "features": self.features.to_json(), "image": self.image.to_json()})

    @classmethod
    def from_metadata(cls, text: str) -> OodModel:
        """ValueError for anything but a consistent, finite record (the runtime then refuses the model)."""
        try:
            data = json.loads(text)
            if data.get("method") != METHOD:
                raise ValueError(f"unknown method {data.get('method')!r}")
            model = cls(Gaussian.from_json(data["features"]), Gaussian.from_json(data["image"]))
        except (KeyError, TypeError, AttributeError, RecursionError, ValueError) as exc:
            raise ValueError(f"the 'ood' metadata is not a valid record ({exc})") from None
        if model.image.mean.shape != (DESCRIPTOR_LENGTH,):
            raise ValueError("the 'ood' metadata's image measurement has the wrong length")
        return model


def fit_ood(features: np.ndarray, descriptors: np.ndarray, labels: np.ndarray) -> OodModel:
    """Both measurements from training data (thresholds unset until `with_thresholds`), rounded as stored."""
    model = OodModel(
        fit_gaussian(unit_rows(features), labels, COMPONENTS["features"]),
        fit_gaussian(descriptors, labels, COMPONENTS["image"]),
    )
    return OodModel.from_metadata(model.to_metadata())  # float16, as the runtime will read it


def with_thresholds(
    model: OodModel,
    features: np.ndarray,
    descriptors: np.ndarray,
    pass_share: float = PASS_SHARE,
    margins: dict[str, float] | None = None,
) -> OodModel:
    """Each measurement's threshold at the `pass_share` quantile of these (validation) inputs' distances, times
    its margin: 1 when the inputs are unseen slices; from held-out images (tumor_export.heldout) when they are
    images the model trained on, which sit closer to their class than new ones."""
    distances, margins = model.distances(features, descriptors), margins or {}

    def at(gaussian: Gaussian, name: str) -> Gaussian:
        quantile = float(np.quantile(distances[name], pass_share, method="higher"))
        return replace(gaussian, threshold=quantile * margins.get(name, 1.0) * (1 + 1e-6))

    return OodModel(at(model.features, "features"), at(model.image, "image"))
