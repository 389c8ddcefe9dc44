"""The service behind tumor-serve: the model (loaded in the background, or the reason it could not be), its
thread pool and batcher, and the request limits."""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from tumor_runtime.core.options import MAX_CONCURRENT_BODIES
from tumor_runtime.core.system import available_cores

if TYPE_CHECKING:  # loaded when the model is, not at import
    from tumor_runtime.inference.classifier import Classifier
    from tumor_runtime.serving.batching import Batcher


class Service:
    """The loaded classifier (None while loading), its thread pool and the request limits."""

    def __init__(
        self,
        model: str | None,
        token: str | None,
        max_upload_mb: float,
        threads: int | None,
        tumor_threshold: float | None,
        backend: str,
    ):
        self.model, self.token, self.max_bytes = model, token, int(max_upload_mb * 2**20)
        self.threads, self.tumor_threshold, self.backend = threads, tumor_threshold, backend
        self.classifier: Classifier | None = None
        self.load_error: str | None = None
        self.batcher: Batcher | None = None
        self.pool = ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="infer")
        self.bodies = asyncio.Semaphore(MAX_CONCURRENT_BODIES)  # requests past it wait, their bodies unread

    def load(self) -> None:
        from tumor_runtime.inference.classifier import Classifier
        from tumor_runtime.serving.batching import Batcher

        try:
            classifier = Classifier.load(
                self.model, threads=self.threads, tumor_threshold=self.tumor_threshold, backend=self.backend
            )
            self.batcher = Batcher(classifier, self.pool)
            self.classifier = classifier
        except Exception as exc:  # reported by /ping (500) and every request (503) with the reason
            reason = str(exc) or type(exc).__name__
            print(f"tumor-serve: the model cannot be loaded: {reason}", file=sys.stderr, flush=True)
            # Clients see the model's file name, not where the server keeps it.
            self.load_error = reason.replace(str(Path(self.model).parent) + os.sep, "") if self.model else reason
