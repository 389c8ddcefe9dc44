"""Ctrl-C and SIGTERM for every command: SIGTERM raised like Ctrl-C so `finally` blocks run, interrupts deferred
while a row is written, and the exit code each gives (130, 143)."""

from __future__ import annotations

import signal

from tumor_runtime.core.errors import EXIT_INTERRUPTED, EXIT_TERMINATED


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` (temporary files) runs."""


def raise_on_sigterm() -> None:
    """SIGTERM raises `Terminated`; SIGINT raises KeyboardInterrupt even when the parent started us with it
    ignored (a shell's `&`): an interrupt before the first row is then exit 130, never a silent exit 0."""

    def handler(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


class DeferredInterrupts:
    """Inside this block SIGINT and SIGTERM only set a flag; `check()` raises at a safe point, so an
    output row is never cut in half (a signal inside a buffered write can lose part of the buffer)."""

    def __enter__(self) -> DeferredInterrupts:
        self.received = None
        self.previous = {sig: signal.signal(sig, self._note) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum, frame) -> None:
        self.received = signum

    def check(self) -> None:
        if self.received == signal.SIGTERM:
            raise Terminated()
        if self.received is not None:
            raise KeyboardInterrupt()

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def interrupted_exit_code(exc: BaseException) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
