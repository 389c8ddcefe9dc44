"""The guard every request passes: here, what a client still waiting gets when the shutdown grace ends."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
import time

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from tests.helpers.processes import free_port  # noqa: E402
from tumor_runtime.serving.guard import ACCESS_LOG, Guard  # noqa: E402
from tumor_runtime.serving.service import Service  # noqa: E402


def test_a_request_in_flight_when_the_shutdown_grace_ends_gets_a_json_503_and_is_logged_so(caplog):
    """uvicorn cancels what is still running when its grace ends; the client was answered uvicorn's plain-text
    500 while the access log said 503. Now both say 503, in the API's JSON error form."""
    started = threading.Event()

    async def slow(scope, receive, send):  # a request that outlives the grace
        started.set()
        await asyncio.sleep(60)

    service = Service(None, None, 1.0, None, None, "onnxruntime")
    port = free_port()
    config = uvicorn.Config(
        Guard(slow, service), port=port, log_level="critical", lifespan="off", timeout_graceful_shutdown=0.3
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    caplog.set_level(logging.INFO, logger=ACCESS_LOG.name)
    ACCESS_LOG.propagate = True  # another test may have turned it off for stderr
    answer: dict = {}

    def ask():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/predictions/tumor", body=b"x")
        response = connection.getresponse()
        answer.update(status=response.status, body=response.read(), type=response.getheader("content-type"))

    client = threading.Thread(target=ask)
    client.start()
    assert started.wait(10)
    server.should_exit = True
    client.join(15)
    thread.join(15)
    assert answer["status"] == 503 and answer["type"] == "application/json"
    body = json.loads(answer["body"])
    assert body["code"] == 503 and "shutting down" in body["message"]
    logged = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOG.name]
    assert any('"POST /predictions/tumor" 503' in line for line in logged), logged
