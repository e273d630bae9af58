"""Bearer-token auth: when a token is configured every /v1 route needs ``Authorization: Bearer <token>``.

:class:`TokenAuth` (pure ASGI middleware) checks the header before anything reads or parses the body:
an unauthenticated upload is never parsed, spooled or decoded; its body is only read and discarded
(bounded) so the client sees the 401. :func:`token_guard` is the same check as a FastAPI dependency,
which puts the bearer scheme into the OpenAPI docs.
"""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import drain, expects_continue, has_body, send_error

_bearer = HTTPBearer(auto_error=False, description="Needed when the server runs with CXRDX_API_TOKEN set.")
PROTECTED_PREFIX = "/v1/"


def token_ok(authorization: str | None, expected: str) -> bool:
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), expected.encode())


def token_guard(expected: str | None):
    """A FastAPI dependency refusing (401) requests without the expected token; a no-op when ``expected`` is None."""

    async def guard(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if expected is None:
            return
        given = f"Bearer {creds.credentials}" if creds is not None else None
        if not token_ok(given, expected):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail={"code": "unauthorized", "message": "missing or wrong bearer token"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    return guard


class TokenAuth:
    """401 for a /v1 request without the token, decided from the headers alone (the body is never parsed)."""

    def __init__(self, app, expected: str | None, max_drain_bytes: int, drain_timeout_s: float = 10.0):
        self.app = app
        self.expected = expected
        self.max_drain_bytes = max_drain_bytes
        self.drain_timeout_s = drain_timeout_s

    async def __call__(self, scope, receive, send):
        if self.expected is None or scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        if token_ok(given, self.expected):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length", b"")
        small = not declared.strip().isdigit() or int(declared) <= self.max_drain_bytes
        if has_body(scope) and small and not expects_continue(scope):
            await drain(receive, self.max_drain_bytes, self.drain_timeout_s)
        await send_error(send, 401, "unauthorized", "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
