"""`tumor-serve`: the model as a local HTTP service (TorchServe's inference API) with a web page.

Routes: GET / (the page), GET /ping, GET /models/tumor (the model card), POST /predictions/tumor
(a raw image body, or multipart/form-data with one or more files; ?heatmap=1 adds a base64 PNG
overlay). One model session per process, loaded once in the background (503 until then);
uploads are decoded from memory in a thread pool sized to the cores, off the event loop, and
concurrent requests share model calls (`batching.Batcher`). Errors are JSON
({"code", "type", "message"}, as TorchServe), never a stack trace. With a token, every route
but /ping needs `Authorization: Bearer <token>` (the page also takes ?token=).
"""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tumor_runtime.core.options import MAX_FRAMES_PER_REQUEST, MAX_UPLOAD_MB
from tumor_runtime.imaging.decode import EMPTY_FILE, EncodedImage
from tumor_runtime.imaging.formats import ACCEPT, FORMAT_NAMES, sniff
from tumor_runtime.inference.classifier import expand_dicom
from tumor_runtime.inference.heatmap import overlay_png
from tumor_runtime.inference.records import record
from tumor_runtime.serving.guard import Guard, enable_access_log, error
from tumor_runtime.serving.service import Service
from tumor_runtime.serving.uploads import read_uploads

PAGE = Path(__file__).with_name("static") / "index.html"
MODEL_NAME = "tumor"


def page_html() -> str:
    """The page, its file picker accepting what `formats.FORMATS` lists."""
    return PAGE.read_text(encoding="utf-8").replace("{{ACCEPT}}", ACCEPT)


def refused_row(service: Service, name: str, data: bytes) -> dict:
    """The error row of an upload in no accepted format, in a request where others are (all refused: 415)."""
    assert service.classifier is not None  # requests are answered 503 until the model is loaded
    reason = f"not a {FORMAT_NAMES} file" if data else EMPTY_FILE  # tumor-infer's words for an empty file
    return record(service.classifier.info, service.classifier.tumor_threshold, name, None, reason)


class ClientGone(Exception):
    """The client closed the connection: the work for its request stops (nobody would read the answer)."""


def classify_dicom(service: Service, uploads: list[tuple[str, bytes]], heatmap: bool, gone: threading.Event):
    """Runs in the thread pool, for requests with DICOM files: each upload through a temporary file, so
    frames are listed and read exactly as tumor-infer does; rows named after the upload. 413 past
    MAX_FRAMES_PER_REQUEST frames in all (counted from the headers, before any is decoded); stops between
    frames once `gone` is set."""

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tumor-serve-") as folder:
        # Per upload: its frames as tumor-infer lists them (header only), an error item, or the image; no file
        # for an upload of no accepted format.
        listed: list[tuple[str, Path | None, list]] = []
        for i, (name, data) in enumerate(uploads):
            suffix = sniff(data, name)
            if suffix is None:
                listed.append((name, None, []))
                continue
            file = Path(folder) / f"upload{i}{suffix}"
            file.write_bytes(data)
            listed.append((name, file, list(expand_dicom([file]))))
        frames = sum(len(items) for _, _, items in listed)
        if frames > MAX_FRAMES_PER_REQUEST:
            raise HTTPException(413, f"the request holds {frames} frames, over the limit of {MAX_FRAMES_PER_REQUEST}")
        assert service.classifier is not None  # requests are answered 503 until the model is loaded
        for (name, path, items), (_, data) in zip(listed, uploads):
            if path is None:
                rows.append(refused_row(service, name, data))
                continue
            # Threads, never forked workers: a fork would inherit the listening socket (and outlive a SIGTERM).
            for rec in service.classifier.iter_predict(items, heatmaps=heatmap, processes=False):
                if gone.is_set():
                    raise ClientGone()
                rec["path"] = name + rec["path"][len(str(path)) :]  # keeps a DICOM frame's "#n"
                rows.append(rec)
    return rows


async def until_gone(request: Request, gone: threading.Event) -> None:
    """Sets `gone` when the client disconnects (polled: Starlette says so only when asked)."""
    while not gone.is_set():
        if await request.is_disconnected():
            gone.set()
        await asyncio.sleep(0.1)


def with_overlays(rows: list[dict]) -> list[dict]:
    """Each record's heat-map overlay as base64 PNG (its "cam" and "slice" taken out)."""

    for rec in rows:
        png = overlay_png(rec)
        rec["heatmap_png"] = None if png is None else base64.b64encode(png).decode("ascii")
    return rows


