"""The server's dynamic batching with a stand-in classifier: who shares a call, who waits, who fails."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tumor_runtime.serving.batching import MAX_BATCH, MAX_WAIT_MS, Batcher, Job


class FakeClassifier:
    """`decode` doubles a number; `classify` answers each (index, item) with its decoded value and index."""

    def __init__(self, fail_on=None, decode_gate: threading.Event | None = None):
        self.fail_on, self.decode_gate, self.batches = fail_on, decode_gate, []

    def decode(self, item):
        if self.decode_gate is not None and item == "slow":
            self.decode_gate.wait(5)
        return ("decoded", item)

    def classify(self, chunk, decoded, heatmaps):
        self.batches.append(([item for _, item in chunk], heatmaps))
        if self.fail_on in [item for _, item in chunk]:
            raise RuntimeError("model failed")
        for (index, item), value in zip(chunk, decoded):
            yield {"path": item, "index": index, "decoded": value, "heatmaps": heatmaps}


def job(items, heatmaps=False):
    return Job(list(items), [("decoded", x) for x in items], heatmaps, None)


def test_defaults_are_the_documented_ones():
    batcher = Batcher(FakeClassifier(), pool=None)
    assert (batcher.max_batch, batcher.max_wait, MAX_BATCH, MAX_WAIT_MS) == (32, 0.002, 32, 2.0)
    assert (batcher.queue, batcher.worker, batcher.decoding, list(batcher.calls)) == (None, None, 0, [])


def test_gather_takes_everything_queued_up_to_the_batch_size():
    async def scenario():
        batcher = Batcher(FakeClassifier(), pool=None, max_batch=4)
        batcher.queue = asyncio.Queue()
        for items in (["a", "b"], ["c"], ["d", "e"], ["f"]):
            batcher.queue.put_nowait(job(items))
        first = await batcher.gather()
        second = await batcher.gather()
        return first, second

    first, second = asyncio.run(scenario())
    assert [j.items for j in first] == [["a", "b"], ["c"], ["d", "e"]]  # 5 slices: the third job crossed 4
    assert [j.items for j in second] == [["f"]]


def test_gather_keeps_heatmap_jobs_apart_and_in_order():
    async def scenario():
        batcher = Batcher(FakeClassifier(), pool=None)
        batcher.queue = asyncio.Queue()
        for items, heat in ((["a"], False), (["b"], True), (["c"], False)):
            batcher.queue.put_nowait(job(items, heat))
        return [[j.items for j in await batcher.gather()] for _ in range(3)]

    assert asyncio.run(scenario()) == [[["a"]], [["c"]], [["b"]]]  # b waited; c, same kind as a, came next


def test_gather_waits_for_decoding_requests_only_until_the_deadline():
    async def scenario(decoding, max_wait_ms):
        batcher = Batcher(FakeClassifier(), pool=None, max_wait_ms=max_wait_ms)
        batcher.queue = asyncio.Queue()
        batcher.queue.put_nowait(job(["a"]))
        batcher.decoding = decoding
        loop = asyncio.get_running_loop()

        def queue_late():  # as classify does: the request stops decoding, is queued, and wakes the waiting batch
            batcher.decoding -= 1
            batcher.queue.put_nowait(job(["late"]))
            batcher.changed.set()

        loop.call_later(0.2, queue_late)
        start = loop.time()
        jobs = await batcher.gather()
        return [j.items for j in jobs], loop.time() - start

    items, waited = asyncio.run(scenario(decoding=1, max_wait_ms=5000))
    assert items == [["a"], ["late"]] and waited >= 0.19  # a request was decoding: it was waited for
    assert waited < 2.0  # and the batch woke when it was queued, not at the 5 s deadline
    items, waited = asyncio.run(scenario(decoding=1, max_wait_ms=10))
    assert items == [["a"]] and waited >= 0.009  # waited until the deadline, not for "late"
    assert asyncio.run(scenario(decoding=0, max_wait_ms=5000))[0] == [["a"]]  # nothing decoding: no wait


def test_requests_get_their_own_rows_and_share_one_call():
    async def scenario():
        gate = threading.Event()
        clf = FakeClassifier(decode_gate=gate)
        batcher = Batcher(clf, ThreadPoolExecutor(3))
        batcher.queue = asyncio.Queue()
        first = asyncio.ensure_future(batcher.classify(["slow"]))  # alone: in flight while the others arrive
        await asyncio.sleep(0.05)
        tasks = [asyncio.ensure_future(batcher.classify(items)) for items in (["a", "b"], ["c"], ["d", "e", "f"])]
        await asyncio.sleep(0.3)  # all decoded and queued before the worker starts
        gate.set()
        await first
        batcher.worker = asyncio.ensure_future(batcher.run())
        rows = await asyncio.gather(*tasks)
        batcher.worker.cancel()
        return clf, batcher, rows

    clf, batcher, rows = asyncio.run(scenario())
    assert list(batcher.calls) == [1, 6]
    assert clf.batches == [(["slow"], False), (["a", "b", "c", "d", "e", "f"], False)]
    assert [[r["path"] for r in request] for request in rows] == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert [r["index"] for request in rows for r in request] == list(range(6))
    assert rows[1][0]["decoded"] == ("decoded", "c")
    assert batcher.decoding == 0


def test_the_first_request_starts_the_worker_and_heatmaps_reach_the_classifier():
    async def scenario():
        clf = FakeClassifier()
        batcher = Batcher(clf, ThreadPoolExecutor(1))
        rows = await batcher.classify(["x"], heatmaps=True)
        worker = batcher.worker
        more = await batcher.classify(["y"])
        assert batcher.worker is worker  # one worker for the batcher's life
        worker.cancel()
        return clf, rows, more

    clf, rows, more = asyncio.run(scenario())
    assert rows == [{"path": "x", "index": 0, "decoded": ("decoded", "x"), "heatmaps": True}]
    assert more[0]["heatmaps"] is False and clf.batches == [(["x"], True), (["y"], False)]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs():
    async def scenario():
        batcher = Batcher(FakeClassifier(fail_on="bad"), ThreadPoolExecutor(1))
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.classify(["bad", "b"])
        return await batcher.classify(["ok"])

    assert [r["path"] for r in asyncio.run(scenario())] == ["ok"]


def test_decoding_counts_requests_until_they_are_queued_even_when_decoding_fails():
    async def scenario():
        gate = threading.Event()
        batcher = Batcher(FakeClassifier(decode_gate=gate), ThreadPoolExecutor(2))
        batcher.running = 1  # a model call under way: requests take the queue, not the lone path
        slow = asyncio.ensure_future(batcher.classify(["slow"]))
        await asyncio.sleep(0.05)
        during = batcher.decoding
        gate.set()
        await slow
        batcher.classifier.decode = lambda item: 1 / 0
        with pytest.raises(ZeroDivisionError):
            await batcher.classify(["x"])
        return during, batcher.decoding

    assert asyncio.run(scenario()) == (1, 0)


def test_a_lone_request_is_decoded_and_classified_in_one_pool_call_without_the_queue():
    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):
            CountingPool.submitted += 1
            return super().submit(*args, **kwargs)

    async def scenario():
        clf = FakeClassifier()
        batcher = Batcher(clf, CountingPool(1), max_wait_ms=5000)
        rows = await batcher.classify(["x", "y"])
        alone = (CountingPool.submitted, batcher.queue.qsize(), batcher.running, batcher.decoding)
        batcher.classifier.decode = lambda item: 1 / 0
        with pytest.raises(ZeroDivisionError):  # a failure in the lone call reaches its request
            await batcher.classify(["z"])
        batcher.worker.cancel()
        return clf, batcher, rows, alone

    clf, batcher, rows, alone = asyncio.run(scenario())
    assert [r["path"] for r in rows] == ["x", "y"] and [r["index"] for r in rows] == [0, 1]
    assert alone == (1, 0, 0, 0) and clf.batches == [(["x", "y"], False)]
    assert batcher.running == 0 and list(batcher.calls) == [2, 1]


def test_the_record_of_batch_sizes_is_bounded():
    """A server that runs for months keeps the last CALLS_KEPT batch sizes, not one entry per model call forever."""
    from tumor_runtime.serving import batching

    batcher = batching.Batcher(None, None)
    batcher.calls.extend(range(batching.CALLS_KEPT + 50))
    assert len(batcher.calls) == batching.CALLS_KEPT and batcher.calls[-1] == batching.CALLS_KEPT + 49
