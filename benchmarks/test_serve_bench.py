"""tumor-serve under load: requests per second and p50/p99 latency of single-image POSTs from a local
client at concurrency 1, 8 and 32, beside tumor-infer's end-to-end rate on the same images.

Bounded: a fixed number of requests (200 per level with --benchmark-only, 16 in a plain pytest),
each with a 30 s timeout, only to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from benchmarks.conftest import ARTIFACTS, full_run, machine_info

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture(scope="module", params=["1", "0"], ids=["one-process", "process-per-core"])
def server_port(request):
    """`tumor-serve` as users start it, in its own process (the client threads here do not share its GIL): the
    default single process, and `--workers 0` (one per core); yields (port, pid of the main process, workers)."""
    import subprocess
    import sys

    from tests.helpers.processes import free_port, wait_until_healthy

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tumor_runtime.cli.serve",
            "--port",
            str(port),
            "--model",
            str(ARTIFACTS / "model.int8.onnx"),
            "--no-access-log",
            "--workers",
            request.param,
        ],
        stderr=subprocess.DEVNULL,
    )
    wait_until_healthy(port)
    if request.param != "1":  # every worker answering, not only the first up
        post_all(port, [next(ARTIFACTS.joinpath("samples").rglob("*.jpg")).read_bytes()] * 16, 8)
    yield port, server.pid, request.param
    server.terminate()
    server.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of its worker processes (Linux /proc), in seconds."""
    import glob
    import os

    def own(p: str) -> float:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    children = [c for name in glob.glob(f"/proc/{pid}/task/*/children") for c in open(name).read().split()]
    return own(str(pid)) + sum(cpu_seconds(int(c)) for c in children)


def post_all(port: int, bodies: list[bytes], concurrency: int) -> list[tuple[float, int, bytes]]:
    """(seconds, status, response body) per request; one keep-alive connection per client thread."""
    local = threading.local()

    def post(body: bytes):
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        tic = time.perf_counter()
        local.conn.request("POST", "/predictions/tumor", body=body, headers={"Content-Type": "image/jpeg"})
        response = local.conn.getresponse()
        data = response.read()
        return time.perf_counter() - tic, response.status, data

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(post, bodies))


@pytest.mark.parametrize("concurrency", [1, 8, 32])
def test_http_requests_per_second(benchmark, request, bench_set, server_port, concurrency):
    import json

    from tumor_runtime.inference.classifier import Classifier

    count = 200 if full_run(request.config) else 16
    files = [bench_set[0][i % len(bench_set[0])] for i in range(count)]
    bodies = [f.read_bytes() for f in files]
    results = {}

    port, pid, workers = server_port

    def run():
        tic, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(pid), time.process_time()
        results["rows"] = post_all(port, bodies, concurrency)
        results["seconds"] = time.perf_counter() - tic
        results["server_cpu"], results["client_cpu"] = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu

    benchmark.pedantic(run, rounds=1, iterations=1)
    latencies = np.array([r[0] for r in results["rows"]])
    benchmark.extra_info.update(
        {
            "model": "compact",
            "variant": "onnx-int8",
            "kind": "http",
            "concurrency": concurrency,
            "workers": workers,  # "1" (the default) or "0" (one per core)
            "requests": count,
            "requests_per_second": count / results["seconds"],
            "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            # core time per request, server and client: with the cores, the most requests/s this machine allows
            "server_cpu_ms": results["server_cpu"] / count * 1e3,
            "client_cpu_ms": results["client_cpu"] / count * 1e3,
            "machine": machine_info(),
        }
    )
    failed = [(status, body[:200]) for _, status, body in results["rows"] if status != 200]
    assert not failed, failed[:3]
    expected = [r["label"] for r in Classifier.load().predict(files[:16])]
    assert [json.loads(body)["label"] for _, _, body in results["rows"][:16]] == expected
