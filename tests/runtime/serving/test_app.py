"""tumor-serve: the API with Starlette's test client, and one end-to-end test in headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.helpers.comparisons import assert_same_probabilities
from tests.helpers.datasets import SAMPLES
from tests.helpers.processes import free_port, wait_until_healthy

pytest.importorskip("starlette")
pytest.importorskip("multipart")
from starlette.testclient import TestClient  # noqa: E402

from tumor_runtime.imaging import formats  # noqa: E402
from tumor_runtime.inference.classifier import Classifier  # noqa: E402
from tumor_runtime.serving import app as server  # noqa: E402
from tumor_runtime.serving import guard  # noqa: E402
from tumor_runtime.serving import service as service_module  # noqa: E402
from tumor_runtime.serving.app import create_app  # noqa: E402

SAMPLE_FILES = sorted(SAMPLES.rglob("*.jpg"))


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(load_now=True)) as c:
        yield c


@pytest.fixture(scope="module")
def expected():
    """What tumor-infer's Classifier says about each sample."""
    return {f.name: rec for f, rec in zip(SAMPLE_FILES, Classifier.load().predict(SAMPLE_FILES))}


def test_ping_and_model_card(client):
    assert client.get("/ping").json() == {"status": "Healthy"}
    card = client.get("/models/tumor").json()
    assert card["classes"] == ["glioma", "meningioma", "notumor", "pituitary"] and card["precision"] == "int8"
    assert len(card["sha256"]) == 64 and card["heatmaps"] is True
    from tumor_runtime.model.manifest import default_model_path

    assert card["input"]["size"] == Classifier.load(verify=False).info.input_size
    assert card["path"] == default_model_path().name  # the file name, never where the server keeps it


def test_every_file_failing_is_400_however_many(client):
    files = [("data", (f"bad{i}.jpg", b"\xff\xd8\xff" + b"\0" * 200, "image/jpeg")) for i in range(3)]
    response = client.post("/predictions/tumor", files=files)
    assert response.status_code == 400 and "bad0.jpg" in response.json()["message"]
    mixed = client.post(
        "/predictions/tumor",
        files=[files[0], ("data", (SAMPLE_FILES[0].name, SAMPLE_FILES[0].read_bytes(), "image/jpeg"))],
    )
    assert mixed.status_code == 200 and [r["error"] is None for r in mixed.json()] == [False, True]


