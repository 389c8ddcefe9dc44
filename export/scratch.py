"""The export's scratch folder inside the output folder: created before any work, and those of killed exports
removed by the next one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tumor_runtime.core.errors import OutputError

SCRATCH_PREFIX = ".export-"


def remove_stale_scratch(out: Path, log) -> None:
    """Scratch folders left by killed exports (their process is gone) are deleted."""
    for folder in out.glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name[len(SCRATCH_PREFIX) :].split("-")[0]
        if folder.is_dir() and not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            log(f"Removed {folder.name}, left by an interrupted export")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_scratch(out: Path) -> tempfile.TemporaryDirectory:
    """The scratch folder, created before any work so that an unwritable output folder fails first."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(dir=out, prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None
