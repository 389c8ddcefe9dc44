"""Atomic file writes: a temporary file beside the target, then one rename.

An interrupted write never leaves a half-written file at the target, and the previous
version survives until the new one is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

READ_CHUNK = 1 << 20  # bytes per read: the manifest check hashes model files of up to 233 MB


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path next to `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The name is kept before the file exists, so that an interrupt at any point (other threads may take the
    # signal, so masking it in this one is not enough) finds the `finally` that removes it: no stray .tmp.
    tmp = None
    try:
        while tmp is None:
            candidate = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
            tmp = candidate
            try:
                create_exclusive(candidate)
            except FileExistsError:  # another writer's file: not ours to remove
                tmp = None
        yield tmp
        # The file was created 0600: keep the replaced file's permissions, or give a new file the usual ones.
        mode = target.stat().st_mode & 0o7777 if target.is_file() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def create_exclusive(path: Path) -> None:
    """Create an empty file that did not exist (0600, as mkstemp)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _umask() -> int:
    mask = os.umask(0)  # pragma: no mutate (equivalent: any probe value is restored on the next line)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