def test_dicom_without_preamble_is_read_by_its_name(client, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from tests.helpers.dicom import write_dicom

    gray = np.asarray(Image.open(SAMPLE_FILES[0]).convert("L"))
    path = write_dicom(tmp_path / "np.dcm", gray.astype(np.uint16), bits_stored=8, with_preamble=False)
    assert path.read_bytes()[128:132] != b"DICM" and pydicom
    response = client.post("/predictions/tumor", files=[("data", ("np.dcm", path.read_bytes(), "application/dicom"))])
    assert response.status_code == 200 and response.json()["label"]


def test_raw_body_gives_the_tumor_infer_record(client, expected):
    sample = SAMPLE_FILES[0]
    got = client.post("/predictions/tumor?filename=" + sample.name, content=sample.read_bytes()).json()
    want = expected[sample.name]
    assert got["path"] == sample.name
    assert {k: got[k] for k in ("label", "tumor", "error")} == {k: want[k] for k in ("label", "tumor", "error")}
    assert_same_probabilities(got, want)


def test_multipart_with_several_files_gives_a_list(client, expected):
    files = [("data", (f.name, f.read_bytes(), "image/jpeg")) for f in SAMPLE_FILES[:3]]
    got = client.post("/predictions/tumor", files=files).json()
    assert [r["path"] for r in got] == [f.name for f in SAMPLE_FILES[:3]]
    assert [r["label"] for r in got] == [expected[f.name]["label"] for f in SAMPLE_FILES[:3]]


def test_png_tiff_bmp_and_dicom_bodies(client):
    gray = np.asarray(Image.open(SAMPLE_FILES[0]).convert("L"))
    labels = set()
    for fmt in ("PNG", "TIFF", "BMP"):
        buffer = io.BytesIO()
        Image.fromarray(gray).save(buffer, format=fmt)
        response = client.post("/predictions/tumor", content=buffer.getvalue())
        assert response.status_code == 200, (fmt, response.json())
        labels.add(response.json()["label"])
    assert len(labels) == 1
    pydicom = pytest.importorskip("pydicom")
    dicom = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    got = client.post("/predictions/tumor", content=dicom.read_bytes()).json()
    assert got["dicom"]["sop_instance_uid"] and got["label"]


def test_heatmap_is_a_png_overlay(client):
    got = client.post("/predictions/tumor?heatmap=1", content=SAMPLE_FILES[1].read_bytes()).json()
    picture = Image.open(io.BytesIO(base64.b64decode(got["heatmap_png"])))
    assert picture.format == "PNG" and picture.width == Classifier.load(verify=False).info.input_size
    assert "heatmap_png" not in client.post("/predictions/tumor", content=SAMPLE_FILES[1].read_bytes()).json()


@pytest.mark.parametrize(
    "body, status", [(b"hello, not an image", 415), (b"\xff\xd8\xff\xe0broken jpeg", 400), (b"", 400)]
)
def test_bad_bodies_get_json_errors(client, body, status):
    response = client.post("/predictions/tumor", content=body)
    assert response.status_code == status
    message = response.json()
    assert message["code"] == status and message["message"] and "Traceback" not in response.text
    assert client.get("/ping").status_code == 200  # and the server keeps serving


def test_size_limit_is_413():
    with TestClient(create_app(max_upload_mb=0.01, load_now=True)) as small:
        response = small.post("/predictions/tumor", content=b"\xff\xd8\xff" + b"\0" * 20_000)
        assert response.status_code == 413 and response.json()["type"] == "PayloadTooLarge"
        buffer = io.BytesIO()
        Image.open(SAMPLE_FILES[0]).convert("L").resize((96, 96)).save(buffer, format="PNG")
        assert len(buffer.getvalue()) < 0.01 * 2**20  # a whole slice under the limit ...
        ok = small.post("/predictions/tumor", content=buffer.getvalue())
        assert ok.status_code == 200 and ok.json()["label"]  # ... is classified


def test_503_until_the_model_is_loaded():
    app = create_app(load_now=False)  # TestClient without `with`: no startup, so nothing loads
    client = TestClient(app)
    response = client.post("/predictions/tumor", content=SAMPLE_FILES[0].read_bytes())
    assert response.status_code == 503 and response.json()["type"] == "ServiceUnavailable"
    assert response.json()["message"] == "the model is still loading; try again shortly"
    assert client.get("/models/tumor").status_code == 503
    assert client.get("/ping").json() == {"status": "Loading"}
    app.state.service.load()
    assert client.post("/predictions/tumor", content=SAMPLE_FILES[0].read_bytes()).status_code == 200


def test_a_bad_model_is_503_with_the_reason(tmp_path):
    (tmp_path / "bad.onnx").write_text("not a model")
    with TestClient(create_app(model=str(tmp_path / "bad.onnx"))) as client:
        for _ in range(50):  # loads in the background
            response = client.post("/predictions/tumor", content=SAMPLE_FILES[0].read_bytes())
            if "still loading" not in response.text:
                break
            time.sleep(0.05)
        assert response.status_code == 503 and "not a loadable ONNX model" in response.json()["message"]
        ping = client.get("/ping")  # a model that can never load is not "Healthy"
        assert ping.status_code == 500 and ping.json()["status"] == "Unhealthy"
        assert "not a loadable ONNX model" in ping.json()["reason"]


def test_chunked_multipart_uploads_are_held_to_the_limit():
    """The limit is on the whole request, however it is framed: a chunked multipart body with many parts each
    under the limit is 413 too (it was accepted: 165 MB through a 2 MB limit)."""
    boundary = "b0undary"
    part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + SAMPLE_FILES[0].read_bytes()
        + b"\r\n"
    )

    def chunks():  # a generator body: httpx sends it with Transfer-Encoding: chunked, no Content-Length
        for _ in range(40):
            yield part
        yield f"--{boundary}--\r\n".encode()

    with TestClient(create_app(max_upload_mb=0.1, load_now=True)) as client:
        response = client.post(
            "/predictions/tumor",
            content=chunks(),
            headers={"Content-Type": f"MULTIPART/FORM-DATA; boundary={boundary}"},
        )
        assert response.status_code == 413
        one = client.post(
            "/predictions/tumor",
            content=iter([part, f"--{boundary}--\r\n".encode()]),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert one.status_code == 200 and one.json()["label"]  # upper-case or not, within the limit it works


def test_token_is_checked_on_every_route_but_ping():
    with TestClient(create_app(token="s3cret", load_now=True)) as client:
        assert client.get("/ping").status_code == 200
        for method, route in (("get", "/"), ("get", "/models/tumor"), ("post", "/predictions/tumor")):
            assert getattr(client, method)(route).status_code == 401
            wrong = getattr(client, method)(route, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["type"] == "Unauthorized"
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/models/tumor", headers=good).status_code == 200
        assert client.post("/predictions/tumor", headers=good, content=SAMPLE_FILES[0].read_bytes()).status_code == 200
        assert client.get("/?token=s3cret").status_code == 200
        assert client.get("/models/tumor?token=s3cret").status_code == 401  # the query token is for the page only
        assert client.get("/models/tumor", headers={"Authorization": "Bearer s3cre"}).status_code == 401  # a prefix


def test_internal_errors_are_json_without_a_stack_trace(client, monkeypatch):
    service = client.app.state.service

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(service.classifier, "classify", broken)  # the batched path
    response = client.post("/predictions/tumor", content=SAMPLE_FILES[0].read_bytes())
    assert response.status_code == 500 and response.json()["type"] == "InternalServerError"
    assert "Traceback" not in response.text and "boom" not in response.text


def test_concurrent_requests_give_the_same_answers(client, expected):
    def post(path: Path) -> tuple[str, str]:
        return path.name, client.post("/predictions/tumor", content=path.read_bytes()).json()["label"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, SAMPLE_FILES * 2))
    assert all(label == expected[name]["label"] for name, label in answers)


def test_page_is_offline_and_says_research_only(client):
    html = client.get("/").text
    assert "research use only, not a medical device" in html.lower()
    assert "http://" not in html and "https://" not in html  # no CDN: works offline


def test_serve_without_the_extra_names_it():
    import subprocess
    import sys

    from tests.helpers.processes import block_imports

    code = block_imports("starlette", "uvicorn") + (
        "from tumor_runtime.cli.serve import main\nsys.argv = ['tumor-serve']\nmain()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2 and 'pip install -e ".[serve]"' in result.stderr
    assert "Traceback" not in result.stderr


# A real browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server():
    uvicorn = pytest.importorskip("uvicorn")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load_now=True), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_browser_uploads_a_slice_and_reads_the_label(live_server, expected, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(live_server + "/")
        assert "not a medical device" in browser.page_source
        sample = SAMPLE_FILES[0]
        browser.find_element(By.ID, "files").send_keys(str(sample))
        label = WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "label-0")))
        assert label.text == expected[sample.name]["label"]
        WebDriverWait(browser, 10).until(
            lambda b: b.find_element(By.CSS_SELECTOR, ".result img").get_attribute("src").startswith("data:image/png")
        )  # the heat-map overlay is shown
        target = os.environ.get("TUMOR_SERVE_SCREENSHOT")  # the README's picture: set it to take a new one
        browser.save_screenshot(target or str(tmp_path / "page.png"))
    finally:
        browser.quit()


