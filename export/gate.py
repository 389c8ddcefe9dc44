"""The parity gate: int8 must keep FP32's macro F2 within `max_drop`, or layers go back to float."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tumor_runtime.metrics import summarize
from tumor_export.quantize import quantizable_nodes, quantize_int8


@dataclass
class Scored:
    probabilities: np.ndarray  # (N, classes)
    f2: float
    summary: dict = field(repr=False)


def score(model_path: Path, inputs: np.ndarray, labels: np.ndarray, classes: list[str]) -> Scored:
    """Run an ONNX file on float inputs (N, 1, H, W) and score it against `labels`."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    probs = np.concatenate([session.run(["probabilities"], {"image": inputs[i:i + 64]})[0]
                            for i in range(0, len(inputs), 64)])
    summary = summarize(labels, probs.argmax(1), classes)
    return Scored(probs, summary["f2_macro"], summary)


def agreement(a: Scored, b: Scored) -> float:
    return float((a.probabilities.argmax(1) == b.probabilities.argmax(1)).mean())


def quantize_with_gate(prepared: Path, out_path: Path, reader, fp32: Scored, eval_inputs: np.ndarray,
                       labels: np.ndarray, classes: list[str], max_drop: float, method: str, activation: str,
                       max_float_nodes: int = 3, log=print) -> tuple[Scored, list[str], list[dict]]:
    """Quantize; while F2 drops more than `max_drop`, greedily keep in float the layer whose
    exclusion helps most (one trial per remaining layer). Returns (int8 score, float nodes, trials)."""
    keep: list[str] = []
    quantize_int8(prepared, out_path, reader, method, activation, keep)
    best = score(out_path, eval_inputs, labels, classes)
    trials = [{"keep_float": [], "f2": best.f2}]
    while fp32.f2 - best.f2 > max_drop and len(keep) < max_float_nodes:
        log(f"int8 F2 {best.f2:.4f} vs FP32 {fp32.f2:.4f}: searching for a layer to keep in float")
        candidates = []
        for node in [n for n in quantizable_nodes(prepared) if n not in keep]:
            quantize_int8(prepared, out_path, reader, method, activation, keep + [node])
            result = score(out_path, eval_inputs, labels, classes)
            trials.append({"keep_float": keep + [node], "f2": result.f2})
            candidates.append((result.f2, node, result))
        if not candidates:
            break
        _, node, best = max(candidates, key=lambda c: (c[0], c[1]))
        keep.append(node)
        quantize_int8(prepared, out_path, reader, method, activation, keep)  # later trials overwrote the file
    return best, keep, trials
