"""What an exported model declares about itself (`ModelInfo`, from the ONNX metadata written by tumor-export),
checked at load so that a model with metadata that would give silently wrong inputs or labels is refused."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from tumor_runtime.core.errors import ModelError, OptionError
from tumor_runtime.core.fileio import sha256_file
from tumor_runtime.core.options import finite_in_range
from tumor_runtime.core.scoring import TEMPERATURE_RANGE
from tumor_runtime.imaging.transform import check_transform
from tumor_runtime.model.ood import OodModel


@dataclass(frozen=True)
class ModelInfo:
    classes: list[str]
    input_size: int
    mean: float
    std: float
    negative_class: str
    tumor_threshold: float
    arch: str
    metadata: dict
    crop: str = "none"  # "brain": cut to the head before resizing (transform.brain_box); older models: none
    ood: OodModel | None = None  # None for models exported without the score
    temperature: float = 1.0  # probabilities are softmax(logits / temperature); models without one: 1

    @classmethod
    def from_metadata(cls, meta: dict) -> ModelInfo:
        try:
            classes = json.loads(meta["classes"])  # RecursionError below: a metadata bomb
            info = cls(
                classes=classes,
                input_size=int(meta["input_size"]),
                mean=float(meta["mean"]),
                std=float(meta["std"]),
                negative_class=str(meta["negative_class"]),
                tumor_threshold=float(meta["tumor_threshold"]),
                arch=meta.get("arch", "unknown"),
                metadata=dict(meta),
                crop=str(meta.get("crop", "none")),
                temperature=float(meta.get("temperature", 1.0)),
                ood=ood_of(meta),
            )
        except (KeyError, ValueError, TypeError, RecursionError) as exc:
            raise ModelError(f"model metadata is incomplete ({exc}); export it with tumor-export") from None
        info.check()
        return info

    @functools.cached_property
    def training_names(self) -> frozenset[str] | None:
        """The names of the images the model trained on (`tumor_runtime.core.provenance`); None if not recorded."""
        from tumor_runtime.core import provenance

        value = self.metadata.get(provenance.METADATA_KEY)
        if value is None:
            return None
        try:
            return provenance.decode(value)
        except ValueError as exc:
            raise ModelError(f"model metadata: {exc}") from None

    def check(self) -> None:
        """Refuse metadata that would give silently wrong inputs or labels."""
        if (
            not isinstance(self.classes, list)
            or len(self.classes) < 2
            or not all(isinstance(c, str) and c for c in self.classes)
            or len(set(self.classes)) != len(self.classes)
        ):
            raise ModelError(f"model metadata lists invalid classes {self.classes!r}")
        if self.negative_class not in self.classes:
            raise ModelError(
                f"model metadata negative_class {self.negative_class!r} is not one of its classes "
                f"{self.classes}: the tumor columns could not be computed"
            )
        try:
            check_transform(self.input_size, self.mean, self.std, self.crop)
        except OptionError as exc:
            raise ModelError(f"model metadata {exc}") from None
        try:
            finite_in_range("model metadata tumor_threshold", self.tumor_threshold, 0.0, 1.0)
            finite_in_range("model metadata temperature", self.temperature, *TEMPERATURE_RANGE)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        self.training_names  # a damaged record is refused at load, not at the first --evaluate


def ood_of(meta: dict) -> OodModel | None:
    """The out-of-distribution score in the metadata, None without one; ModelError for a damaged one."""
    if "ood" not in meta:
        return None
    try:
        return OodModel.from_metadata(meta["ood"])
    except ValueError as exc:
        raise ModelError(f"model metadata: {exc}") from None


def metadata_json(text: str):
    """A JSON metadata value for the card; the raw text when it is not JSON (or nested past any sense)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def model_card(info: ModelInfo, path: Path | None, tumor_threshold: float, has_cam: bool, backend: str) -> dict:
    """The model card: classes, input, threshold, precision, sha256, version and provenance (--model-info, the
    server's /models/tumor)."""
    meta = info.metadata
    card = {
        "path": str(path),
        "sha256": sha256_file(path) if path else None,
        "classes": info.classes,
        "negative_class": info.negative_class,
        "input": {
            "size": info.input_size,
            "channels": 1,
            "mean": info.mean,
            "std": info.std,
            "resize": meta.get("resize"),
            "crop": info.crop,
        },
        "tumor_threshold": tumor_threshold,
        "temperature": info.temperature,  # applied to every probability, confidence and flag
        "precision": meta.get("precision", "unknown"),
        "out_of_distribution": None
        if info.ood is None
        else {
            "method": "mahalanobis-ppca on pooled features and image descriptors",
            "flag": "ood_score >= 1",
            "thresholds": {"features": info.ood.features.threshold, "image": info.ood.image.threshold},
        },
        "arch": info.arch,
        "heatmaps": has_cam,
        "backend": backend,
        "version": None,
    }
    for key in ("trained_with", "exported_with", "calibration"):
        if key in meta:
            card[key] = metadata_json(meta[key])
    if isinstance(card.get("exported_with"), dict):
        card["version"] = card["exported_with"].get("tumor_kit")
    return card