def test_a_body_that_trickles_in_too_slowly_is_408(monkeypatch, live_server):
    """A real client over a socket sends the headers and part of the body, then stalls: 408, not a held slot."""
    from tumor_runtime.serving import uploads

    monkeypatch.setattr(uploads, "BODY_TIMEOUT_S", 0.2)
    body = SAMPLE_FILES[0].read_bytes()
    port = int(live_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /predictions/tumor HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:100]
        )
        tic, reply = time.perf_counter(), b""
        while b"RequestTimeout" not in reply and time.perf_counter() - tic < 10:
            chunk = conn.recv(65536)  # the headers and the JSON body may come in separate packets
            if not chunk:
                break
            reply += chunk
        waited, reply = time.perf_counter() - tic, reply.decode("latin-1")
    assert reply.startswith("HTTP/1.1 408") and '"RequestTimeout"' in reply
    assert waited < 5  # answered after the timeout, not when the client gives up


def test_concurrent_requests_share_model_calls_and_keep_their_answers(expected):
    """Dynamic batching: 16 concurrent single-image requests need fewer model calls than requests, and each
    gets exactly tumor-infer's record for its own image."""
    with TestClient(create_app(load_now=True)) as client:
        batcher = client.app.state.service.batcher
        files = (SAMPLE_FILES * 2)[:16]
        with ThreadPoolExecutor(16) as pool:
            got = list(
                pool.map(
                    lambda f: client.post(f"/predictions/tumor?filename={f.name}", content=f.read_bytes()).json(), files
                )
            )
        assert [g["path"] for g in got] == [f.name for f in files]
        for g, f in zip(got, files):
            assert g["label"] == expected[f.name]["label"]
            assert_same_probabilities(g, expected[f.name])
        assert sum(batcher.calls) == 16  # every image went through a (shared) model call once


