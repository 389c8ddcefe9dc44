"""`runtime/imaging/pool.py`: the same decoded inputs and rows from threads and from worker processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.datasets import SAMPLES
from tests.helpers.dicom import write_dicom
from tumor_runtime.core.system import available_cores
from tumor_runtime.imaging import pool as decoding
from tumor_runtime.imaging.decode import EncodedImage
from tumor_runtime.imaging.descriptors import thumbnail
from tumor_runtime.imaging.dicom import DicomFrame
from tumor_runtime.imaging.listing import Unreadable
from tumor_runtime.imaging.transform import load_gray
from tumor_runtime.inference import classifier as classifier_module
from tumor_runtime.inference.classifier import Classifier

FILES = sorted(SAMPLES.rglob("*.jpg"))
needs_fork = pytest.mark.skipif(
    not decoding.processes_available() or available_cores() < 2, reason="worker processes need fork (Linux) and 2 cores"
)


@pytest.fixture
def mixed_items(tmp_path):
    """Every kind of input the CLI and the API pass: paths, a DICOM frame, bytes, an unreadable, a broken file."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(FILES[0].read_bytes()[:200])
    dicom = write_dicom(tmp_path / "slice.dcm", load_gray(FILES[1], 96).astype(np.uint16) * 16, bits_stored=12)
    return [
        str(FILES[0]),
        FILES[1],
        broken,
        DicomFrame(dicom, None),
        EncodedImage("upload.jpg", FILES[2].read_bytes()),
        Unreadable(tmp_path / "locked", "permission denied"),
    ]


def same_decoded(a, b) -> bool:
    def key(row):
        return [None if v is None else (v.tobytes() if isinstance(v, np.ndarray) else v) for v in row]

    return [key(r) for r in a] == [key(r) for r in b]


def test_decode_item_gives_the_image_its_thumbnail_or_the_reason(mixed_items):
    gray, error, dicom, small = decoding.decode_item(mixed_items[0], 64, "brain", True)
    assert np.array_equal(gray, load_gray(mixed_items[0], 64, "brain")) and error is None and dicom is None
    assert np.array_equal(small, thumbnail(gray))
    assert decoding.decode_item(mixed_items[0], 64, "brain", False)[3] is None
    gray, error, dicom, small = decoding.decode_item(mixed_items[2], 64, "none", True)
    assert gray is None and error == "not a readable image (OSError)" and dicom is None and small is None
    assert decoding.decode_item(mixed_items[5], 64, "none", True) == (None, "permission denied", None, None)
    assert decoding.decode_item(mixed_items[3], 64, "none", True)[2] is not None  # the DICOM context


@needs_fork
@pytest.mark.parametrize("crop", ["none", "brain"])
def test_processes_decode_exactly_what_threads_do(mixed_items, crop):
    results = {}
    for processes in (False, True):
        with decoding.DecodePool(2, processes, 64, crop, True) as pool:
            assert pool.processes is processes
            results[processes] = [
                row for part in [pool.submit(mixed_items[:3]), pool.submit(mixed_items[3:])] for row in part()
            ]
    assert len(results[True]) == len(mixed_items) and same_decoded(results[False], results[True])


def exit_at_once(*args):
    os._exit(3)  # what the kernel's out-of-memory killer does to a worker, seen from the pool


@needs_fork
def test_a_worker_that_dies_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(decoding, "decode_chunk", exit_at_once)  # a forked worker inherits the patched module
    with decoding.DecodePool(2, True, 64, "none", False) as pool:
        waiting = pool.submit([str(FILES[0])])
        with pytest.raises(decoding.DecodeWorkerError, match="decoding process stopped unexpectedly") as caught:
            waiting()
        with pytest.raises(decoding.DecodeWorkerError):  # and the broken pool refuses more work the same way
            pool.submit([str(FILES[0])])()
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_without_fork_the_pool_keeps_threads(monkeypatch):
    monkeypatch.setattr(decoding.sys, "platform", "darwin")
    assert not decoding.processes_available()
    with decoding.DecodePool(2, True, 64, "none", False) as pool:
        assert not pool.processes and np.array_equal(pool.submit([FILES[0]])()[0][0], load_gray(FILES[0], 64))


