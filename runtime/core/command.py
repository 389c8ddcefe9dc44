"""What the three commands share: finite float options, one-line errors, missing extras, signals.

Exit codes of every command: 0 done, 1 a partial failure (named on stderr), 2 usage error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from tumor_runtime.core.errors import EXIT_BUG, EXIT_PARTIAL, EXIT_USAGE, KitError
from tumor_runtime.core.options import finite_in_range
from tumor_runtime.core.system import installed, missing_extra

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


# Pillow and pydicom warn (UserWarning) about the damaged files they still read or refuse; the kit reports each
# such file itself (an error row, or a skipped-file line), so their warnings are noise on the user's stderr.
READER_WARNINGS = r"(PIL|pydicom)(\.|$)"


def silence_reader_warnings() -> None:
    """Every command calls this first; the Python API leaves warnings to its caller."""
    warnings.filterwarnings("ignore", category=UserWarning, module=READER_WARNINGS)


def guarded(body, *args, passthrough: tuple = (), **kwargs):
    """Run a command's body under the kit's exit-code rule: a KitError is one line and its exit code; an
    OSError (a full disk, a vanished folder) is one line and exit 1; any other exception is a bug, said as
    one line asking for a report (TUMOR_KIT_DEBUG=1 shows the traceback). `passthrough`: exception types
    the caller handles itself."""

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
        fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", EXIT_PARTIAL)
    except Exception as exc:
        interrupt = wrapped_interrupt(exc)
        if interrupt is not None:  # a library turned Ctrl-C or SIGTERM into its own error: exit 130 or 143
            raise interrupt from None
        if os.environ.get("TUMOR_KIT_DEBUG"):
            raise
        detail = (str(exc).splitlines() or [""])[0][:200]
        fail(
            f"internal error ({type(exc).__name__}{': ' + detail if detail else ''}). This is a bug in tumor-kit: "
            "please report it with the command you ran; TUMOR_KIT_DEBUG=1 shows the traceback",
            EXIT_BUG,
        )


def wrapped_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (`signals.Terminated`) inside an exception's cause/context chain, if any: torch's
    ONNX exporter, for one, re-raises an interrupt during export as its own error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """One line on stderr, then exit."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def require_extra(extra: str, command: str) -> None:
    """Exit with one line naming the extra when its packages are not installed (a runtime-only install)."""
    missing = [m for m in EXTRAS[extra] if not installed(m)]
    if missing:
        name = "train" if extra == "export" else extra  # the export stage ships in the [train] extra
        fail(missing_extra(command, name, missing))


def version_option(prog: str):
    """--version for a command: "<prog>, version <version>" (click's wording), the version read only when asked."""

    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            import tumor_runtime

            click.echo(f"{prog}, version {tumor_runtime.__version__}")
            ctx.exit()

    return click.option(
        "--version", is_flag=True, expose_value=False, is_eager=True, callback=show, help="Show the version and exit."
    )