def test_queued_requests_are_run_as_one_batch_in_their_own_order():
    import asyncio

    from tumor_runtime.serving.batching import Batcher

    clf = Classifier.load(threads=1)
    batcher = Batcher(clf, ThreadPoolExecutor(1))

    async def three_requests():
        batcher.queue = asyncio.Queue()
        asks = [SAMPLE_FILES[:2], SAMPLE_FILES[2:3], SAMPLE_FILES[3:6]]
        tasks = [asyncio.ensure_future(batcher.classify(a)) for a in asks]
        await asyncio.sleep(0.5)  # all three decoded and queued before the worker starts
        batcher.worker = asyncio.ensure_future(batcher.run())
        results = await asyncio.gather(*tasks)
        batcher.worker.cancel()
        return asks, results

    asks, results = asyncio.run(three_requests())
    # The first arrived alone and ran at once; the two that came while it ran share one model call.
    assert list(batcher.calls) == [2, 4]
    for ask, rows in zip(asks, results):
        assert [r["path"] for r in rows] == [str(p) for p in ask]
        assert [r["label"] for r in rows] == [r["label"] for r in clf.predict(ask)]


def test_a_lone_request_is_not_held_back():
    import asyncio

    from tumor_runtime.serving.batching import Batcher

    clf = Classifier.load(threads=1)
    batcher = Batcher(clf, ThreadPoolExecutor(1), max_wait_ms=5000)  # a long wait that must not apply

    async def one():
        start = time.perf_counter()
        rows = await batcher.classify([SAMPLE_FILES[0]])
        return rows, time.perf_counter() - start

    rows, seconds = asyncio.run(one())
    assert rows[0]["label"] and seconds < 4.0 and list(batcher.calls) == [1]


def test_tumor_serve_says_where_it_listens_and_logs_one_line_per_request():
    """The command as a user starts it: a start line (URL, model, token), then one access line per request,
    without the token; --no-access-log silences the lines."""
    import subprocess
    import urllib.request

    pytest.importorskip("uvicorn")
    for access_log in ("--access-log", "--no-access-log"):
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tumor_runtime.cli.serve",
                "--port",
                str(port),
                "--token",
                "s3cret-token",
                access_log,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until_healthy(port, 30)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/models/tumor", headers={"Authorization": "Bearer s3cret-token"}
            )
            assert json.loads(urllib.request.urlopen(request, timeout=30).read())["classes"]
        finally:
            process.terminate()
            stderr = process.communicate(timeout=30)[1]
        assert f"http://127.0.0.1:{port}/" in stderr and "a bearer token is required" in stderr
        lines = [line for line in stderr.splitlines() if '"GET /models/tumor"' in line]
        assert "s3cret" not in stderr
        if access_log == "--access-log":
            assert len(lines) == 1 and re.search(r'127\.0\.0\.1 "GET /models/tumor" 200 \d+\.\d ms$', lines[0])
        else:
            assert lines == []


# The pieces of the request path, one rule at a time.


def test_error_bodies_name_the_kind_of_each_status():
    kinds = {
        400: "BadRequest",
        401: "Unauthorized",
        404: "NotFound",
        405: "MethodNotAllowed",
        408: "RequestTimeout",
        413: "PayloadTooLarge",
        415: "UnsupportedMediaType",
        500: "InternalServerError",
        503: "ServiceUnavailable",
        418: "Error",
    }
    for code, kind in kinds.items():
        response = guard.error(code, "why")
        assert response.status_code == code
        assert json.loads(response.body) == {"code": code, "type": kind, "message": "why"}


