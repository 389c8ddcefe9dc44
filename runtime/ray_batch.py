"""Batch inference on Ray Data (the [ray] extra): `tumor-infer --ray auto|ADDRESS`, or `ray_records` from Python.

The driver lists the inputs exactly as `tumor-infer` does. Ray Data cuts the list into batches and
hands them to a fixed pool of actors; each actor holds one `Classifier` whose threads are the CPUs Ray
reserved for it (so actors never oversubscribe a node's cores). Each actor returns its rows as JSON,
the driver yields them in input order, and `tumor-infer`'s own writers write them: a Ray run and a
local run of the same folder give the same file. Unreadable inputs are error rows, as locally.

On a cluster every node needs the kit installed and the input paths readable at the same place
(a shared filesystem).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from tumor_runtime.errors import UsageError

RAY_MISSING = "--ray needs the [ray] extra: pip install 'tumor-kit[ray]'"
PATHS_PER_BATCH = 64  # inputs per actor call: enough to keep its decode threads and the model busy


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]: plain ray lacks it)
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


class ClassifyPaths:
    """The Ray actor: one Classifier for its lifetime; a batch of paths in, one JSON row per image out."""

    def __init__(self, model: str | None, threads: int, batch_size: int, tumor_threshold: float | None,
                 backend: str):
        from tumor_runtime.classifier import Classifier

        self.classifier = Classifier.load(model, threads=threads, batch_size=batch_size,
                                          tumor_threshold=tumor_threshold, backend=backend)

    def __call__(self, batch: dict) -> dict:
        # A multi-frame DICOM file gives one row per frame: the row count may grow. Decoding stays in threads:
        # Ray gives the actor its CPUs, and forking a process that runs Ray's gRPC threads is unsafe.
        paths = [str(p) for p in batch["path"]]
        return {"row": [json.dumps(rec) for rec in self.classifier.iter_predict(paths, processes=False)]}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """UsageError now if nothing listens at HOST:PORT (Ray itself would retry for minutes, printing warnings)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(address: str, cores: int) -> None:
    """`auto`: the running cluster (RAY_ADDRESS or `ray start` on this machine), else a local Ray with
    `cores` CPUs; anything else: the cluster at that address. UsageError if it cannot be reached."""
    ray = require_ray()
    if ray.is_initialized():
        return
    options = {"logging_level": logging.WARNING, "log_to_driver": False}
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines would bury tumor-infer's own
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **options)
            except ConnectionError:  # no cluster is running: start one on this machine
                ray.init(num_cpus=cores, include_dashboard=False, **options)
        else:
            check_reachable(address)
            ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


def actor_count(threads: int) -> int:
    """Actors that fit the cluster's CPUs with `threads` each; UsageError if not even one fits (Ray would wait
    for such an actor forever)."""
    ray = require_ray()
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < threads:
        raise UsageError(f"each Ray actor asks for {threads} CPUs (--threads) but the cluster has {cpus}")
    return cpus // threads


def ray_records(paths: list, model: str | Path | None = None, address: str = "auto", threads: int = 2,
                batch_size: int = 32, tumor_threshold: float | None = None, backend: str = "onnxruntime",
                actors: int | None = None) -> Iterator[dict]:
    """Classify `paths` (image and DICOM files, as listed by `tumor_runtime.inputs.collect`) on Ray: the rows of
    tumor-infer, in input order. `threads`: CPUs per actor; `actors`: default as many as fit. Connects at once
    (UsageError if it cannot); the rows come as they are read."""
    from tumor_runtime.model import available_cores

    ray = require_ray()
    connect(address, available_cores())
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in input order, as tumor-infer writes them
    context.enable_progress_bars = False  # the driver shows one bar of its own
    dataset = ray.data.from_items([{"path": str(p)} for p in paths])
    rows = dataset.map_batches(
        ClassifyPaths, batch_size=PATHS_PER_BATCH, num_cpus=threads,
        compute=ray.data.ActorPoolStrategy(size=actors or actor_count(threads)), udf_modifying_row_count=True,
        fn_constructor_kwargs={"model": None if model is None else str(Path(model).resolve()), "threads": threads,
                               "batch_size": batch_size, "tumor_threshold": tumor_threshold, "backend": backend})
    return (json.loads(row["row"]) for row in rows.iter_rows())
