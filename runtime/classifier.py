"""`Classifier`: the Python API. Decoding runs in a thread pool, a few batches ahead of inference."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from tumor_runtime.model import ModelInfo, available_cores, open_session
from tumor_runtime.preprocess import ImageError, load_gray, normalize

PREFETCH_BATCHES = 2  # decoded batches waiting ahead of inference: memory stays flat with folder size


class Classifier:
    """Load once, then `predict` paths or arrays; each result is a dict as tumor-infer's JSON rows."""

    def __init__(self, session, info: ModelInfo, threads: int, batch_size: int = 32,
                 tumor_threshold: float | None = None):
        self.session, self.info, self.threads, self.batch_size = session, info, threads, batch_size
        self.tumor_threshold = info.tumor_threshold if tumor_threshold is None else tumor_threshold
        self.input_name = session.get_inputs()[0].name
        self.negative_index = info.classes.index(info.negative_class) if info.negative_class in info.classes else None

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, threads: int | None = None, batch_size: int = 32,
             tumor_threshold: float | None = None, verify: bool = True) -> "Classifier":
        """Open `path` (default: the shipped int8 model); `threads` defaults to the cores available."""
        threads = threads or available_cores()
        session, info = open_session(path, threads, verify)
        return cls(session, info, threads, batch_size, tumor_threshold)

    def probabilities(self, gray: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) at the model's input size -> class probabilities (N, classes)."""
        x = normalize(gray, self.info.mean, self.info.std)
        return self.session.run(None, {self.input_name: x})[0]

    def record(self, path: str | None, probs: np.ndarray | None, error: str | None = None) -> dict:
        if probs is None:
            return {"path": path, "label": None, "confidence": None, "probabilities": None,
                    "tumor_probability": None, "tumor": None, "error": error}
        best = int(np.argmax(probs))
        tumor_p = 1.0 - float(probs[self.negative_index]) if self.negative_index is not None else None
        return {"path": path, "label": self.info.classes[best], "confidence": float(probs[best]),
                "probabilities": {c: float(p) for c, p in zip(self.info.classes, probs)},
                "tumor_probability": tumor_p,
                "tumor": bool(tumor_p >= self.tumor_threshold) if tumor_p is not None else None, "error": None}

    def _decode(self, item):
        try:
            return load_gray(item, self.info.input_size), None
        except (ImageError, OSError, ValueError, TypeError) as exc:
            return None, str(exc) or type(exc).__name__

    def iter_predict(self, items: Iterable) -> Iterator[dict]:
        """Stream records in input order; bad items give a record with `error` set, never an exception."""
        numbered = enumerate(items)  # (position, item): arrays are named by position
        chunks = iter(lambda: list(islice(numbered, self.batch_size)), [])
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            pending = deque()
            for chunk in islice(chunks, PREFETCH_BATCHES):
                pending.append((chunk, [pool.submit(self._decode, x) for _, x in chunk]))
            while pending:
                chunk, futures = pending.popleft()
                following = next(chunks, None)
                if following:
                    pending.append((following, [pool.submit(self._decode, x) for _, x in following]))
                yield from self._classify(chunk, [f.result() for f in futures])

    def _classify(self, chunk: list, decoded: list) -> Iterator[dict]:
        good = [i for i, (image, _) in enumerate(decoded) if image is not None]
        probs = self.probabilities(np.stack([decoded[i][0] for i in good])) if good else []
        by_index = dict(zip(good, probs))
        for i, (position, item) in enumerate(chunk):
            name = str(item) if isinstance(item, (str, Path)) else f"<array {position}>"
            yield self.record(name, by_index.get(i), decoded[i][1])

    def predict(self, items) -> list[dict]:
        """Paths, arrays (H, W) / (H, W, C), or a mix; a single path or array is accepted too."""
        if isinstance(items, (str, Path, np.ndarray)):
            items = [items]
        return list(self.iter_predict(items))
