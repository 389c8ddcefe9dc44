"""`tumor-infer --ray` runs its Ray driver in a child process, and takes the rows from it over a pipe.

Ray's driver does two things to the process it runs in that a command must not allow: it prints the
cluster's error messages ("A worker died or was killed ...") to sys.stdout from a thread of its own, where
they would land among tumor-infer's rows, and it ends the process (exit 1, from C++) when a cluster it joined
goes away, leaving the output's temporary file behind. In a child, Ray's lines go to a log file, and a
child that ends without finishing is one `RayRunError` naming Ray's last line: the parent still cleans up.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

from tumor_runtime.core.errors import KitError
from tumor_runtime.imaging.workers import die_with_parent
from tumor_runtime.inference.ray_batch import RayRunError, ray_records, require_ray

STOP_GRACE_S = 5.0  # how long the driver may take to leave the cluster after the last row before it is killed


def driver_main(rows_out: Connection, log: str, paths: list[str], options: dict) -> None:
    """The child: Ray's own output to `log`; ("ready"), ("row", dict) ..., ("done") or ("error", KitError)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent stops the run
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    target = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(target, 1)  # Ray prints to the descriptors, from Python and from C++
    os.dup2(target, 2)
    try:
        rows = ray_records(paths, **options)  # connects now: an unreachable cluster is an error before any row
        rows_out.send(("ready", None))
        for row in rows:
            rows_out.send(("row", row))
        rows_out.send(("done", None))
    except KitError as exc:
        rows_out.send(("error", exc))


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "it printed nothing"


def isolated_ray_records(paths: list, target: Callable = driver_main, **options) -> Iterator[dict]:
    """`ray_records(paths, **options)` run in a child process: the same rows in the same order. Connects before
    it returns (a KitError if it cannot); a child that dies midway is a RayRunError."""
    require_ray()  # the missing extra is said here, at once, not by the child
    context = multiprocessing.get_context("spawn")  # a fork would copy this process's threads and sockets
    handle, log_name = tempfile.mkstemp(prefix="tumor-infer-ray-", suffix=".log")
    os.close(handle)
    log = Path(log_name)
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(send, log_name, [str(p) for p in paths], options), daemon=True)
    child.start()
    send.close()  # only the child writes: its death reads as end-of-file

    def message() -> tuple:
        try:
            return receive.recv()
        except EOFError:
            child.join(STOP_GRACE_S)
            raise RayRunError(
                f"the Ray driver process stopped (exit code {child.exitcode}); Ray's last line: {last_line(log)}"
            ) from None

    def stop(finished: bool) -> None:
        """After the last row the driver leaves the cluster on its own; stopped early, it is killed."""
        child.join(STOP_GRACE_S if finished else 0)
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
        log.unlink(missing_ok=True)

    try:
        kind, value = message()
        if kind == "error":
            raise value
    except BaseException:
        stop(False)
        raise
    return rows_from(message, stop)


def rows_from(message: Callable[[], tuple], stop: Callable[[bool], None]) -> Iterator[dict]:
    finished = False
    try:
        while True:
            kind, value = message()
            if kind == "done":
                finished = True
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop(finished)
