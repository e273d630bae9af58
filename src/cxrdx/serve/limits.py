"""Refuse oversized request bodies with 413 before they are parsed or spooled to disk."""

from __future__ import annotations

import json

from fastapi import HTTPException

MULTIPART_SLACK = 64 * 1024
"""Room for multipart boundaries and headers on top of the largest accepted file."""


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class BodySizeLimit:
    """Pure ASGI middleware: a declared ``Content-Length`` over the limit is answered 413 at once, and
    a body that streams past the limit (chunked uploads) raises a 413 ``HTTPException`` while being read."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            body = _error("upload_too_large", f"request body of {int(declared)} bytes exceeds the limit of {limit}")
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, detail={"code": "upload_too_large",
                                                     "message": f"request body exceeds the limit of {limit} bytes"})
            return message

        await self.app(scope, limited_receive, send)
