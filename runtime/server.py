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
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tumor_runtime.model import available_cores
from tumor_runtime.validate import MAX_UPLOAD_MB

PAGE = Path(__file__).with_name("static") / "index.html"
MODEL_NAME = "tumor"
BODY_TIMEOUT_S = 60  # the longest a request body may take to arrive
# Leading bytes of the formats the service accepts (DICOM: "DICM" at offset 128).
SIGNATURES = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png", b"II*\x00": ".tif", b"MM\x00*": ".tif",
              b"BM": ".bmp"}


class Service:
    """The loaded classifier (None while loading), its thread pool and the request limits."""

    def __init__(self, model: str | None, token: str | None, max_upload_mb: float, threads: int | None,
                 tumor_threshold: float | None, backend: str):
        self.model, self.token, self.max_bytes = model, token, int(max_upload_mb * 2**20)
        self.threads, self.tumor_threshold, self.backend = threads, tumor_threshold, backend
        self.classifier, self.load_error, self.batcher = None, None, None
        self.pool = ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="infer")

    def load(self) -> None:
        from tumor_runtime.classifier import Classifier

        from tumor_runtime.batching import Batcher

        try:
            classifier = Classifier.load(self.model, threads=self.threads, tumor_threshold=self.tumor_threshold,
                                         backend=self.backend)
            self.batcher = Batcher(classifier, self.pool)
            self.classifier = classifier
        except Exception as exc:  # reported by /ping (500) and every request (503) with the reason
            reason = str(exc) or type(exc).__name__
            print(f"tumor-serve: the model cannot be loaded: {reason}", file=sys.stderr, flush=True)
            # Clients see the model's file name, not where the server keeps it.
            self.load_error = reason.replace(str(Path(self.model).parent) + os.sep, "") if self.model else reason


def error(code: int, message: str) -> JSONResponse:
    kinds = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 408: "RequestTimeout",
             413: "PayloadTooLarge", 415: "UnsupportedMediaType", 500: "InternalServerError",
             503: "ServiceUnavailable"}
    return JSONResponse({"code": code, "type": kinds.get(code, "Error"), "message": message}, status_code=code)


def suffix_for(data: bytes, name: str = "") -> str | None:
    """The file suffix for accepted content, by its leading bytes (or a .dcm name: DICOM files written without
    the 128-byte preamble, which tumor-infer reads too); None if it is not an accepted type."""
    if (len(data) > 132 and data[128:132] == b"DICM") or name.lower().endswith((".dcm", ".dicom")):
        return ".dcm"
    return next((suffix for magic, suffix in SIGNATURES.items() if data.startswith(magic)), None)


def authorized(request: Request, service: Service) -> bool:
    """The bearer token (compared in constant time); ?token= only for the page, which a browser opens by URL."""
    if not service.token:
        return True
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:]
    else:
        given = request.query_params.get("token", "") if request.url.path == "/" else ""
    return bool(given) and secrets.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                  service.token.encode("utf-8", "surrogateescape"))


async def read_body(request: Request, service: Service) -> bytes:
    """The whole request body, however it is framed (Content-Length or chunked); 413 once it passes the limit."""
    too_large = HTTPException(413, f"the body is over the {service.max_bytes / 2**20:g} MB limit (--max-upload-mb)")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > service.max_bytes:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):  # a client trickling its body does not hold a slot forever
            async for chunk in request.stream():
                body += chunk
                if len(body) > service.max_bytes:
                    raise too_large
    except TimeoutError:
        raise HTTPException(408, f"the body did not arrive within {BODY_TIMEOUT_S} s") from None
    return bytes(body)


async def read_uploads(request: Request, service: Service) -> list[tuple[str, bytes]]:
    """[(name, bytes)] from a raw body or a multipart form; 413 past the size limit for the whole request."""
    body = await read_body(request, service)
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        request._body = body  # Starlette parses the form from this cached body: the limit above held for all parts
        form = await request.form(max_part_size=service.max_bytes)
        files = [(f.filename or f"file{i}", await f.read()) for i, f in
                 enumerate(v for _, v in form.multi_items() if hasattr(v, "read"))]
        if not files:
            raise HTTPException(400, "the form holds no file")
        return files
    if not body:
        raise HTTPException(400, "empty body: send an image, or a multipart form with files")
    return [(request.query_params.get("filename", "body"), body)]


def classify_dicom(service: Service, uploads: list[tuple[str, bytes]], heatmap: bool) -> list[dict]:
    """Runs in the thread pool, for requests with DICOM files: each upload through a temporary file, so
    frames are listed and read exactly as tumor-infer does; rows named after the upload."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="tumor-serve-") as folder:
        for i, (name, data) in enumerate(uploads):
            path = Path(folder) / f"upload{i}{suffix_for(data, name)}"
            path.write_bytes(data)
            for rec in service.classifier.predict([path], heatmaps=heatmap):
                rec["path"] = name + rec["path"][len(str(path)):]  # keeps a DICOM frame's "#n"
                rows.append(rec)
    return rows


def with_overlays(rows: list[dict]) -> list[dict]:
    """Each record's heat-map overlay as base64 PNG (its "cam" and "slice" taken out)."""
    from tumor_runtime.heatmap import overlay_png

    for rec in rows:
        png = overlay_png(rec)
        rec["heatmap_png"] = None if png is None else base64.b64encode(png).decode("ascii")
    return rows


