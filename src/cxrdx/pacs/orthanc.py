"""A small client for Orthanc's REST API: the change feed, tags, files, storing new instances.

:class:`OrthancUnavailable` means "try again later" (connection refused,
timeout, 5xx); :class:`OrthancError` is an answer that retrying will not
change (a 4xx, e.g. an instance deleted since its change was logged).
Credentials come from ``$CXRDX_ORTHANC_USER`` / ``$CXRDX_ORTHANC_PASSWORD``,
never from the command line.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import httpx


class OrthancError(RuntimeError):
    """Orthanc answered, but not with what was asked for (not worth retrying)."""


class OrthancUnavailable(OrthancError):
    """Orthanc cannot be reached or answered 5xx (retry later)."""


def public_url(url: str) -> str:
    """``url`` without any user:password part (for logs and the state table)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class OrthancClient:
    def __init__(self, url: str, *, timeout: float = 30.0, auth: tuple[str, str] | None = None):
        self.url = public_url(url)
        if auth is None and os.environ.get("CXRDX_ORTHANC_USER"):
            auth = (os.environ["CXRDX_ORTHANC_USER"], os.environ.get("CXRDX_ORTHANC_PASSWORD", ""))
        self.http = httpx.Client(base_url=self.url, timeout=timeout, auth=auth)

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise OrthancUnavailable(f"Orthanc at {self.url} unreachable ({type(exc).__name__})") from None
        if r.status_code >= 500:
            raise OrthancUnavailable(f"Orthanc at {self.url} answered {r.status_code} to {method} {path}")
        if r.status_code >= 400:
            raise OrthancError(f"Orthanc at {self.url} answered {r.status_code} to {method} {path}")
        return r

    def system(self) -> dict:
        return self._request("GET", "/system").json()

    def changes(self, since: int, limit: int = 100) -> dict:
        """``{"Changes": [{"ChangeType", "ID", "ResourceType", "Seq", ...}], "Done": bool, "Last": int}``."""
        return self._request("GET", "/changes", params={"since": since, "limit": limit}).json()

    def last_seq(self) -> int:
        """The sequence number of the newest change (where a node that skips the backlog starts)."""
        return int(self._request("GET", "/changes", params={"last": ""}).json()["Last"])

    def tags(self, instance_id: str) -> dict:
        """An instance's tags by keyword (``simplified-tags``)."""
        return self._request("GET", f"/instances/{instance_id}/simplified-tags").json()

    def file(self, instance_id: str) -> bytes:
        return self._request("GET", f"/instances/{instance_id}/file").content

    def store(self, data: bytes) -> dict:
        """POST one DICOM file; ``{"ID", "ParentStudy", "Status": "Success" | "AlreadyStored", ...}``."""
        return self._request("POST", "/instances", content=data, headers={"Content-Type": "application/dicom"}).json()

    def get(self, path: str) -> object:
        """Any GET (JSON answer), e.g. ``/studies/{id}/series``."""
        return self._request("GET", path).json()

    def close(self) -> None:
        self.http.close()
