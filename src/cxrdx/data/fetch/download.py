"""Getting a source's archive: a local zip or folder, a cached download, or a fresh, verified download.

Downloads use ``urllib`` with a timeout, stream to ``<file>.part`` (resumed when
the server allows ranges) and are renamed only when complete and, if a SHA-256 is
known, verified. A ``file://`` URL or a plain path is used as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Callable

from .base import FetchError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 20


def local_path(url: str) -> Path | None:
    """The local file a source URL points to, or ``None`` for a remote URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme or len(parsed.scheme) == 1:  # a plain path (C:\... on Windows)
        return Path(url).expanduser()
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _archive_filename(name: str | None, url: str) -> str:
    """What a browser would call the download: ``COVID-19-master.zip`` for a GitHub branch zip."""
    path = urllib.parse.urlparse(url).path
    m = re.match(r"^/[^/]+/([^/]+)/archive/(?:refs/heads/)?([^/]+)\.zip$", path)
    if m:
        return f"{m.group(1)}-{m.group(2)}.zip"
    return PurePosixPath(path).name or f"{name or 'archive'}.zip"


def _offline_hint(name: str | None, url: str) -> str:
    if not name:
        return "check the URL and your connection"
    return (f"offline? download {url} on another machine and pass "
            f"--source-url {name}=/path/to/{_archive_filename(name, url)} (a local zip, file:// URL or extracted folder)")


def describe_error(exc: BaseException) -> str:
    """One short line for a network or file error."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
        if not isinstance(exc, BaseException):
            return str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


def download(
    url: str,
    dest: str | Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    sha256: str | None = None,
    progress: bool = True,
    name: str | None = None,
) -> Path:
    """Stream ``url`` to ``dest`` via ``dest.part``; resume a partial file where the server allows.

    The file appears under ``dest`` only when complete (and matching ``sha256`` if given).
    Raises :class:`FetchError` with a one-line message naming the URL.
    """
    from ...progress import progress_bar

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hint = _offline_hint(name, url)
    label = name or dest.name

    def fail(why: str) -> FetchError:
        return FetchError(f"cannot download {label} from {url}: {why}; {hint}")

    for attempt in (0, 1):
        start = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "cxrdx-fetch (+https://github.com)"}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs by design
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start and attempt == 0:  # stale / complete .part: start over
                part.unlink(missing_ok=True)
                continue
            raise fail(describe_error(exc)) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise fail(describe_error(exc)) from None
        with response:
            status = getattr(response, "status", None) or response.getcode() or 200
            resumed = bool(start) and status == 206
            if not resumed:
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            try:
                with open(part, "ab" if resumed else "wb") as f, progress_bar(
                    total, f"download {label}", enabled=progress  # type: ignore[arg-type] - None: unknown size
                ) as bar:
                    done = start
                    bar.advance(start)
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        done += len(chunk)
                        bar.advance(len(chunk))
                        bar.set(f"{done / 1e6:.1f} MB")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise FetchError(
                    f"download of {label} from {url} was interrupted ({describe_error(exc)}); "
                    f"run the same command again to resume, or {hint}"
                ) from None
        size = part.stat().st_size
        if total is not None and size != total:
            raise FetchError(f"download of {label} from {url} is incomplete ({size} of {total} bytes); "
                             f"run the same command again to resume, or {hint}")
        break
    if sha256:
        got = file_sha256(part)
        if got.lower() != sha256.strip().lower():
            part.unlink(missing_ok=True)
            raise FetchError(f"{label} from {url} has SHA-256 {got}, expected {sha256.strip().lower()}; "
                             "the file was deleted (pass the right --sha256 or none)")
    os.replace(part, dest)
    return dest


def resolve_archive(
    name: str,
    url: str,
    cache_dir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    sha256: str | None = None,
    refresh: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """A local zip / folder for a source: the path itself, a cached download, or a fresh download."""
    echo = echo or (lambda msg: logger.info(msg))
    local = local_path(url)
    if local is not None:
        if not local.exists():
            raise FetchError(f"{name}: local archive {local} does not exist (from --source-url {name}={url})")
        if sha256 and local.is_file():
            got = file_sha256(local)
            if got.lower() != sha256.strip().lower():
                raise FetchError(f"{name}: {local} has SHA-256 {got}, expected {sha256.strip().lower()}")
        echo(f"{name}: using {local}")
        return local
    dest = Path(cache_dir) / f"{name}.zip"
    if dest.is_file() and not refresh:
        if not sha256 or file_sha256(dest).lower() == sha256.strip().lower():
            echo(f"{name}: using the cached download {dest} (--refresh downloads it again)")
            return dest
    if refresh:
        dest.unlink(missing_ok=True)
        dest.with_name(dest.name + ".part").unlink(missing_ok=True)
    echo(f"{name}: downloading {url}")
    return download(url, dest, timeout=timeout, sha256=sha256, progress=progress, name=name)