async def classify(service: Service, uploads: list[tuple[str, bytes]], heatmap: bool) -> list[dict]:
    """Images are decoded from memory and classified in batches shared with concurrent requests
    (`batching.Batcher`); a request with DICOM files takes tumor-infer's file path."""
    from tumor_runtime.preprocess import EncodedImage

    loop = asyncio.get_running_loop()
    if any(suffix_for(data, name) == ".dcm" for name, data in uploads):
        rows = await loop.run_in_executor(service.pool, classify_dicom, service, uploads, heatmap)
    else:
        rows = await service.batcher.classify([EncodedImage(name, data) for name, data in uploads], heatmap)
    return await loop.run_in_executor(service.pool, with_overlays, rows) if heatmap else rows


async def predictions(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    if service.classifier is None:
        return error(503, service.load_error or "the model is still loading; try again shortly")
    uploads = await read_uploads(request, service)
    unsupported = [name for name, data in uploads if suffix_for(data, name) is None]
    if unsupported:
        return error(415, f"{', '.join(unsupported)}: not a JPEG, PNG, TIFF, BMP or DICOM file")
    # ?heatmaps=1, as tumor-infer's --heatmaps (and ?heatmap=1, TorchServe-style)
    heatmap = any(request.query_params.get(k, "0").lower() in ("1", "true", "yes") for k in ("heatmaps", "heatmap"))
    if heatmap and not service.classifier.has_cam:
        return error(400, "this model has no 'cam' output, so it cannot give heat-maps")
    rows = await classify(service, uploads, heatmap)
    failed = [r for r in rows if r["error"]]
    if failed and len(failed) == len(rows):  # nothing could be classified: 400, whether one file or many
        return error(400, "; ".join(f"{r['path']}: {r['error']}" for r in failed[:5])
                     + (f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""))
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
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


class Guard:
    """Every request passes here (a plain ASGI middleware: Starlette's BaseHTTPMiddleware would cost a task and
    a copied body stream per request): the bearer token, a JSON 500 instead of a stack trace, the access log."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, request, sent = time.perf_counter(), Request(scope), {}

        async def send_noted(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        try:
            if request.url.path != "/ping" and not authorized(request, self.service):
                await error(401, "missing or wrong bearer token")(scope, receive, send_noted)
            else:
                await self.app(scope, receive, send_noted)
        except asyncio.CancelledError:  # shutdown gave up on a request still in flight: end it without a traceback
            sent.setdefault("status", 503)
        except Exception as exc:  # never a stack trace in a response
            if "status" in sent:
                raise  # the response has begun: nothing better can be sent
            await error(500, f"internal error ({type(exc).__name__})")(scope, receive, send_noted)
        finally:
            client = scope["client"][0] if scope.get("client") else "-"
            ACCESS_LOG.info('%s "%s %s" %d %.1f ms', client, scope["method"], scope["path"], sent.get("status", 500),
                            (time.perf_counter() - started) * 1e3)


def create_app(model: str | None = None, token: str | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
               load_now: bool = False, threads: int | None = None, tumor_threshold: float | None = None,
               backend: str = "onnxruntime") -> Starlette:
    """The ASGI app. The model loads in a background thread when the server starts (503 until then),
    or at once with `load_now`."""
    service = Service(model, token, max_upload_mb, threads, tumor_threshold, backend)

    async def not_found(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail)  # Starlette's detail: ours, or the status's phrase

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if service.classifier is None and service.load_error is None:
            threading.Thread(target=service.load, daemon=True).start()
        yield
        service.pool.shutdown(wait=False)

    routes = [Route("/", page), Route("/ping", ping), Route(f"/models/{MODEL_NAME}", model_card),
              Route(f"/predictions/{MODEL_NAME}", predictions, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.add_middleware(Guard, service=service)
    app.state.service = service
    if load_now:
        service.load()
    return app


ACCESS_LOG = logging.getLogger("tumor_runtime.server.access")  # one line per request; silent unless enabled


def enable_access_log() -> None:
    """Request lines on stderr: time, client, method and path, status, milliseconds (never bodies or tokens)."""
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False


def app_from_environment() -> Starlette:
    """For uvicorn's factory mode (several workers): the options travel in the environment."""
    env = os.environ.get
    if env("TUMOR_SERVE_ACCESS_LOG", "1") == "1":
        enable_access_log()
    return create_app(env("TUMOR_SERVE_MODEL") or None, env("TUMOR_SERVE_TOKEN") or None,
                      float(env("TUMOR_SERVE_MAX_UPLOAD_MB") or MAX_UPLOAD_MB), threads=int(env("TUMOR_SERVE_THREADS") or 0) or None,
                      tumor_threshold=float(env("TUMOR_SERVE_TUMOR_THRESHOLD")) if env("TUMOR_SERVE_TUMOR_THRESHOLD")
                      else None, backend=env("TUMOR_SERVE_BACKEND") or "onnxruntime")
