"""Atomic writes: the target is either the old file or the whole new one, with the right permissions."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tumor_runtime.core import fileio


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_the_whole_text_as_utf8_creating_missing_folders(tmp_path):
    target = tmp_path / "a" / "b" / "results.json"
    fileio.atomic_write_text(target, "é\n")
    assert target.read_bytes() == "é\n".encode()
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_a_new_file_gets_the_umask_permissions_and_a_replaced_one_keeps_its_own(tmp_path):
    old_mask = os.umask(0o027)
    try:
        fileio.atomic_write_bytes(tmp_path / "new.bin", b"x")
        assert mode_of(tmp_path / "new.bin") == 0o640
        kept = tmp_path / "kept.bin"
        kept.write_bytes(b"old")
        os.chmod(kept, 0o604)
        fileio.atomic_write_bytes(kept, b"new")
        assert kept.read_bytes() == b"new" and mode_of(kept) == 0o604
    finally:
        os.umask(old_mask)
    assert os.umask(old_mask) == old_mask  # the module's umask probe left the process's mask as it was


def test_a_failing_block_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.name.endswith(".tmp")
            assert tmp.exists() and mode_of(tmp) == 0o600
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_another_writers_temporary_of_the_same_name_is_left_alone(tmp_path, monkeypatch):
    names = iter(["aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(names))
    fileio.atomic_write_text(tmp_path / "out.csv", "first")  # takes the name ...aaaa.tmp and renames it away
    theirs = tmp_path / ".out.csv.aaaaaaaaaaaa.tmp"
    theirs.write_text("someone else's")
    fileio.atomic_write_text(tmp_path / "out.csv", "second")  # ...aaaa is taken: the next name is tried
    assert (tmp_path / "out.csv").read_text() == "second"
    assert theirs.read_text() == "someone else's"


def test_create_exclusive_refuses_an_existing_file(tmp_path):
    path = tmp_path / "x"
    fileio.create_exclusive(path)
    assert path.read_bytes() == b"" and mode_of(path) == 0o600
    with pytest.raises(FileExistsError):
        fileio.create_exclusive(path)


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=3 << 20).map(lambda b: b * 2))
def test_sha256_file_equals_hashlib_across_chunk_boundaries(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("sha") / "blob"
    path.write_bytes(data)
    assert fileio.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_sha256_file_of_a_file_larger_than_one_chunk(tmp_path):
    data = bytes(range(256)) * ((1 << 20) // 256) + b"tail"  # one full 1 MiB chunk and a short one
    (tmp_path / "blob").write_bytes(data)
    assert fileio.sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_sha256_file_hashes_a_large_model_in_bounded_memory(tmp_path):
    """The reference AlexNet's FP32 ONNX file is 233 MB: the manifest check must not hold a model file in memory."""
    import tracemalloc

    blob = tmp_path / "big.onnx"
    with open(blob, "wb") as fh:
        fh.truncate(64 << 20)  # 64 MiB of zeros, sparse on disk
    tracemalloc.start()
    try:
        digest = fileio.sha256_file(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == hashlib.sha256(bytes(64 << 20)).hexdigest() and peak < 8 << 20
