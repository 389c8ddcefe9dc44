"""`Classifier`: the Python API. Decoding runs a few batches ahead of inference (`pool.DecodePool`)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from tumor_runtime.core.contract import CAM_OUTPUT, FEATURES_OUTPUT
from tumor_runtime.core.errors import ImageError, ModelError
from tumor_runtime.core.options import MAX_BATCH_SIZE, finite_in_range, int_in_range
from tumor_runtime.core.scoring import calibrated
from tumor_runtime.core.system import available_cores
from tumor_runtime.imaging.decode import EncodedImage
from tumor_runtime.imaging.descriptors import descriptors_of_thumbnails
from tumor_runtime.imaging.dicom import DicomFrame, frames_of
from tumor_runtime.imaging.formats import is_dicom_file
from tumor_runtime.imaging.listing import Unreadable
from tumor_runtime.imaging.pool import (
    PROCESS_MIN_ITEMS,
    DecodePool,
    decode_item,
    processes_available,
)
from tumor_runtime.imaging.transform import normalize
from tumor_runtime.inference.records import NO_CAM, record
from tumor_runtime.model.info import ModelInfo, model_card
from tumor_runtime.model.manifest import default_model_path
from tumor_runtime.model.session import open_session, output_name

FILE_ITEMS = (str, Path, DicomFrame, Unreadable, EncodedImage)  # inputs still to be read and decoded
PREFETCH_BATCHES = 2  # decoded batches waiting ahead of inference: memory stays flat with folder size
SESSION_BATCH = 64  # images per model call: larger batches gain nothing on a CPU and cost memory


def checked_options(threads: int | None, batch_size: int, tumor_threshold: float | None):
    """(threads capped at the cores available, batch size, threshold or None); ValueError if one is bad."""
    threads = available_cores() if threads is None else int_in_range("threads", threads, 1, 1 << 16)
    if tumor_threshold is not None:
        tumor_threshold = finite_in_range("tumor_threshold", tumor_threshold, 0.0, 1.0)
    return min(threads, available_cores()), int_in_range("batch_size", batch_size, 1, MAX_BATCH_SIZE), tumor_threshold


def expand_dicom(items: Iterable) -> Iterator:
    """Each DICOM file becomes its frames (one row each); a DICOM file that cannot give frames becomes an
    `Unreadable` with the reason. Everything else passes through. Lazy: folders of any size stream."""
    for item in items:
        if isinstance(item, (str, Path)) and is_dicom_file(Path(item)):
            try:
                yield from frames_of(Path(item))
            except (ImageError, OSError) as exc:
                yield Unreadable(Path(item), str(exc))
        else:
            yield item


class Classifier:
    """Load once, then `predict` paths or arrays; each result is a dict as tumor-infer's JSON rows."""

    def __init__(
        self,
        session,
        info: ModelInfo,
        threads: int,
        batch_size: int = 32,
        tumor_threshold: float | None = None,
        path: Path | None = None,
    ):
        self.session, self.info, self.path = session, info, path
        self.threads, self.batch_size, threshold = checked_options(threads, batch_size, tumor_threshold)
        self.tumor_threshold = finite_in_range(
            "tumor_threshold", info.tumor_threshold if threshold is None else threshold, 0.0, 1.0
        )
        self.input_name, self.output_name = session.get_inputs()[0].name, output_name(session)
        from tumor_runtime.model.backends import OpenVinoSession

        self.backend = "openvino" if isinstance(session, OpenVinoSession) else "onnxruntime"
        outputs = [o.name for o in session.get_outputs()]
        self.has_cam = CAM_OUTPUT in outputs
        if info.ood is not None and FEATURES_OUTPUT not in outputs:
            raise ModelError(
                "the model's metadata has an out-of-distribution score but its graph has no "
                f"'{FEATURES_OUTPUT}' output: export it again"
            )
        if info.ood is not None:
            self.check_ood_record()

    def check_ood_record(self) -> None:
        """ModelError unless the 'ood' record fits this graph: its feature length is the graph's, and a plain
        image scores a finite number (a denormal variance or a tiny threshold would make every score infinite)."""
        from tumor_runtime.imaging.descriptors import thumbnail

        ood, size = self.info.ood, self.info.input_size
        assert ood is not None  # called only for a model with the score
        gray = np.tile(np.linspace(0, 255, size, dtype=np.float32), (size, 1)).astype(np.uint8)  # (S, S) ramp
        features = self.run(gray[None], [FEATURES_OUTPUT])[0]  # (1, D)
        expected = ood.features.mean.shape[0]
        if features.shape[-1] != expected:
            raise ModelError(
                f"the model's 'ood' metadata describes {expected} features but its graph gives "
                f"{features.shape[-1]}: export it again"
            )
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # what is checked, not warned about
            score = ood.score(features, descriptors_of_thumbnails(thumbnail(gray)[None]))
        if not np.isfinite(score).all():
            raise ModelError(
                "the model's 'ood' metadata gives non-finite scores (a variance or threshold too "
                "small to divide by): export it again"
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        tumor_threshold: float | None = None,
        verify: bool = True,
        backend: str = "onnxruntime",
    ) -> Classifier:
        """Open `path` (default: the shipped int8 model); `threads` defaults to (and is capped at) the cores
        available; `backend`: onnxruntime, openvino or auto (`tumor_runtime.model.backends`). Bad arguments raise
        ValueError before the model is opened."""
        threads, batch_size, tumor_threshold = checked_options(threads, batch_size, tumor_threshold)
        path = Path(path) if path is not None else default_model_path()
        session, info = open_session(path, threads, verify, backend)
        return cls(session, info, threads, batch_size, tumor_threshold, path)

    def card(self) -> dict:
        """The model card (`info.model_card`) with this classifier's threshold, heat-maps and backend."""
        return model_card(self.info, self.path, self.tumor_threshold, self.has_cam, self.backend)

    def probabilities(self, gray: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) at the model's input size -> class probabilities (N, classes)."""
        return calibrated(self.run(gray, [self.output_name])[0], self.info.temperature)

    def probabilities_and_cams(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W) -> (probabilities (N, classes), class activation maps (N, classes, h, w))."""
        if not self.has_cam:
            raise ModelError(NO_CAM)
        probs, cams = self.run(gray, [self.output_name, CAM_OUTPUT])
        probs = calibrated(probs, self.info.temperature)
        return probs, cams

    def run(self, gray: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        """The session over `gray` in slices of at most SESSION_BATCH images: the network's activations, not
        --batch-size, would otherwise set the peak memory (a 4096 batch took 6.5 GB)."""
        parts = [
            self.session.run(
                outputs, {self.input_name: normalize(gray[i : i + SESSION_BATCH], self.info.mean, self.info.std)}
            )
            for i in range(0, len(gray), SESSION_BATCH)
        ]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(outputs))]

    def record(
        self,
        path: str | None,
        probs: np.ndarray | None,
        error: str | None = None,
        cams: np.ndarray | None = None,
        ood_score: float | None = None,
    ) -> dict:
        """One result row for this model and threshold (`records.record`)."""
        return record(self.info, self.tumor_threshold, path, probs, error, cams, ood_score)

    def decode(self, item):
        """item -> `pool.decode_item`'s (image, error, DICOM context, thumbnail) for this model."""
        return decode_item(item, self.info.input_size, self.info.crop, self.info.ood is not None)

    def iter_predict(self, items: Iterable, heatmaps: bool = False, processes: bool | None = None) -> Iterator[dict]:
        """Stream records in input order; bad items give a record with `error` set, never an exception.
        With `heatmaps`, each record also has "cam": the predicted class's map, float32 in [0, 1] at the
        model's input resolution, and "slice": the uint8 input it was computed on (None for error rows;
        ModelError at once if the model has no `cam` output). `processes`: decode in worker processes
        rather than threads (with 2 or more threads, on Linux); None (the default) does so for inputs of more
        than `pool.PROCESS_MIN_ITEMS` files, and then lists that many before the first row."""
        if heatmaps and not self.has_cam:
            raise ModelError(NO_CAM)
        numbered: Iterator[tuple[int, Any]] = enumerate(expand_dicom(items))  # (position, item): arrays by position
        if self.threads < 2 or not processes_available():
            processes = False
        elif processes is None:  # list (not decode) enough of a lazy input to tell a large one from a small one
            head = list(islice(numbered, PROCESS_MIN_ITEMS + 1))
            # Files only: an array is decoded already, and copying it to a process costs more than it saves.
            processes = len(head) > PROCESS_MIN_ITEMS and all(isinstance(x, FILE_ITEMS) for _, x in head)
            numbered = chain(head, numbered)
        chunks = iter(lambda: list(islice(numbered, self.batch_size)), [])
        with DecodePool(
            self.threads, processes, self.info.input_size, self.info.crop, self.info.ood is not None
        ) as pool:
            pending = deque((chunk, pool.submit([x for _, x in chunk])) for chunk in islice(chunks, PREFETCH_BATCHES))
            while pending:
                chunk, decoded = pending.popleft()
                following = next(chunks, None)
                if following:
                    pending.append((following, pool.submit([x for _, x in following])))
                yield from self.classify(chunk, decoded(), heatmaps)

    def classify(self, chunk: list, decoded: list, heatmaps: bool) -> Iterator[dict]:
        good = [i for i, row in enumerate(decoded) if row[0] is not None]
        batch = np.stack([decoded[i][0] for i in good]) if good else None
        probs: Any = []  # (good, classes) once the batch has run
        cams: Any = []  # (good, classes, h, w) with heat-maps
        scores: Any = []  # (good,) with an out-of-distribution score
        if batch is not None:
            names = [self.output_name] + [CAM_OUTPUT] * heatmaps + [FEATURES_OUTPUT] * (self.info.ood is not None)
            outputs = self.run(batch, names)
            probs = calibrated(outputs[0], self.info.temperature)  # the model's temperature, if it has one
            cams = outputs[1] if heatmaps else []
            if self.info.ood is not None:
                thumbnails = np.stack([decoded[i][3] for i in good])
                scores = self.info.ood.score(outputs[-1], descriptors_of_thumbnails(thumbnails))
        by_index, cam_by_index, score_by_index = dict(zip(good, probs)), dict(zip(good, cams)), dict(zip(good, scores))
        for i, (position, item) in enumerate(chunk):
            name = str(item) if isinstance(item, FILE_ITEMS) else f"<array {position}>"
            cam = cam_by_index.get(i, np.zeros(0)) if heatmaps else None
            rec = self.record(name, by_index.get(i), decoded[i][1], cam, score_by_index.get(i))
            if heatmaps:  # the overlay is drawn on what the model saw, without decoding the file again
                rec["slice"] = decoded[i][0]
            if isinstance(item, DicomFrame):
                rec["dicom"] = decoded[i][2]
            yield rec

    def predict(self, items, heatmaps: bool = False) -> list[dict]:
        """Paths, arrays (H, W) / (H, W, C), or a mix; a single path or array is accepted too."""
        if isinstance(items, (str, Path, np.ndarray)):
            items = [items]
        return list(self.iter_predict(items, heatmaps))
