"""Decoding inputs ahead of inference: in threads, or in worker processes for large inputs.

`decode_item` turns one input (a path, bytes, an array, a DICOM frame) into the model's uint8
input and the out-of-distribution thumbnail. `DecodePool` runs it a few batches ahead of the
model. Pillow's JPEG decoder and resampler release the GIL, but the numpy and Python steps
between them (the brain box, the checks) do not: on a 2-core machine, decode threads beside the
model's own threads left the cores partly idle; worker processes classify a large folder faster
(`PROCESS_MIN_ITEMS`, benchmarks/RESULTS.md). A process pool takes tens of milliseconds to start
and copies every slice back, so small inputs keep the threads.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tumor_runtime.core.errors import ImageError
from tumor_runtime.imaging.descriptors import thumbnail
from tumor_runtime.imaging.dicom import DicomFrame, load_frame
from tumor_runtime.imaging.listing import Unreadable
from tumor_runtime.imaging.transform import load_gray
from tumor_runtime.imaging.workers import DecodeWorkerError, WorkerProcesses

# More inputs than this decode in worker processes (when there are 2 or more threads). Measured on 2 cores:
# 3 % slower for 400 slices (starting the pool), 8 % faster for 1,200, 13 % for 4,000 (28 % with OpenVINO).
PROCESS_MIN_ITEMS = 1000
# "fork" starts a worker in milliseconds with the runtime already imported; the children only decode
# (never touch the parent's inference threads). Where fork is missing or unsafe (macOS, Windows), threads.
START_METHOD = "fork"


__all__ = ["DecodePool", "DecodeWorkerError", "decode_chunk", "decode_item", "processes_available"]


def decode_item(item, size: int, crop: str, thumbnails: bool):
    """item -> (uint8 image (size, size) or None, error or None, DICOM context or None, out-of-distribution
    thumbnail or None). A bad input gives its error text, never an exception."""
    if isinstance(item, Unreadable):
        return None, item.reason, None, None
    try:
        dicom = None
        if isinstance(item, DicomFrame):
            item, dicom = load_frame(item)
        gray = load_gray(item, size, crop)
    except (ImageError, OSError, ValueError, TypeError) as exc:
        return None, str(exc) or type(exc).__name__, None, None
    return gray, None, dicom, thumbnail(gray) if thumbnails else None


def decode_chunk(items: list, size: int, crop: str, thumbnails: bool) -> list:
    """`decode_item` over a chunk: one task per batch, so a worker process is asked once per batch."""
    return [decode_item(item, size, crop, thumbnails) for item in items]


def processes_available() -> bool:
    return sys.platform.startswith("linux") and START_METHOD in multiprocessing.get_all_start_methods()


class DecodePool:
    """`submit(items)` starts decoding a chunk and returns a function that waits for its results, in order.

    `processes`: worker processes instead of threads (`workers` of either)."""

    def __init__(self, workers: int, processes: bool, size: int, crop: str, thumbnails: bool):
        self.args = (size, crop, thumbnails)
        self.processes = processes and processes_available()
        if self.processes:  # asked only then: where there is no fork (Windows), get_context("fork") raises
            # decode_chunk is looked up when a worker calls it (a forked worker sees the module as it was then)
            self.workers = WorkerProcesses(workers, lambda items: decode_chunk(items, *self.args), START_METHOD)
        else:
            self.executor = ThreadPoolExecutor(max_workers=workers)

    def submit(self, items: list) -> Callable[[], list]:
        if self.processes:
            return self.workers.submit(items)
        futures = [self.executor.submit(decode_item, item, *self.args) for item in items]
        return lambda: [f.result() for f in futures]

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, error_type, *exc) -> None:
        # An error or Ctrl-C leaves chunks queued: drop them rather than decode them for nothing.
        if self.processes:
            self.workers.close(at_once=error_type is not None)
        else:
            self.executor.shutdown(cancel_futures=True)  # waits for the chunks already running
