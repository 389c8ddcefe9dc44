"""Decoding worker processes that can die at any moment without hanging the run.

concurrent.futures' process pool shares one result pipe among its workers: a worker killed while it
writes its chunk leaves half a message in the pipe (the pool's reader then waits for the rest for
ever) and the pipe's lock held (the other workers wait on it for ever). Here each worker has a pipe
of its own, which only that worker can write (every other process closed its copy), so its death
reads as end-of-file or as its exit sentinel: a one-line error in bounded time, whatever moment it
dies. A worker also closes every socket it inherited (a server's listening socket must not outlive
the server in its workers) and is killed by the kernel when its parent dies (PR_SET_PDEATHSIG).
Linux only: the caller falls back to threads elsewhere.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import stat
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from tumor_runtime.core.errors import RunStopped
from tumor_runtime.core.signals import Terminated

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when the thread that forked it ends
STOP_GRACE_S = 2.0  # how long a worker may take to exit after its last chunk before it is killed


class DecodeWorkerError(RunStopped):
    """A decoding process died (killed, or out of memory): the rows it held are lost, so the run stops."""


WORKER_DIED = "a decoding process stopped unexpectedly (killed, or out of memory)"


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux's libc: the parent's cleanup still runs
        pass


def close_inherited(keep: set[int]) -> None:
    """Close the sockets and the other workers' pipe ends this fork inherited, keeping `keep`."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in keep:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:  # the directory's own descriptor, gone by now
            pass


def worker_main(tasks: Connection, results: Connection, others: list[int], work: Callable) -> None:
    """A worker's whole life: chunks in on `tasks`, `work(chunk)` out on `results`, until end-of-file."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent stops the run
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command's handler would raise inside the worker
    for fd in others:
        try:
            os.close(fd)
        except OSError:
            pass
    close_inherited({tasks.fileno(), results.fileno()})
    while True:
        try:
            chunk = tasks.recv()
        except (EOFError, OSError):
            return
        results.send(work(chunk))


class WorkerProcesses:
    """`submit(chunk)` -> a function that waits for `work(chunk)` from a worker process, in submission order."""

    def __init__(self, workers: int, work: Callable, start_method: str = "fork"):
        context: Any = multiprocessing.get_context(start_method)  # its Process and Pipe (stubs: BaseContext)
        self.links: list[tuple[multiprocessing.Process, Connection, Connection]] = []
        self.next = 0
        self.broken = False
        self.outbox: queue.Queue = queue.Queue()  # (connection, chunk): sent by a thread, so that the parent
        # never blocks writing a large chunk while the worker blocks writing its result to the parent
        for _ in range(workers):
            task_read, task_write = context.Pipe(duplex=False)
            result_read, result_write = context.Pipe(duplex=False)
            # Every parent-side end this worker inherits, its own pair included: a worker holding a copy of its
            # own task pipe's write end never reads end-of-file there, and waited out STOP_GRACE_S at every close.
            others = [fd for _, tasks, results in self.links for fd in (tasks.fileno(), results.fileno())]
            others += [task_write.fileno(), result_read.fileno()]
            process = context.Process(target=worker_main, args=(task_read, result_write, others, work), daemon=True)
            process.start()
            task_read.close()
            result_write.close()  # now the worker holds the only write end of its result pipe
            self.links.append((process, task_write, result_read))
        self.sender = threading.Thread(target=self.send_all, daemon=True, name="decode-sender")
        self.sender.start()

    def send_all(self) -> None:
        while (job := self.outbox.get()) is not None:
            try:
                job[0].send(job[1])
            except (OSError, ValueError):  # the worker is gone: its reader reports it
                pass

    def submit(self, chunk: list) -> Callable[[], list]:
        if self.broken:
            raise DecodeWorkerError(WORKER_DIED)
        process, tasks, results = self.links[self.next % len(self.links)]
        self.next += 1
        self.outbox.put((tasks, chunk))
        return lambda: self.receive(process, results)

    def receive(self, process: multiprocessing.Process, results: Connection) -> list:
        """The worker's next result; DecodeWorkerError as soon as the worker is dead, even mid-message."""
        ready = wait([results, process.sentinel])
        try:
            if results in ready:
                return results.recv()  # a worker that died while writing: end-of-file, not a wait
        except (EOFError, OSError):
            pass
        self.broken = True
        process.join(STOP_GRACE_S)  # its exit status says how it ended
        if process.exitcode == -signal.SIGTERM:
            # A SIGTERM to the process group reached the worker before the parent's own handler ran: the run
            # was terminated (exit 143), not broken by a dying worker (which would exit 2).
            raise Terminated()
        raise DecodeWorkerError(WORKER_DIED)

    def close(self, at_once: bool) -> None:
        """Stop the workers: end-of-file on their task pipes, then a kill for any still running (at once after
        an error or Ctrl-C, when queued chunks are not worth decoding)."""
        if at_once:
            for process, _, _ in self.links:
                process.kill()  # also ends a send the sender thread may be blocked in
        self.outbox.put(None)
        self.sender.join()
        for process, tasks, results in self.links:
            tasks.close()  # end-of-file: a worker waiting for its next chunk exits
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
            results.close()
