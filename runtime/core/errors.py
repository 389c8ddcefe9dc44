"""The kit's one error type and its exit-code rule.

Every problem a user can act on (a bad option, a missing folder, an unreadable model, a full
disk) is a `KitError` carrying its exit code; each command catches it once and prints one
line. Anything else is a bug in the kit and says so (`command.guarded`): one line asking
for a report, the traceback only with TUMOR_KIT_DEBUG=1.

Exit codes of all four commands: 0 done; 1 done, but some inputs got error rows or the
results could not be written; 2 usage, input or output problem (nothing done); 70 internal
error (a bug); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1  # done, but some inputs got error rows, a check failed, or the results could not be written
EXIT_USAGE = 2  # usage, input or output problem: nothing done
EXIT_BUG = 70  # EX_SOFTWARE: an internal error
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class KitError(Exception):
    """A problem the user can act on: one line on stderr and `exit_code`."""

    exit_code = EXIT_USAGE


class UsageError(KitError):
    """Bad paths or options on the command line."""


class OptionError(KitError, ValueError):
    """A value out of range or of the wrong kind (a ValueError too: the Python API's documented type)."""


class OutputError(KitError):
    """The outputs cannot be written (checked before the work where possible)."""


class RunStopped(KitError):
    """A run that stopped midway (a decoding process died, the Ray cluster was lost): the command that ran it
    adds what was written (rows on stdout, or no file at all with -o)."""


class ImageError(KitError, ValueError):
    """An input that cannot be turned into a model input; the message names the reason."""


class ModelError(KitError):
    """A model that cannot be used: missing, not ONNX, not a tumor-kit model, inconsistent, or tampered with."""
