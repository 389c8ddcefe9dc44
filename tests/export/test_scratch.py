"""The export's scratch folder (`tumor_export.scratch`)."""

from __future__ import annotations

import os

import pytest

from tumor_export import scratch as scratch_folder
from tumor_runtime.core.errors import OutputError


def test_scratch_left_by_a_dead_export_is_removed_and_a_live_ones_kept(tmp_path):

    dead, live, odd = (tmp_path / f".export-{pid}-x" for pid in (2**22 + 7, os.getpid(), "abc"))
    for folder in (dead, live, odd):
        folder.mkdir()
    said = []
    scratch_folder.remove_stale_scratch(tmp_path, said.append)
    assert not dead.exists() and live.exists() and not odd.exists()
    assert sorted(said) == sorted(f"Removed {f.name}, left by an interrupted export" for f in (dead, odd))
    assert scratch_folder.process_alive(os.getpid()) and not scratch_folder.process_alive(2**22 + 7)
    assert scratch_folder.process_alive(1)  # another user's process: alive, even if signalling it is not allowed


def test_an_unwritable_output_folder_fails_first(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=f"^cannot write to the output folder {tmp_path / 'file' / 'out'}: "):
        scratch_folder.open_scratch(tmp_path / "file" / "out")
