"""Class activation heat-maps, torch-free: from the model's `cam` output to an overlay PNG.

The compact model ends in global average pooling and one linear layer, so the map of class
c is exact: cam_c = sum_k W[c, k] * A_k over the last feature map A (13x13 at 227 px). The
export puts it in the ONNX graph as the output `cam` (N, classes, 13, 13); here it is
clipped at zero, scaled to [0, 1] and upsampled to the model's input resolution.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tumor_runtime.imaging.formats import HEATMAP_SUFFIX

ALPHA = 0.45  # weight of the colour map over the slice


def normalized_cam(maps: np.ndarray, class_index: int, size: int) -> np.ndarray:
    """maps (classes, h, w) -> float32 (size, size) in [0, 1]: the class's positive evidence, bilinear."""
    cam = np.maximum(np.asarray(maps[class_index], dtype=np.float32), 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    upsampled = np.asarray(Image.fromarray(cam).resize((size, size), Image.Resampling.BILINEAR))  # mode "F": float32
    # Bilinear weights keep values in [0, 1] but for float rounding: the clip is a guard (its bounds are not mutated).
    return np.clip(upsampled, 0.0, 1.0)  # pragma: no mutate (guard)


def colour_map(values: np.ndarray) -> np.ndarray:
    """float [0, 1] (H, W) -> uint8 RGB (H, W, 3): dark blue -> cyan -> yellow -> red (a 'jet'-like ramp)."""
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 255], [255, 255, 0], [255, 128, 0], [200, 0, 0]])
    position = np.clip(values, 0, 1) * (len(stops) - 1)
    low = np.minimum(np.floor(position).astype(int), len(stops) - 2)  # 1.0 blends the last two stops
    frac = (position - low)[..., None]
    return np.rint(stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def overlay(gray: np.ndarray, cam: np.ndarray, legend: str) -> Image.Image:
    """The slice in gray with the heat-map blended on top and a one-line legend underneath."""
    base = np.repeat(gray[..., None], 3, axis=2)  # (H, W, 3) uint8
    weight = ALPHA * cam[..., None]  # (H, W, 1) float32 in [0, ALPHA]
    blended = base * (1 - weight) + colour_map(cam) * weight  # a convex blend: stays within 0..255
    picture = Image.fromarray(np.rint(blended).astype(np.uint8))
    canvas = Image.new("RGB", (picture.width, picture.height + 18), "black")
    canvas.paste(picture)
    ImageDraw.Draw(canvas).text((4, picture.height + 3), legend, fill="white")  # pragma: no mutate (layout)
    return canvas


def legend_for(rec: dict) -> str:
    tumor_p = rec.get("tumor_probability")
    return f"{rec['label']} {rec['confidence']:.2f}" + ("" if tumor_p is None else f" | P(tumor) {tumor_p:.2f}")


def overlay_png(rec: dict) -> bytes | None:
    """The overlay PNG of a record from `predict(..., heatmaps=True)`, None for an error row. Takes the
    record's "cam" and "slice" out, so what remains is the plain JSON record."""
    cam, gray = rec.pop("cam", None), rec.pop("slice", None)
    if rec["error"] or cam is None or gray is None:
        return None
    buffer = io.BytesIO()
    overlay(gray, cam, legend_for(rec)).save(buffer, format="PNG")
    return buffer.getvalue()


MAX_STEM_BYTES = 160  # + ".<hash>.heatmap.png" and atomic_path's ".<name>.<random>.tmp" stay under 255 bytes


def heatmap_name(path: str) -> str:
    """A file name after the input that cannot collide (scan.jpg in two folders -> two names), short enough
    for any file system, and ending in HEATMAP_SUFFIX so that listings never take an overlay for a slice."""
    digest = hashlib.sha1(os.fsencode(os.path.abspath(path))).hexdigest()[:8]
    stem = Path(path).name.encode("utf-8", "replace").decode("utf-8").replace("#", "-")
    stem = stem.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", "ignore")
    return f"{stem}.{digest}{HEATMAP_SUFFIX}"
