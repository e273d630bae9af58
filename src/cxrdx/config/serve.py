"""Settings of ``cxrdx serve``."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError
from .paths import default_home_dir


@dataclass
class ServeConfig:
    model_dir: str = "runs/demo"
    """Run folder(s) served (model.safetensors + model.json; model.onnx for runtime onnx). Several, separated by
    commas (``cxrdx serve --model A --model B``): one model per modality (xray, ct), routed by the input guard."""
    runtime: str = "torch"
    """``torch`` or ``onnx`` (``cxrdx export --onnx RUN_DIR`` first). Grad-CAM always uses torch."""
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 20 * 1024 * 1024
    """Larger uploads get HTTP 413 before they are decoded."""
    database_url: str | None = None
    """SQLAlchemy URL of the audit log; None -> $CXRDX_DATABASE_URL or sqlite:///<$CXRDX_HOME>/audit.db."""
    token_env: str = "CXRDX_API_TOKEN"
    """Name of the environment variable holding the bearer token (unset = no auth). Never put the token in a file."""
    threads: int | None = None
    """Intra-op threads for torch / ONNX Runtime; None = all cores."""
    insecure_no_auth: bool = False
    """Allow a non-loopback ``host`` without a token (``--insecure-no-auth``); refused otherwise."""
    trusted_proxies: str = ""
    """Comma-separated IPs / CIDR networks (``--trusted-proxy``) whose ``X-Forwarded-For`` is believed;
    from any other peer the socket address is the client."""
    max_concurrent_decodes: int = 2
    """Uploads decoded + preprocessed at once (each may take up to the decode budget of memory)."""
    decode_wait_s: float = 30.0
    """A request waiting longer than this for a decode slot gets 503 ``server_busy``."""
    header_timeout_s: float = 10.0
    """A connection must send complete request headers within this many seconds, or it is closed."""
    body_timeout_s: float = 60.0
    """The whole request body must arrive within this many seconds (408 ``body_timeout``)."""
    body_idle_timeout_s: float = 10.0
    """At most this many seconds between two pieces of a request body (408 ``body_timeout``)."""
    keep_alive_s: int = 5
    """Idle keep-alive connections are closed after this many seconds."""

    def model_dirs(self) -> list[str]:
        """:attr:`model_dir` as a list of run folders (at least one)."""
        dirs = [d.strip() for d in str(self.model_dir).split(",") if d.strip()]
        if not dirs:
            raise ConfigError("serve.model_dir: no run folder given")
        return dirs

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        env = os.environ.get("CXRDX_DATABASE_URL")
        return env if env else f"sqlite:///{default_home_dir() / 'audit.db'}"

    def api_token(self) -> str | None:
        """The bearer token from ``token_env``; unset = no auth, set but empty (or blank) is an error."""
        value = os.environ.get(self.token_env)
        if value is None:
            return None
        if not value.strip():
            raise ConfigError(f"{self.token_env} is set but empty; unset it to run without a token, or give a token")
        return value

    def check(self) -> None:
        """Ranges of the serving settings (one-line :class:`ConfigError`)."""
        import ipaddress

        for name in ("max_upload_bytes", "max_concurrent_decodes", "decode_wait_s", "header_timeout_s",
                     "body_timeout_s", "body_idle_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve.{name}: {getattr(self, name)} is out of range; it must be positive")
        for item in filter(None, (p.strip() for p in self.trusted_proxies.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"serve.trusted_proxies: {item[:60]!r} is not an IP address or network") from None
