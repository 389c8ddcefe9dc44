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
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from tumor_runtime.core.errors import RunStopped, UsageError
from tumor_runtime.core.system import missing_extra

RAY_MISSING = missing_extra("--ray", "ray")
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

    def __init__(self, model: str | None, threads: int, batch_size: int, tumor_threshold: float | None, backend: str):
        from tumor_runtime.inference.classifier import Classifier

        self.classifier = Classifier.load(
            model, threads=threads, batch_size=batch_size, tumor_threshold=tumor_threshold, backend=backend
        )

    def __call__(self, batch: dict) -> dict:
        # A multi-frame DICOM file gives one row per frame: the row count may grow. Decoding stays in threads:
        # Ray gives the actor its CPUs, and forking a process that runs Ray's gRPC threads is unsafe.
        # Actors read absolute paths (their working folder is the cluster's); rows keep the names as given.
        paths, shown = [str(p) for p in batch["path"]], [str(p) for p in batch["shown"]]
        rows, index = [], 0
        for rec in self.classifier.iter_predict(paths, processes=False):  # in input order, a file's frames together
            while rec["path"] != paths[index] and not rec["path"].startswith(paths[index] + "#"):
                index += 1
            rec["path"] = shown[index] + rec["path"][len(paths[index]) :]  # keeps a DICOM frame's "#n"
            rows.append(json.dumps(rec))
        return {"row": rows}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """UsageError now if nothing listens at HOST:PORT (Ray itself would retry for minutes, printing warnings)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 address is written [::1]:6379
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(address: str, cores: int) -> None:
    """`auto`: the cluster named by RAY_ADDRESS, else a private Ray on this machine with `cores` CPUs that
    lives as long as the run; anything else: the cluster at that address. UsageError if it cannot be reached.

    `auto` never joins a Ray instance that merely happens to run on this machine: one that another program
    started and stops mid-run took the run down with it (Ray ends its driver process with exit 1). To use a
    local `ray start` cluster, name it: --ray 127.0.0.1:6379."""
    ray = require_ray()
    if ray.is_initialized():
        return
    # Ray's notices (token authentication, actor restarts, progress bars off) would bury tumor-infer's own
    # lines on every run; its errors still reach the kit, which reports them in one line.
    options = {"logging_level": logging.ERROR, "log_to_driver": False}
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its failures are reported as RayRunError
    try:
        if address == "auto" and not os.environ.get("RAY_ADDRESS"):
            ray.init(address="local", num_cpus=cores, include_dashboard=False, **options)
        elif address == "auto":
            ray.init(address=os.environ["RAY_ADDRESS"], **options)
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


def ray_records(
    paths: list,
    model: str | Path | None = None,
    address: str = "auto",
    threads: int = 2,
    batch_size: int = 32,
    tumor_threshold: float | None = None,
    backend: str = "onnxruntime",
    actors: int | None = None,
) -> Iterator[dict]:
    """Classify `paths` (image and DICOM files, as listed by `tumor_runtime.imaging.listing.collect`) on Ray: the
    rows of
    tumor-infer, in input order. `threads`: CPUs per actor; `actors`: default as many as fit. Connects at once
    (UsageError if it cannot); the rows come as they are read."""
    from tumor_runtime.core.system import available_cores

    ray = require_ray()
    connect(address, available_cores())
    # Ray Data copies its context with settings it calls deprecated itself (use_polars, ...): not the user's
    warnings.filterwarnings("ignore", message=r"`\w+` is deprecated", module=r"ray(\.|$)")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in input order, as tumor-infer writes them
    context.enable_progress_bars = False  # the driver shows one bar of its own
    dataset = ray.data.from_items([{"path": os.path.abspath(p), "shown": str(p)} for p in paths])
    with warnings.catch_warnings():  # Ray 2.60 calls its own documented max_restarts=0 deprecated (removed in 2.64)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        rows = dataset.map_batches(
            ClassifyPaths,
            batch_size=PATHS_PER_BATCH,
            num_cpus=threads,
            compute=ray.data.ActorPoolStrategy(size=actors or actor_count(threads)),
            udf_modifying_row_count=True,
            # An actor that fails to start is an error to report (a model missing on a node), not one to retry;
            # with restarts on, Ray's core worker also prints a line about restartable actors on every run.
            max_restarts=0,
            fn_constructor_kwargs={
                "model": None if model is None else str(Path(model).resolve()),
                "threads": threads,
                "batch_size": batch_size,
                "tumor_threshold": tumor_threshold,
                "backend": backend,
            },
        )
    return rows_of(ray, rows)


class RayRunError(RunStopped):
    """The Ray run failed midway: an actor could not start or died, or the cluster went away."""


def rows_of(ray, rows) -> Iterator[dict]:
    """The rows in input order; Ray's failures as one RayRunError naming their cause."""
    try:
        for row in rows.iter_rows():
            yield json.loads(row["row"])
    except ray.exceptions.RayError as exc:
        raise RayRunError(f"the Ray run failed: {ray_failure(exc)}") from None


def ray_failure(exc: Exception) -> str:
    """The kit's own error inside a Ray error (a model missing on a node), else Ray's first line."""
    text = str(exc)
    for line in text.splitlines():
        if line.startswith("tumor_runtime.") and "Error: " in line:
            return line.split("Error: ", 1)[1]
    return (text.splitlines() or [type(exc).__name__])[0][:300]
