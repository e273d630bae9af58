"""The HTTP server around the app: uvicorn with header/keep-alive timeouts, and who the client is.

* :class:`GuardedH11Protocol`: uvicorn's h11 protocol plus a header timeout. uvicorn has no timer on a
  connection that has not sent complete request headers (only on idle keep-alive connections), so a
  slow-loris client could hold a connection forever; here it is closed after ``header_timeout_s``
  counted from the first byte of the request (or from the connection, when nothing arrives).
* :func:`client_address`: the socket peer, or the ``X-Forwarded-For`` address when (and only when) the
  peer is a trusted proxy; always a valid IP address (or ``unknown``), never a client-chosen string.
* :func:`server_config`: the ``uvicorn.Config`` that ``cxrdx serve`` runs (uvicorn's own proxy-header
  rewriting is off: forwarded headers are judged by :func:`client_address` only).
"""

from __future__ import annotations

import asyncio
import ipaddress
from functools import lru_cache

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import ConfigError, ServeConfig

MAX_HEADER_BYTES = 16 * 1024
"""Request line + headers larger than this are refused by h11 (400)."""


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # noqa: ANN001
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()  # a request has begun (or is awaited) but its headers are incomplete
        else:
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            if not self.transport.is_closing():
                self.transport.close()


def guarded_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": float(header_timeout_s)})


@lru_cache(maxsize=32)
def _networks(trusted: str) -> tuple:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in trusted.split(",") if p.strip())


def _ip(value: str | None):
    if not value or len(value) > 64:
        return None
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: str | None, trusted: str = "") -> str:
    """The client's IP as text: ``peer``, or the right-most untrusted ``X-Forwarded-For`` entry if ``peer``
    is a trusted proxy. Anything that is not an IP address becomes ``unknown`` (at most 45 characters)."""
    ip = _ip(peer)
    networks = _networks(trusted)
    if ip is not None and forwarded_for and networks and any(ip in n for n in networks):
        for hop in reversed(forwarded_for[:1024].split(",")):
            hop_ip = _ip(hop)
            if hop_ip is None:
                break  # a malformed hop: do not believe anything to its left
            ip = hop_ip
            if not any(hop_ip in n for n in networks):
                break
    return str(ip) if ip is not None else "unknown"


def check_exposure(settings: ServeConfig) -> None:
    """Refuse to listen beyond loopback without a token, unless ``insecure_no_auth`` says so."""
    try:
        loopback = settings.host == "localhost" or ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and settings.api_token() is None and not settings.insecure_no_auth:
        raise ConfigError(f"refusing to serve on {settings.host} without a token: set {settings.token_env}, "
                          "or pass --insecure-no-auth to expose the audit log to anyone who can connect")


def server_config(app, settings: ServeConfig, **overrides) -> uvicorn.Config:
    """uvicorn settings for ``app``: h11 with the header timeout, keep-alive and header-size limits."""
    options = dict(
        host=settings.host, port=settings.port, log_level="info", http=guarded_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        proxy_headers=False, server_header=False,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def run_server(app, settings: ServeConfig) -> None:
    uvicorn.Server(server_config(app, settings)).run()
