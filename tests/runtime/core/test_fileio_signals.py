"""Interrupt windows around the atomic writes: a signal at any point leaves the old file or the new one,
never a stray temporary (fault sweep item 19)."""

from __future__ import annotations

import os
import signal

import pytest

from tumor_runtime.core import fileio
from tumor_runtime.core.signals import raise_on_sigterm

pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Ctrl-C as an interactive shell delivers it, however pytest was started (`cmd &` starts it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_19_a_signal_as_the_temporary_file_is_created_leaves_no_stray_tmp(tmp_path, monkeypatch):
    real = fileio.create_exclusive

    def create_then_interrupt(path):
        real(path)
        os.kill(os.getpid(), signal.SIGINT)  # lands right after the file exists (mkstemp's window)

    monkeypatch.setattr(fileio, "create_exclusive", create_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write_text(tmp_path / "results.json", "[]")
    assert list(tmp_path.iterdir()) == []


def test_19_a_signal_while_writing_keeps_the_old_file_and_no_tmp(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGINT)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_19_sigint_works_even_when_the_parent_ignored_it():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's `cmd &` starts a process
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        raise_on_sigterm()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