@pytest.mark.parametrize(
    "data, name, suffix",
    [
        (b"\xff\xd8\xff\xe0rest", "", ".jpg"),
        (b"\x89PNG\r\n\x1a\nrest", "", ".png"),
        (b"II*\x00rest", "", ".tif"),
        (b"MM\x00*rest", "", ".tif"),
        (b"BMrest", "", ".bmp"),
        (b"\0" * 128 + b"DICM" + b"\0", "", ".dcm"),
        (b"\0" * 128 + b"DICM", "", None),
        (b"raw dicom", "scan.DCM", ".dcm"),
        (b"raw", "scan.dicom", ".dcm"),
        (b"GIF89a", "a.gif", None),
        (b"", "", None),
        (b"\xff\xd8", "", None),
    ],
)
def test_accepted_content_is_recognised_by_its_leading_bytes(data, name, suffix):
    assert formats.sniff(data, name) == suffix


def fake_request(path="/predictions/tumor", authorization=None, token=None):
    headers = {} if authorization is None else {"authorization": authorization}
    query = {} if token is None else {"token": token}
    return SimpleNamespace(headers=headers, query_params=query, url=SimpleNamespace(path=path))


def test_the_token_is_checked_whole_and_the_query_form_only_for_the_page():
    guarded = SimpleNamespace(token="s3cret")
    assert guard.authorized(fake_request(), SimpleNamespace(token=None))
    assert guard.authorized(fake_request(authorization="Bearer s3cret"), guarded)
    assert guard.authorized(fake_request(authorization="bearer s3cret"), guarded)
    for wrong in ("Bearer s3cre", "Bearer s3cret2", "Bearer ", "s3cret", "Basic s3cret"):
        assert not guard.authorized(fake_request(authorization=wrong), guarded)
    assert guard.authorized(fake_request(path="/", token="s3cret"), guarded)
    assert not guard.authorized(fake_request(path="/predictions/tumor", token="s3cret"), guarded)
    assert not guard.authorized(fake_request(path="/", token=""), guarded)
    assert not guard.authorized(fake_request(path="/"), guarded)  # the page opened without ?token=


def test_the_service_keeps_its_limits_and_options():
    service = service_module.Service("m.onnx", "t", 1.5, threads=2, tumor_threshold=0.25, backend="openvino")
    assert (service.model, service.token, service.max_bytes) == ("m.onnx", "t", int(1.5 * 2**20))
    assert (service.threads, service.tumor_threshold, service.backend) == (2, 0.25, "openvino")
    assert (service.classifier, service.load_error, service.batcher) == (None, None, None)
    service.pool.shutdown()


def test_a_model_that_cannot_load_is_reported_without_the_servers_folders(tmp_path, capsys):
    service = service_module.Service(str(tmp_path / "models" / "absent.onnx"), None, 1.0, None, None, "onnxruntime")
    service.load()
    assert service.classifier is None and str(tmp_path) not in service.load_error
    assert service.load_error.startswith("model absent.onnx does not exist")
    assert "tumor-serve: the model cannot be loaded: model " in capsys.readouterr().err
    service.pool.shutdown()


def test_app_from_environment_reads_every_option(monkeypatch):
    for key, value in {
        "TUMOR_SERVE_MODEL": "m.onnx",
        "TUMOR_SERVE_TOKEN": "tok",
        "TUMOR_SERVE_MAX_UPLOAD_MB": "3",
        "TUMOR_SERVE_THREADS": "2",
        "TUMOR_SERVE_TUMOR_THRESHOLD": "0.3",
        "TUMOR_SERVE_BACKEND": "openvino",
        "TUMOR_SERVE_ACCESS_LOG": "0",
    }.items():
        monkeypatch.setenv(key, value)
    service = server.app_from_environment().state.service
    assert (service.model, service.token, service.max_bytes, service.threads) == ("m.onnx", "tok", 3 * 2**20, 2)
    assert (service.tumor_threshold, service.backend) == (0.3, "openvino")
    for key in (
        "TUMOR_SERVE_MODEL",
        "TUMOR_SERVE_TOKEN",
        "TUMOR_SERVE_MAX_UPLOAD_MB",
        "TUMOR_SERVE_THREADS",
        "TUMOR_SERVE_TUMOR_THRESHOLD",
        "TUMOR_SERVE_BACKEND",
    ):
        monkeypatch.delenv(key)
    service = server.app_from_environment().state.service
    assert (service.model, service.token, service.max_bytes, service.threads) == (None, None, 20 * 2**20, None)
    assert (service.tumor_threshold, service.backend) == (None, "onnxruntime")