async def classify(request: Request, service: Service, uploads: list[tuple[str, bytes]], heatmap: bool) -> list[dict]:
    """Images are decoded from memory and classified in batches shared with concurrent requests
    (`batching.Batcher`); a request with DICOM files takes tumor-infer's file path, and stops when its client
    goes."""

    loop = asyncio.get_running_loop()
    suffixes = [sniff(data, name) for name, data in uploads]  # None: refused, an error row in its place
    if ".dcm" in suffixes:
        gone = threading.Event()
        watcher = asyncio.create_task(until_gone(request, gone))
        try:
            rows = await loop.run_in_executor(service.pool, classify_dicom, service, uploads, heatmap, gone)
        finally:
            gone.set()
            watcher.cancel()
    else:
        assert service.batcher is not None  # made with the classifier
        accepted = [EncodedImage(name, data) for (name, data), suffix in zip(uploads, suffixes) if suffix]
        answered = iter(await service.batcher.classify(accepted, heatmap))
        rows = [
            next(answered) if suffix else refused_row(service, name, data)
            for (name, data), suffix in zip(uploads, suffixes)
        ]
    return await loop.run_in_executor(service.pool, with_overlays, rows) if heatmap else rows


async def predictions(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    if service.classifier is None:
        return error(503, service.load_error or "the model is still loading; try again shortly")
    async with service.bodies:  # at most MAX_CONCURRENT_BODIES bodies held (and worked on) at once
        return await answer(request, service)


async def answer(request: Request, service: Service) -> JSONResponse:
    assert service.classifier is not None  # checked by `predictions`
    uploads = await read_uploads(request, service)
    unsupported = [name for name, data in uploads if sniff(data, name) is None]
    if len(unsupported) == len(uploads):  # with some accepted, the others are error rows (as tumor-infer's)
        return error(415, f"{', '.join(unsupported)}: not a {FORMAT_NAMES} file")
    # ?heatmaps=1, as tumor-infer's --heatmaps (and ?heatmap=1, TorchServe-style)
    heatmap = any(request.query_params.get(k, "0").lower() in ("1", "true", "yes") for k in ("heatmaps", "heatmap"))
    if heatmap and not service.classifier.has_cam:
        return error(400, "this model has no 'cam' output, so it cannot give heat-maps")
    try:
        rows = await classify(request, service, uploads, heatmap)
    except ClientGone:
        return error(499, "the client closed the connection")  # nobody reads it; the log shows 499
    failed = [r for r in rows if r["error"]]
    if failed and len(failed) == len(rows):  # nothing could be classified: 400, whether one file or many
        return error(
            400,
            "; ".join(f"{r['path']}: {r['error']}" for r in failed[:5])
            + (f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""),
        )
    return JSONResponse(rows[0] if len(rows) == 1 else rows)


async def ping(request: Request) -> JSONResponse:
    """Healthy (200), or Unhealthy (500) with the reason when the model can never load (as TorchServe)."""
    service: Service = request.app.state.service
    if service.load_error is not None:
        return JSONResponse({"status": "Unhealthy", "reason": service.load_error}, status_code=500)
    return JSONResponse({"status": "Healthy" if service.classifier is not None else "Loading"})


async def model_card(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    if service.classifier is None:
        return error(503, service.load_error or "the model is still loading; try again shortly")
    card = service.classifier.card()
    card["path"] = Path(card["path"]).name if card.get("path") else None  # never the server's file layout
    return JSONResponse(card)


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(page_html())


def create_app(
    model: str | None = None,
    token: str | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    load_now: bool = False,
    threads: int | None = None,
    tumor_threshold: float | None = None,
    backend: str = "onnxruntime",
    load_at_startup: bool = False,
) -> Starlette:
    """The ASGI app. The model loads in a background thread when the server starts (503 until then),
    or at once with `load_now`. With `load_at_startup` (one of several worker processes) the server's startup
    waits for it: the process accepts no connection before it can answer, so a client is never sent to a
    worker that is still loading while another is ready (their shared socket queues it meanwhile)."""
    service = Service(model, token, max_upload_mb, threads, tumor_threshold, backend)

    async def not_found(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail)  # Starlette's detail: ours, or the status's phrase

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if service.classifier is None and service.load_error is None:
            if load_at_startup:
                await asyncio.get_running_loop().run_in_executor(None, service.load)
            else:
                threading.Thread(target=service.load, daemon=True).start()
        yield
        service.pool.shutdown(wait=False)

    routes = [
        Route("/", page),
        Route("/ping", ping),
        Route(f"/models/{MODEL_NAME}", model_card),
        Route(f"/predictions/{MODEL_NAME}", predictions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})  # type: ignore[dict-item]
    app.add_middleware(Guard, service=service)
    app.state.service = service
    if load_now:
        service.load()
    return app


def app_from_environment() -> Starlette:
    """For uvicorn's factory mode (several workers): the options travel in the environment."""
    env = os.environ.get
    if env("TUMOR_SERVE_ACCESS_LOG", "1") == "1":
        enable_access_log()
    return create_app(
        env("TUMOR_SERVE_MODEL") or None,
        env("TUMOR_SERVE_TOKEN") or None,
        float(env("TUMOR_SERVE_MAX_UPLOAD_MB") or MAX_UPLOAD_MB),
        threads=int(env("TUMOR_SERVE_THREADS") or 0) or None,
        tumor_threshold=float(threshold) if (threshold := env("TUMOR_SERVE_TUMOR_THRESHOLD")) else None,
        backend=env("TUMOR_SERVE_BACKEND") or "onnxruntime",
        load_at_startup=int(env("TUMOR_SERVE_WORKERS") or 1) > 1,
    )
