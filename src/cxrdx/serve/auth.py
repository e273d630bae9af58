"""Optional bearer-token auth: when a token is configured every /v1 route needs ``Authorization: Bearer <token>``."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="Needed when the server runs with CXRDX_API_TOKEN set.")


def token_guard(expected: str | None):
    """A FastAPI dependency refusing (401) requests without the expected token; a no-op when ``expected`` is None."""

    async def guard(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if expected is None:
            return
        given = creds.credentials if creds is not None else ""
        if not secrets.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail={"code": "unauthorized", "message": "missing or wrong bearer token"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    return guard