def test_the_access_log_is_enabled_once_and_kept_to_itself(monkeypatch):
    log = guard.ACCESS_LOG
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "propagate", True)
    monkeypatch.setattr(log, "level", 0)
    guard.enable_access_log()
    guard.enable_access_log()
    assert len(log.handlers) == 1 and log.level == 20 and log.propagate is False
    assert log.handlers[0].stream is sys.stderr


def test_the_model_card_hides_the_servers_file_layout(client):
    card = client.get("/models/tumor").json()
    assert card["path"] == "model.int8.onnx" and card["classes"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert client.get("/ping").json() == {"status": "Healthy"}


def test_an_unsupported_file_beside_accepted_ones_is_its_own_error_row(client, expected):
    """Only a request whose every file is refused is 415 (below); one refused file does not cost the others."""
    files = [("files", ("a.gif", b"GIF89a...", "image/gif")), ("files", ("b.jpg", SAMPLE_FILES[0].read_bytes(), "x"))]
    response = client.post("/predictions/tumor", files=files)
    assert response.status_code == 200
    refused, answered = response.json()
    assert refused["path"] == "a.gif" and refused["label"] is None
    assert refused["error"] == "not a JPEG, PNG, BMP, TIFF or DICOM file"
    assert answered["path"] == "b.jpg" and answered["label"] == expected[SAMPLE_FILES[0].name]["label"]


def test_when_every_file_fails_the_400_lists_five_and_counts_the_rest(client):
    broken = b"\xff\xd8\xff broken"
    files = [("files", (f"f{i}.jpg", broken, "image/jpeg")) for i in range(7)]
    message = client.post("/predictions/tumor", files=files).json()["message"]
    assert message.count("f") >= 5 and message.endswith(" (and 2 more)")
    assert message.startswith("f0.jpg: ") and "f5.jpg" not in message
    one = client.post("/predictions/tumor", files=files[:1]).json()["message"]
    assert one.startswith("f0.jpg: ") and "more" not in one


@pytest.mark.parametrize(
    "query, wanted",
    [
        ("heatmaps=1", True),
        ("heatmap=true", True),
        ("heatmap=YES", True),
        ("heatmap=0", False),
        ("heatmaps=no", False),
        ("", False),
    ],
)
def test_heatmaps_are_asked_for_by_either_spelling(client, query, wanted):
    reply = client.post(f"/predictions/tumor?{query}", content=SAMPLE_FILES[0].read_bytes()).json()
    assert ("heatmap_png" in reply) is wanted
    if wanted:
        assert Image.open(io.BytesIO(base64.b64decode(reply["heatmap_png"]))).format == "PNG"


def test_a_mixed_request_with_one_bad_file_answers_the_good_one_and_names_the_bad(client):
    files = [
        ("files", ("good.jpg", SAMPLE_FILES[0].read_bytes(), "image/jpeg")),
        ("files", ("bad.jpg", b"\xff\xd8\xff broken", "image/jpeg")),
    ]
    rows = client.post("/predictions/tumor", files=files).json()
    assert [r["path"] for r in rows] == ["good.jpg", "bad.jpg"]
    assert rows[0]["error"] is None and rows[1]["error"] and rows[1]["label"] is None


def test_each_request_logs_one_access_line_with_client_method_path_status_and_time(client, caplog):
    with caplog.at_level("INFO", logger=guard.ACCESS_LOG.name):
        client.get("/ping")
        client.get("/no-such-page")
    lines = [r.getMessage() for r in caplog.records if r.name == guard.ACCESS_LOG.name]
    assert len(lines) == 2
    assert re.fullmatch(r'testclient "GET /ping" 200 \d+\.\d ms', lines[0])
    assert re.fullmatch(r'testclient "GET /no-such-page" 404 \d+\.\d ms', lines[1])


def test_a_request_without_a_client_address_logs_a_dash(caplog):
    import asyncio

    app = create_app(load_now=True)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/ping",
        "raw_path": b"/ping",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "server": ("test", 80),
        "root_path": "",
        "http_version": "1.1",
        "app": app,
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    with caplog.at_level("INFO", logger=guard.ACCESS_LOG.name):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert re.fullmatch(r'- "GET /ping" 200 \d+\.\d ms', caplog.records[-1].getMessage())


def test_a_form_without_a_file_and_several_unsupported_files_are_named(client):
    body = b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file here\r\n--xyz--\r\n'
    response = client.post(
        "/predictions/tumor", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert response.status_code == 400 and response.json()["message"] == "the form holds no file"
    files = [("files", ("a.gif", b"GIF89a...", "image/gif")), ("files", ("b.txt", b"plain text", "text/plain"))]
    response = client.post("/predictions/tumor", files=files)
    assert response.status_code == 415
    assert response.json()["message"] == "a.gif, b.txt: not a JPEG, PNG, BMP, TIFF or DICOM file"


@pytest.mark.parametrize(
    "token, says",
    [
        ("   ", "empty or blank"),
        ("s3cret ", "white space"),
        ("\tsecret", "white space"),
        ("geheimnis-ä", "printable ASCII"),
        ("se\x01cret", "printable ASCII"),
    ],
)
def test_a_token_no_client_can_send_is_refused_at_start(token, says):
    """Round four, item 10: Starlette compares headers as latin-1 and HTTP strips white space, so these tokens
    started a server whose every API call was 401."""
    from click.testing import CliRunner

    from tumor_runtime.cli.serve import main

    refused = CliRunner().invoke(main, ["--token", token])
    assert refused.exit_code == 2 and says in refused.output and "tumor-serve:" not in refused.output


def test_a_port_in_use_is_one_line_before_the_banner():
    """Round four, item 18: uvicorn printed the banner, then exited 3."""
    import socket

    from click.testing import CliRunner

    from tumor_runtime.cli.serve import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "tumor-serve: http" not in result.output


def test_a_dicom_with_more_frames_than_a_request_may_ask_for_is_413_before_any_is_decoded(
    client, tmp_path, monkeypatch
):
    """A 20 MB DICOM may hold 20,000 tiny frames: counted from its header, a request past the limit is refused
    at once (and one within it is classified)."""
    from tests.helpers.dicom import write_dicom
    from tumor_runtime.core.options import MAX_FRAMES_PER_REQUEST
    from tumor_runtime.inference.classifier import Classifier

    frames = np.zeros((MAX_FRAMES_PER_REQUEST + 1, 8, 8), np.uint16)
    frames[:, 2:6, 2:6] = 900
    many = write_dicom(tmp_path / "many.dcm", frames).read_bytes()
    decoded = []
    monkeypatch.setattr(Classifier, "decode", lambda self, item: decoded.append(item) or (None, "x", None, None))
    response = client.post("/predictions/tumor?filename=many.dcm", content=many)
    assert response.status_code == 413, response.text
    assert response.json()["message"] == (
        f"the request holds {MAX_FRAMES_PER_REQUEST + 1} frames, over the limit of {MAX_FRAMES_PER_REQUEST}"
    )
    monkeypatch.undo()
    head = np.zeros((2, 64, 64), np.uint16)
    head[:, 16:48, 12:52] = 1200  # two frames of a bright block on black
    few = write_dicom(tmp_path / "few.dcm", head).read_bytes()
    rows = client.post("/predictions/tumor?filename=few.dcm", content=few).json()
    assert [r["path"] for r in rows] == ["few.dcm#1", "few.dcm#2"] and all(r["label"] for r in rows)


def test_request_bodies_held_at_once_are_bounded(monkeypatch):
    """Past MAX_CONCURRENT_BODIES requests wait before their bodies are read: memory is bounded by the limit
    times the upload size, however many clients send at once."""
    import httpx

    from tumor_runtime.serving import service as service_module

    monkeypatch.setattr(service_module, "MAX_CONCURRENT_BODIES", 2)
    holding, peak = [0], [0]
    real = server.read_uploads

    async def counted(request, service):
        holding[0] += 1
        peak[0] = max(peak[0], holding[0])
        await asyncio.sleep(0.05)
        try:
            return await real(request, service)
        finally:
            holding[0] -= 1

    monkeypatch.setattr(server, "read_uploads", counted)
    app = create_app(load_now=True)
    body = SAMPLE_FILES[0].read_bytes()

    async def many():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return await asyncio.gather(*(http.post("/predictions/tumor", content=body) for _ in range(6)))

    responses = asyncio.run(many())
    assert [r.status_code for r in responses] == [200] * 6
    assert peak[0] == 2


def test_the_work_for_a_client_that_left_stops_between_frames(tmp_path):
    """A DICOM request's frames are classified one by one in a thread; once its client has gone (the watcher
    sets the event when Starlette reports the disconnect), the next frame is not decoded."""
    import threading
    from types import SimpleNamespace

    from tests.helpers.dicom import write_dicom

    head = np.zeros((3, 64, 64), np.uint16)
    head[:, 16:48, 12:52] = 1200
    data = write_dicom(tmp_path / "three.dcm", head).read_bytes()
    seen = []

    class Counting:
        def iter_predict(self, items, heatmaps=False, processes=None):
            assert processes is False  # the server never forks decode workers (they would hold its socket)
            for i, frame in enumerate(items):  # the frames the server listed from the header
                seen.append(i)
                yield {"path": str(frame), "error": None}

    gone = threading.Event()
    service = SimpleNamespace(classifier=Counting())
    rows = server.classify_dicom(service, [("three.dcm", data)], False, gone)
    assert [r["path"] for r in rows] == ["three.dcm#1", "three.dcm#2", "three.dcm#3"]
    gone.set()
    seen.clear()
    with pytest.raises(server.ClientGone):
        server.classify_dicom(service, [("three.dcm", data)], False, gone)
    assert seen == [0]

    class Leaving:
        async def is_disconnected(self):
            return True

    watched = threading.Event()
    asyncio.run(asyncio.wait_for(server.until_gone(Leaving(), watched), 5))
    assert watched.is_set()


@pytest.mark.parametrize("cores", [1, 2, 3, 16])
def test_workers_0_serves_with_one_process_per_core_and_shares_out_the_threads(monkeypatch, cores):
    """--workers 0: one process per available core, at most 8, each with one inference thread (or the cores shared
    out); given values are kept, and one worker (the default) leaves its threads to the classifier (0)."""
    from tumor_runtime.cli import serve
    from tumor_runtime.core import system

    monkeypatch.setattr(system, "available_cores", lambda: cores)
    workers, threads = serve.worker_layout(0, 0)
    assert workers == min(cores, serve.MAX_AUTO_WORKERS) and threads == (0 if workers == 1 else cores // workers)
    assert workers * max(threads, 1) <= max(cores, 1)  # never more threads than cores
    assert serve.worker_layout(3, 0) == (3, max(1, cores // 3))
    assert serve.worker_layout(1, 0) == (1, 0) and serve.worker_layout(0, 5)[1] == 5


def test_one_of_several_workers_loads_its_model_before_it_accepts_a_request(monkeypatch):
    """With --workers N > 1 each process loads its model in the server's startup, so that none answers 503
    while another is ready (a request right after start got 503 from a worker still loading, 2 runs in 5);
    one worker keeps loading in the background and answering 503 meanwhile."""
    monkeypatch.setenv("TUMOR_SERVE_WORKERS", "2")
    monkeypatch.setenv("TUMOR_SERVE_ACCESS_LOG", "0")
    app = server.app_from_environment()
    with TestClient(app) as c:  # entering runs the startup
        assert app.state.service.classifier is not None
        assert c.get("/models/tumor").status_code == 200
    monkeypatch.setenv("TUMOR_SERVE_WORKERS", "1")
    started = threading.Event()
    from tumor_runtime.serving.service import Service

    real_load = Service.load

    def slow_load(self):
        started.wait(5)
        real_load(self)

    monkeypatch.setattr(Service, "load", slow_load)
    app = server.app_from_environment()
    with TestClient(app) as c:
        assert app.state.service.classifier is None  # the startup did not wait for it
        assert c.get("/models/tumor").status_code == 503
        started.set()