def test_where_there_is_no_fork_threads_need_no_fork_context(monkeypatch):
    def no_fork(method=None):
        raise ValueError(f"cannot find context for {method!r}")  # what Windows says

    monkeypatch.setattr(decoding.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(decoding.multiprocessing, "get_context", no_fork)
    assert not decoding.processes_available()
    for processes in (False, True):
        with decoding.DecodePool(2, processes, 64, "none", False) as pool:
            assert not pool.processes and np.array_equal(pool.submit([FILES[0]])()[0][0], load_gray(FILES[0], 64))


@pytest.fixture(scope="module")
def clf2():
    return Classifier.load(threads=2)


@needs_fork
def test_rows_are_the_same_from_processes_and_threads(clf2, mixed_items):
    items = mixed_items * 3
    by_threads = list(clf2.iter_predict(items, processes=False))
    by_processes = list(clf2.iter_predict(items, processes=True))
    assert by_threads == by_processes and [r["path"] for r in by_processes] == [str(x) for x in items]
    assert sum(r["error"] is None for r in by_processes) == 12


@needs_fork
def test_large_file_inputs_choose_processes_and_arrays_never(clf2, monkeypatch):
    chosen = []

    class Spy(decoding.DecodePool):
        def __init__(self, workers, processes, *args):
            chosen.append(processes)
            super().__init__(workers, processes, *args)

    monkeypatch.setattr(classifier_module, "DecodePool", Spy)
    monkeypatch.setattr(classifier_module, "PROCESS_MIN_ITEMS", 4)
    arrays = [load_gray(f, 64) for f in FILES[:5]]
    for items in (FILES[:4], FILES[:5], arrays, [Path(FILES[0])] * 4 + arrays[:1]):
        assert len(list(clf2.iter_predict(items))) == len(items)
    assert chosen == [False, True, False, False]
    one = Classifier.load(threads=1)
    list(one.iter_predict(FILES[:5], processes=True))  # one thread: no pool of processes to share it with
    assert chosen[-1] is False


@needs_fork
def test_an_input_read_lazily_is_consumed_once_and_in_order(clf2, monkeypatch):
    monkeypatch.setattr(classifier_module, "PROCESS_MIN_ITEMS", 3)
    seen = []

    def paths():
        for f in FILES[:9]:
            seen.append(f)
            yield f

    rows = list(clf2.iter_predict(paths()))
    assert seen == FILES[:9] and [r["path"] for r in rows] == [str(f) for f in FILES[:9]]


def test_the_help_names_the_size_at_which_processes_start():
    from click.testing import CliRunner

    from tumor_runtime.cli.infer import main

    help_text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert f"processes for more than {decoding.PROCESS_MIN_ITEMS:,} files" in help_text


def test_a_chunk_is_its_items_decoded_in_order(mixed_items, monkeypatch):
    rows = decoding.decode_chunk(mixed_items, 64, "none", True)
    assert same_decoded(rows, [decoding.decode_item(x, 64, "none", True) for x in mixed_items])
    assert rows[0][3] is not None  # the thumbnail asked for
    monkeypatch.setattr(decoding, "load_gray", lambda *a: (_ for _ in ()).throw(OSError()))
    assert decoding.decode_item(FILES[0], 64, "none", False) == (None, "OSError", None, None)  # a reason without text


@needs_fork
def test_a_worker_killed_while_it_sends_its_chunk_back_ends_the_run_in_bounded_time(monkeypatch):
    """Round four, item 1: half a result in the pipe, the other worker alive: an error, never a hang."""
    import struct
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing.connection import Connection

    parent, real = os.getpid(), Connection._send_bytes

    def half_then_die(self, buf):
        if os.getpid() == parent:
            return real(self, buf)
        data = bytes(buf)
        self._send(struct.pack("!i", len(data)) + data[: len(data) // 2])
        os._exit(9)

    monkeypatch.setattr(Connection, "_send_bytes", half_then_die)
    with ThreadPoolExecutor(1) as watchdog, decoding.DecodePool(2, True, 64, "none", False) as pool:
        first, second = pool.submit([str(FILES[0])] * 4), pool.submit([str(FILES[1])])
        with pytest.raises(decoding.DecodeWorkerError, match="^a decoding process stopped unexpectedly"):
            watchdog.submit(first).result(timeout=30)
        with pytest.raises(decoding.DecodeWorkerError):
            watchdog.submit(second).result(timeout=30)


@needs_fork
def test_workers_hold_no_inherited_socket_and_die_with_their_parent(tmp_path):
    """Round four, items 2 and 9: a server's listening socket is not kept open by its decoding workers, and a
    parent killed outright (OOM killer, container timeout) takes its workers with it."""
    program = (
        "import os, socket, sys, time\n"
        "from tumor_runtime.imaging.pool import DecodePool\n"
        "server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()\n"
        "pool = DecodePool(2, True, 64, 'none', False).__enter__()\n"
        "pids = [p.pid for p, _, _ in pool.workers.links]\n"
        "print(os.readlink(f'/proc/self/fd/{server.fileno()}'), *pids, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        listening, *pids = parent.stdout.readline().split()
        assert len(pids) == 2
        deadline = time.monotonic() + 10  # a worker closes them as it starts, a moment after the fork
        while any(listening in descriptors_of(pid) for pid in pids):
            assert time.monotonic() < deadline, "a decoding worker kept the listening socket open"
            time.sleep(0.05)
        assert not any(link.startswith("socket:") for pid in pids for link in descriptors_of(pid))
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in state_of(pid) for pid in pids):
        assert time.monotonic() < deadline, "a decoding worker outlived its killed parent"
        time.sleep(0.05)


def descriptors_of(pid: str) -> list[str]:
    """What a process's open descriptors point to. One closed between the listing and its readlink (what the
    worker does as it starts, the moment this test watches for) is not held any more, so it is left out."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return links


def state_of(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.fixture
def slow_decoding(monkeypatch):
    """Each decode takes 20 ms and records the thread it ran in (in this process only)."""

    calls = []

    def slow(*args):
        calls.append(threading.get_ident())
        time.sleep(0.02)
        return load_gray(FILES[0], 64)

    monkeypatch.setattr(decoding, "load_gray", slow)
    return calls


def test_threads_decode_here_with_at_most_the_workers_asked(slow_decoding):
    with decoding.DecodePool(2, False, 64, "none", False) as pool:
        assert len(pool.submit([FILES[0]] * 12)()) == 12
    assert len(slow_decoding) == 12 and len(set(slow_decoding)) == 2


@needs_fork
def test_processes_decode_elsewhere_and_are_gone_after_the_pool(slow_decoding):

    with decoding.DecodePool(2, True, 64, "none", False) as pool:
        assert len(pool.submit([FILES[0]] * 4)()) == 4
    assert slow_decoding == [] and multiprocessing.active_children() == []


def test_an_error_drops_the_chunks_still_queued(slow_decoding):
    with pytest.raises(KeyboardInterrupt):
        with decoding.DecodePool(1, False, 64, "none", False) as pool:
            pool.submit([FILES[0]] * 20)
            raise KeyboardInterrupt
    assert 1 <= len(slow_decoding) < 20


@pytest.fixture
def large_folder(tmp_path):
    """More files than PROCESS_MIN_ITEMS (links to the samples), so that tumor-infer decodes in processes."""
    folder = tmp_path / "large"
    folder.mkdir()
    for i in range(decoding.PROCESS_MIN_ITEMS + 200):
        (folder / f"{i:05d}.jpg").symlink_to(FILES[i % len(FILES)])
    return folder


def finish(proc: subprocess.Popen, seconds: float = 60.0) -> tuple[str, str]:
    """The rest of a command's output once it ends; if it hangs, it and its workers are killed and the test
    fails (a hung command left running would outlive the test run)."""
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers: started in a session of their own
        proc.communicate()
        pytest.fail(f"the command did not end within {seconds:g} s")


def process_group_gone(pgid: int, seconds: float = 10.0) -> bool:

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@needs_fork
@pytest.mark.parametrize(
    "signal_sent, to_group, code",
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143), (signal.SIGTERM, True, 143)],
    ids=["ctrl-c-to-the-group", "sigterm-to-the-command", "sigterm-to-the-group"],
)
def test_stopping_a_run_with_worker_processes_is_quiet_and_leaves_none(large_folder, signal_sent, to_group, code):
    """Ctrl-C in a terminal signals the whole group, `kill PID` the command, `kill -- -PGID` (a container stop,
    systemd) the group again: each ends as an interrupt, never as a dead worker's exit 2."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tumor_runtime", str(large_folder), "--format", "jsonl", "--threads", "2", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # its own process group, as a terminal gives a command
    assert proc.stdout.readline().startswith("{")  # classifying, so the workers are running
    if to_group:
        os.killpg(proc.pid, signal_sent)  # every process of the group, the workers too
    else:
        proc.send_signal(signal_sent)  # the command only
    _, stderr = finish(proc)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and stderr.strip().startswith("Stopped: interrupted"), stderr
    assert process_group_gone(proc.pid)  # no worker left behind


@needs_fork
def test_a_worker_ended_by_sigterm_means_the_run_was_terminated():
    """A worker that a SIGTERM ended (the group's, reaching it before the parent's handler runs) stops the run
    as terminated (143), not as a dying worker (2)."""
    from tumor_runtime.core.signals import Terminated

    with decoding.DecodePool(1, True, 64, "none", False) as pool:
        assert pool.submit([str(FILES[0])])()[0][1] is None  # started and working
        worker = pool.workers.links[0][0]
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(10)
        with pytest.raises(Terminated):
            pool.submit([str(FILES[0])])()


@needs_fork
def test_workers_end_on_their_own_when_the_pool_closes_after_the_last_chunk():
    """Each worker held a copy of its own task pipe's write end, so it never read end-of-file: every close waited
    STOP_GRACE_S per worker and then killed it (4 s of a 7.8 s run over 4,000 slices). Now each exits 0."""
    pool = decoding.DecodePool(2, True, 64, "none", False)
    with pool:
        for chunk in ([str(FILES[0])], [str(FILES[1])], [str(FILES[0])]):
            assert pool.submit(chunk)()[0][1] is None
    assert [process.exitcode for process, _, _ in pool.workers.links] == [0, 0]


def signal_handlers(*args):
    return [(signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))]


@needs_fork
def test_workers_leave_ctrl_c_to_the_command_and_die_on_sigterm(monkeypatch):

    monkeypatch.setattr(decoding, "decode_chunk", signal_handlers)  # reports the worker's own handlers
    with decoding.DecodePool(2, True, 64, "none", False) as pool:
        assert pool.submit([str(FILES[0])])() == [(signal.SIG_IGN, signal.SIG_DFL)]


@needs_fork
def test_a_worker_killed_during_a_run_stops_it_with_one_line(large_folder):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tumor_runtime", str(large_folder), "--format", "jsonl", "-q", "--threads", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().startswith("{")
    workers = [pid for name in Path(f"/proc/{proc.pid}/task").glob("*/children") for pid in name.read_text().split()]
    os.kill(int(workers[0]), signal.SIGKILL)  # what the kernel's out-of-memory killer does
    rest, stderr = finish(proc)
    assert proc.returncode == 2 and stderr.strip().splitlines() == [
        "Error: a decoding process stopped unexpectedly (killed, or out of memory): the rows before it were "
        "printed, the rest were not classified"
    ], stderr
    assert 0 < len(rest.splitlines()) + 1 < decoding.PROCESS_MIN_ITEMS + 200  # the rows before it, not all


@needs_fork
def test_a_worker_ignores_ctrl_c_and_ends_on_sigterm():
    """Ctrl-C reaches the whole process group: the parent stops the run; a worker must not print a traceback."""
    with decoding.DecodePool(1, True, 64, "none", False) as pool:
        assert pool.submit([str(FILES[0])])()[0][1] is None  # started and working
        worker = pool.workers.links[0][0]
        os.kill(worker.pid, signal.SIGINT)
        worker.join(0.5)
        assert worker.is_alive()
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(10)
        assert worker.exitcode == -signal.SIGTERM


def worker_pid(*args):
    time.sleep(0.05)  # long enough that a second worker, if there were one, would take the next chunk
    return [os.getpid()]


@needs_fork
def test_processes_are_as_many_as_the_workers_asked(monkeypatch):
    monkeypatch.setattr(decoding, "decode_chunk", worker_pid)
    for workers in (1, 2):
        with decoding.DecodePool(workers, True, 64, "none", False) as pool:
            waiting = [pool.submit([str(FILES[0])]) for _ in range(6)]
            assert len({pid for result in waiting for pid in result()}) == workers


@needs_fork
def test_a_worker_killed_during_a_run_with_output_says_nothing_was_written(large_folder, tmp_path):
    """With -o the atomic file is discarded: the message said 'the rows before it were written' (none were)."""
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "results.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tumor_runtime",
            str(large_folder),
            "--format",
            "jsonl",
            "-q",
            "--threads",
            "2",
            "-o",
            str(target),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    workers = []
    for _ in range(600):  # until the pool has started its processes (at most 30 s)
        workers = [
            pid for name in Path(f"/proc/{proc.pid}/task").glob("*/children") for pid in name.read_text().split()
        ]
        if workers or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert workers, "no decoding process started"
    os.kill(int(workers[0]), signal.SIGKILL)
    _, stderr = finish(proc)
    assert proc.returncode == 2 and stderr.strip().splitlines() == [
        f"Error: a decoding process stopped unexpectedly (killed, or out of memory): nothing was written to {target}"
    ], stderr
    assert list(target.parent.iterdir()) == []  # neither the file nor a temporary one
