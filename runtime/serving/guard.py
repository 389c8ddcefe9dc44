"""Every request's gate: the bearer token (compared in constant time), a JSON error instead of a stack trace, and
one access-log line per request."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from tumor_runtime.serving.service import Service


def error(code: int, message: str) -> JSONResponse:
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
    }
    return JSONResponse({"code": code, "type": kinds.get(code, "Error"), "message": message}, status_code=code)


def authorized(request: Request, service: Service) -> bool:
    """The bearer token (compared in constant time); ?token= only for the page, which a browser opens by URL."""
    if not service.token:
        return True
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:]
    else:
        given = request.query_params.get("token", "") if request.url.path == "/" else ""
    return bool(given) and secrets.compare_digest(
        given.encode("utf-8", "surrogateescape"), service.token.encode("utf-8", "surrogateescape")
    )


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
        except asyncio.CancelledError:  # the shutdown grace ended with this request in flight
            if "status" not in sent:  # else uvicorn would answer a plain-text 500 of its own
                await error(503, "the server is shutting down; send the request again")(scope, receive, send_noted)
        except Exception as exc:  # never a stack trace in a response
            if "status" in sent:
                raise  # the response has begun: nothing better can be sent
            await error(500, f"internal error ({type(exc).__name__})")(scope, receive, send_noted)
        finally:
            client = scope["client"][0] if scope.get("client") else "-"
            ACCESS_LOG.info(
                '%s "%s %s" %d %.1f ms',
                client,
                scope["method"],
                scope["path"],
                sent.get("status", 500),
                (time.perf_counter() - started) * 1e3,
            )


ACCESS_LOG = logging.getLogger("tumor_runtime.serving.access")  # one line per request; silent unless enabled


def enable_access_log() -> None:
    """Request lines on stderr: time, client, method and path, status, milliseconds (never bodies or tokens)."""
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False
