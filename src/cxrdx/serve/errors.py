"""The one error shape of the API, ``{"error": {"code": ..., "message": ...}}``, for every status.

:func:`install_error_handlers` maps FastAPI / Starlette exceptions (400 multipart, 404, 405, 413, 415,
422, 503, ...) and any unexpected exception (500, logged) onto it; :func:`send_error` answers with it
from a pure ASGI middleware, after :func:`drain` has read and discarded the unread request body (bounded
in bytes and time) so the client reads the answer instead of a connection reset.
"""

from __future__ import annotations

import json
import logging

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.io import ImageReadError

logger = logging.getLogger("cxrdx.serve")

STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                408: "body_timeout", 413: "upload_too_large", 415: "not_an_image", 422: "invalid_request",
                500: "internal_error", 501: "not_implemented", 503: "unavailable"}


class ServeError(Exception):
    """A request the server refuses for a reason of its own (not the image's): answered as ``http_status`` + ``code``."""

    code = "bad_request"
    http_status = 400

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def json_error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def has_body(scope) -> bool:
    headers = dict(scope.get("headers") or [])
    declared = headers.get(b"content-length")
    return b"transfer-encoding" in headers or (declared is not None and declared.strip() not in (b"", b"0"))


def expects_continue(scope) -> bool:
    return dict(scope.get("headers") or []).get(b"expect", b"").lower() == b"100-continue"


async def drain(receive, max_bytes: int, timeout_s: float) -> bool:
    """Read and discard the rest of a request body (nothing is kept); True if it ended within the bounds."""
    seen = 0
    with anyio.move_on_after(timeout_s):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
            if seen > max_bytes:
                return False
    return False


async def send_error(send, status: int, code: str, message: str, headers: list | None = None) -> None:
    """A complete JSON error response from raw ASGI; the connection is closed after it."""
    body = json.dumps(error_body(code, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImageReadError)
    async def bad_image(_: Request, exc: ImageReadError) -> JSONResponse:
        return json_error(exc.http_status, exc.code, str(exc))

    @app.exception_handler(ServeError)
    async def refused(_: Request, exc: ServeError) -> JSONResponse:
        return json_error(exc.http_status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if isinstance(exc.detail, dict):
            code, message = exc.detail.get("code", STATUS_CODES.get(status, "error")), exc.detail.get("message", "")
        else:
            code, message = STATUS_CODES.get(status, f"http_{status}"), str(exc.detail)
        if status == 400 and ("pars" in message.lower() or "multipart" in message.lower()):
            code = "malformed_request"
        return json_error(status, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return json_error(422, "invalid_request", problems[:1000] or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return json_error(500, "internal_error", "the server failed on this request; it has been logged")
