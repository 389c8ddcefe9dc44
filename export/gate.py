"""The parity gate: int8 must keep FP32's macro F2 within `max_drop`, or layers go back to float.

`search` is the decision alone, a pure function over a `trial` callback (which quantizes
with a set of layers kept in float and scores the result), so it is tested with a fake
scorer; `quantize_with_gate` wires it to ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tumor_export.static_int8 import describe_nodes, quantizable_nodes, quantize_int8
from tumor_runtime.core.scoring import summarize
from tumor_runtime.model.session import create_session, output_name


@dataclass
class Scored:
    probabilities: np.ndarray  # (N, classes)
    f2: float
    summary: dict = field(repr=False, default_factory=dict)


def score(model_path: Path, inputs: np.ndarray, labels: np.ndarray, classes: list[str]) -> Scored:
    """Run an ONNX file on float inputs (N, 1, H, W) and score it against `labels`."""
    session = create_session(model_path)
    name, output = session.get_inputs()[0].name, output_name(session)
    probs = np.concatenate([session.run([output], {name: inputs[i : i + 64]})[0] for i in range(0, len(inputs), 64)])
    summary = summarize(labels, probs.argmax(1), classes)
    return Scored(probs, summary["f2_macro"], summary)


def agreement(a: Scored, b: Scored) -> float:
    return float((a.probabilities.argmax(1) == b.probabilities.argmax(1)).mean())


def search(
    trial: Callable[[frozenset[str]], Scored],
    candidates: list[str],
    reference_f2: float,
    max_drop: float,
    max_float: int = 3,
) -> tuple[Scored, list[str], list[dict]]:
    """Greedy fallback: start fully int8; while F2 is more than `max_drop` below `reference_f2` and fewer
    than `max_float` layers are in float, try each remaining candidate in float and keep the one that
    scores best (ties: the later name). Returns (chosen score, layers kept in float, every trial)."""
    keep: list[str] = []
    best = trial(frozenset())
    trials = [{"keep_float": [], "f2": best.f2}]
    while reference_f2 - best.f2 > max_drop and len(keep) < max_float:
        results = []
        for node in [n for n in candidates if n not in keep]:
            result = trial(frozenset(keep + [node]))
            trials.append({"keep_float": keep + [node], "f2": result.f2})
            results.append((result.f2, node, result))
        if not results:
            break
        _, node, best = max(results, key=lambda r: (r[0], r[1]))
        keep.append(node)
    return best, keep, trials


@dataclass(frozen=True)
class Evaluation:
    """The labelled images the gate scores each candidate on."""

    inputs: np.ndarray  # float32 (N, 1, S, S), normalised as the model expects
    labels: np.ndarray  # (N,) class indices
    classes: list[str]


@dataclass(frozen=True)
class GateSettings:
    """How the int8 model is made and when it passes."""

    max_drop: float  # the largest macro-F2 drop of int8 below FP32 that passes
    method: str  # calibration: minmax, entropy or percentile
    activation: str  # activation type: u8 or s8
    max_float_nodes: int = 3  # layers the gate may keep in float before it gives up


def quantize_with_gate(
    prepared: Path, out_path: Path, reader, fp32: Scored, evaluation: Evaluation, settings: GateSettings, log=print
) -> tuple[Scored, list[str], list[dict]]:
    """Quantize `prepared` into `out_path` behind the gate; the file left there is the chosen one. Each retry
    is logged with its round, its count within the round and the layer in words (`describe_nodes`)."""
    written: list[frozenset] = []
    candidates, labels_of = quantizable_nodes(prepared), describe_nodes(prepared)
    tried: dict[int, int] = {}

    def trial(keep: frozenset) -> Scored:
        if keep:
            round_ = len(keep)
            tried[round_] = tried.get(round_, 0) + 1
            log(
                f"Parity gate round {round_} of at most {settings.max_float_nodes} (int8 F2 more than "
                f"{settings.max_drop} below FP32 "
                f"{fp32.f2:.4f}), try {tried[round_]}/{len(candidates) - round_ + 1}: "
                f"{'; '.join(labels_of[n] for n in sorted(keep, key=candidates.index))} in float"
            )
        quantize_int8(prepared, out_path, reader, settings.method, settings.activation, sorted(keep))
        written.append(keep)
        return score(out_path, evaluation.inputs, evaluation.labels, evaluation.classes)

    best, kept, trials = search(trial, candidates, fp32.f2, settings.max_drop, settings.max_float_nodes)
    if written[-1] != frozenset(kept):  # later trials overwrote the file: write the chosen one again
        quantize_int8(prepared, out_path, reader, settings.method, settings.activation, kept)
    return best, kept, trials
