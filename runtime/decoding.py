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
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from typing import Callable

from tumor_runtime.errors import RunStopped
from tumor_runtime.inputs import Unreadable
from tumor_runtime.dicom import DicomFrame, load_frame
from tumor_runtime.ood import thumbnail
from tumor_runtime.preprocess import ImageError, load_gray

# More inputs than this decode in worker processes (when there are 2 or more threads). Measured on 2 cores:
# 3 % slower for 400 slices (starting the pool), 8 % faster for 1,200, 13 % for 4,000 (28 % with OpenVINO).
PROCESS_MIN_ITEMS = 1000
# "fork" starts a worker in milliseconds with the runtime already imported; the children only decode
# (never touch the parent's inference threads). Where fork is missing or unsafe (macOS, Windows), threads.
START_METHOD = "fork"


class DecodeWorkerError(RunStopped):
    """A decoding process died (killed, or out of memory): the rows it held are lost, so the run stops."""


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


def quiet_worker() -> None:
    """Each worker process starts here. Ctrl-C reaches the whole process group: the parent stops the run
    (and the pool), so a worker ignores it rather than print a traceback; SIGTERM ends a worker at once (a
    fork inherits the command's handler, which would raise inside the worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def worker_call(call: Callable):
    """`call()`, with a dead worker process (the pool is then broken) as a one-line error."""
    try:
        return call()
    except BrokenProcessPool:
        raise DecodeWorkerError("a decoding process stopped unexpectedly (killed, or out of memory)") from None


def processes_available() -> bool:
    return sys.platform.startswith("linux") and START_METHOD in multiprocessing.get_all_start_methods()


class DecodePool:
    """`submit(items)` starts decoding a chunk and returns a function that waits for its results, in order.

    `processes`: worker processes instead of threads (`workers` of either)."""

    def __init__(self, workers: int, processes: bool, size: int, crop: str, thumbnails: bool):
        self.args = (size, crop, thumbnails)
        self.processes = processes and processes_available()
        if self.processes:  # asked only then: where there is no fork (Windows), get_context("fork") raises
            context = multiprocessing.get_context(START_METHOD)  # pragma: no mutate (Linux's default before 3.14)
            self.executor = ProcessPoolExecutor(workers, context, initializer=quiet_worker)
        else:
            self.executor = ThreadPoolExecutor(max_workers=workers)

    def submit(self, items: list) -> Callable[[], list]:
        if not self.processes:
            futures = [self.executor.submit(decode_item, item, *self.args) for item in items]
            return lambda: [f.result() for f in futures]
        future = worker_call(lambda: self.executor.submit(decode_chunk, items, *self.args))
        return lambda: worker_call(future.result)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        # An error or Ctrl-C leaves chunks queued: drop them rather than decode them for nothing.
        self.executor.shutdown(cancel_futures=True)  # waits for the chunks already running
