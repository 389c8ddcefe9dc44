"""What the three commands share: finite float options, one-line errors, missing extras, signals.

Exit codes of every command: 0 done, 1 a partial failure (named on stderr), 2 usage error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

import click

from tumor_runtime.contract import installed
from tumor_runtime.validate import finite_in_range

EXTRAS = {"train": ("torch", "matplotlib", "tqdm"), "export": ("torch", "onnx", "onnxscript")}


class FiniteFloat(click.ParamType):
    """A click option type: a finite float within bounds. click.FloatRange lets NaN through."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        name = param.opts[0] if param is not None and param.opts else "value"
        try:
            return finite_in_range(name, value, self.low, self.high, self.low_open)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` (temporary files) runs."""


# Pillow and pydicom warn (UserWarning) about the damaged files they still read or refuse; the kit reports each
# such file itself (an error row, or a skipped-file line), so their warnings are noise on the user's stderr.
READER_WARNINGS = r"(PIL|pydicom)(\.|$)"


def silence_reader_warnings() -> None:
    """Every command calls this first; the Python API leaves warnings to its caller."""
    warnings.filterwarnings("ignore", category=UserWarning, module=READER_WARNINGS)


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

    def __enter__(self) -> "DeferredInterrupts":
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
    return 143 if isinstance(exc, Terminated) else 130


def guarded(body, *args, passthrough: tuple = (), **kwargs):
    """Run a command's body under the kit's exit-code rule: a KitError is one line and its exit code; an
    OSError (a full disk, a vanished folder) is one line and exit 1; any other exception is a bug, said as
    one line asking for a report (TUMOR_KIT_DEBUG=1 shows the traceback). `passthrough`: exception types
    the caller handles itself."""
    from tumor_runtime.errors import EXIT_BUG, KitError

    silence_reader_warnings()
    try:
        return body(*args, **kwargs)
    except passthrough:
        raise
    except KitError as exc:
        fail(str(exc), exc.exit_code)
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except OSError as exc:
        fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", 1)
    except Exception as exc:
        if os.environ.get("TUMOR_KIT_DEBUG"):
            raise
        detail = (str(exc).splitlines() or [""])[0][:200]
        fail(f"internal error ({type(exc).__name__}{': ' + detail if detail else ''}). This is a bug in tumor-kit: "
             "please report it with the command you ran; TUMOR_KIT_DEBUG=1 shows the traceback", EXIT_BUG)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def require_extra(extra: str, command: str) -> None:
    """Exit with one line naming the extra when its packages are not installed (a runtime-only install)."""
    missing = [m for m in EXTRAS[extra] if not installed(m)]
    if missing:
        name = "train" if extra == "export" else extra  # the export stage ships in the [train] extra
        fail(f"{command} needs the [{name}] extra ({', '.join(missing)} not installed): {install_hint(name)}")


def install_hint(extra: str) -> str:
    """How to add an extra: from a clone of the repository, where the kit's users get it."""
    return f'pip install -e ".[{extra}]" in a clone of the repository'
