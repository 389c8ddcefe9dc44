"""What a request uploads: its body, bounded in size and time, and the files in it (a raw body or a
multipart/form-data form)."""

from __future__ import annotations

import asyncio

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request

from tumor_runtime.imaging.formats import sniff
from tumor_runtime.serving.service import Service

BODY_TIMEOUT_S = 60  # the longest a request body may take to arrive


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
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        files = form_files(form_parts(body, content_type))
        if not files:
            raise HTTPException(400, "the form holds no file")
        return files
    if not body:
        raise HTTPException(400, "empty body: send an image, or a multipart form with files")
    return [(request.query_params.get("filename", "body"), body)]


def form_files(parts: list[tuple[str, str | None, bytes]]) -> list[tuple[str, bytes]]:
    """The uploads among a form's (field name, filename, bytes) parts: each part with a filename, and each without
    one whose bytes are an accepted format (`curl -F 'data=<x.jpg'` sends none), named after its field. An empty
    part is an upload (its row says "empty file"), except a file input left empty (filename "" and no bytes);
    other fields (text) are not files."""
    files = []
    for field, filename, data in parts:
        if filename == "" and not data:
            continue
        if filename:
            files.append((filename, data))
        elif data and sniff(data) is not None:
            files.append((field or f"part{len(files) + 1}", data))
    return files


def form_parts(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """Every part of a multipart/form-data body as (field name, filename or None, its bytes), in order; 400 for a
    malformed form. Parsed here rather than by Starlette, which turns a part without a filename into text."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "a multipart form without a boundary")
    parts: list[tuple[str, str | None, bytes]] = []
    current: dict = {}

    def header_end() -> None:
        current["headers"][current.pop("field", b"").lower()] = current.pop("value", b"")

    def part_end() -> None:
        _, options = parse_options_header(current["headers"].get(b"content-disposition", b""))
        filename = options.get(b"filename")
        parts.append(
            (
                options.get(b"name", b"").decode("utf-8", "replace"),
                None if filename is None else filename.decode("utf-8", "replace"),
                bytes(current["data"]),
            )
        )

    callbacks = {
        "on_part_begin": lambda: current.update(headers={}, data=bytearray()),
        "on_header_field": lambda d, s, e: current.update(field=current.get("field", b"") + d[s:e]),
        "on_header_value": lambda d, s, e: current.update(value=current.get("value", b"") + d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: current["data"].extend(d[s:e]),
        "on_part_end": part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPException(400, f"a malformed multipart form ({exc})") from None
    return parts
