"""Refuse oversized or too slow request bodies before they are parsed or spooled to disk.

A body over the limit gets 413 ``upload_too_large``: from its declared ``Content-Length`` before anything
is read, or while it streams (chunked uploads). Either way the rest of the body is read and discarded
(up to :data:`DRAIN_FACTOR` x the limit, within the body timeout; nothing is kept) before the answer, so
a client that sends its whole body before reading sees the 413 instead of a connection reset. A client
that asked ``Expect: 100-continue`` gets the 413 without sending its body at all. A body that does not
arrive within the body timeouts gets 408 ``body_timeout`` (slow-loris uploads).
"""

from __future__ import annotations

import time

import anyio
from fastapi import HTTPException

from .errors import drain, expects_continue, send_error

MULTIPART_SLACK = 64 * 1024
"""Room for multipart boundaries and headers on top of the largest accepted file."""
DRAIN_FACTOR = 2
"""Bodies up to this many times the limit are read and discarded before the 413 (larger: answer, close)."""


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, detail={"code": "upload_too_large", "message": f"request body exceeds the limit of {limit} bytes"},
                         headers={"Connection": "close"})


class BodySizeLimit:
    """Pure ASGI middleware: body size limit (413) and body read timeouts (408), see the module docs."""

    def __init__(self, app, max_body_bytes: int, body_timeout_s: float = 60.0, idle_timeout_s: float = 10.0):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            size = int(declared)
            if not expects_continue(scope) and size <= DRAIN_FACTOR * limit:
                await drain(receive, DRAIN_FACTOR * limit, self.body_timeout_s)
            await send_error(send, 413, "upload_too_large", f"request body of {size} bytes exceeds the limit of {limit}")
            return
        seen = 0
        done = False
        deadline: float | None = None

        async def guarded_receive():
            nonlocal seen, done, deadline
            if done:  # the body is complete: later receives (disconnect) are not timed
                return await receive()
            now = time.monotonic()
            deadline = deadline or now + self.body_timeout_s
            try:
                with anyio.fail_after(max(0.0, min(self.idle_timeout_s, deadline - now))):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, detail={"code": "body_timeout", "message": "the request body did not arrive in time"},
                                    headers={"Connection": "close"}) from None
            if message["type"] != "http.request":
                done = True
                return message
            seen += len(message.get("body", b""))
            done = not message.get("more_body", False)
            if seen > limit:
                if not done:
                    await drain(receive, DRAIN_FACTOR * limit, max(0.0, deadline - time.monotonic()))
                done = True
                raise _too_large(limit)
            return message

        await self.app(scope, guarded_receive, send)
