"""Load and fault test against a running server (loopback): concurrent clients, valid and broken uploads.

Used by ``benchmarks/load.py`` (50 clients) and by the test suite (a small run); it is a
development tool, so it lives here and not in the installed ``cxrdx`` package.
It reports the rate served, latency percentiles, status counts (5xx must be 0)
and whether the audit log gained exactly one row per successful prediction.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    content_type: str
    kind: str
    """``valid`` or what is wrong with it (``empty``, ``random_bytes``, ...)."""


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def bad_uploads(max_upload_bytes: int, seed: int = 0) -> list[Upload]:
    """Files a PACS export or a user could send that are not usable X-rays; each must get a 4xx."""
    rng = np.random.default_rng(seed)
    ok_png = _png(rng.integers(0, 255, (128, 128), dtype=np.uint8))
    bomb = io.BytesIO()
    Image.new("L", (8200, 8200)).save(bomb, format="PNG")  # 67 Mpx of zeros: a tiny file, a huge image
    dicom_junk = b"\0" * 128 + b"DICM" + rng.bytes(2048)
    return [
        Upload("empty.png", b"", "image/png", "empty"),
        Upload("noise.png", rng.bytes(4096), "image/png", "random_bytes"),
        Upload("notes.txt", b"patient notes, not an image\n" * 20, "text/plain", "text"),
        Upload("cut.png", ok_png[: len(ok_png) // 2], "image/png", "truncated_png"),
        Upload("tiny.png", _png(np.zeros((8, 8), np.uint8)), "image/png", "too_small"),
        Upload("broken.dcm", dicom_junk, "application/dicom", "corrupt_dicom"),
        Upload("fake.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(3000), "image/jpeg", "corrupt_jpeg"),
        Upload("bomb.png", bomb.getvalue(), "image/png", "decompression_bomb"),
        Upload("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (max_upload_bytes + 1), "image/png", "over_upload_limit"),
    ]


def deflated_dicom_bomb(inflated_bytes: int) -> bytes:
    """A DICOM file (Deflated Explicit VR Little Endian) whose data set inflates to ``inflated_bytes`` of zeros."""
    import struct
    import zlib

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    size = inflated_bytes - inflated_bytes % 2
    out = [head.getvalue(), deflate.compress(struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, size))]
    zeros = bytes(16 * 1024 * 1024)
    for start in range(0, size, len(zeros)):
        out.append(deflate.compress(zeros[: min(len(zeros), size - start)]))
    out.append(deflate.flush())
    return b"".join(out)


def hostile_uploads(max_upload_bytes: int) -> list[Upload]:
    """Bombs near the limits, a tall strip and slow clients (issue 11), next to :func:`bad_uploads`.

    ``slow_body`` clients send the headers and half of a valid image, then stall; ``slow_headers``
    clients send half of their headers and stall: the server must drop both without harm to others."""
    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    cap = max_upload_bytes - 1024
    dicom = deflated_dicom_bomb(min(1_500_000_000, cap * 1000))
    ups = [
        Upload("b16.png", png(Image.new("I;16", (8000, 7999))), "image/png", "bomb_16bit_near_pixel_limit"),
        Upload("zeros.png", png(Image.new("L", (8000, 7999))), "image/png", "bomb_8bit_near_pixel_limit"),
        Upload("tall.png", png(Image.new("L", (16, 3_999_999))), "image/png", "tall_strip"),
        Upload("bomb.dcm", dicom, "application/dicom", "deflated_dicom_bomb"),
        Upload("near.png", b"\x89PNG\r\n\x1a\n" + bytes(cap - 8), "image/png", "junk_just_under_upload_limit"),
        Upload("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (max_upload_bytes + 1), "image/png", "over_upload_limit"),
        Upload("slow.png", _png(np.full((256, 256), 100, np.uint8)), "image/png", "slow_body"),
        Upload("slow-headers", b"", "", "slow_headers"),
    ]
    return [u for u in ups if len(u.data) <= cap or u.kind == "over_upload_limit"]


SLOW_KINDS = ("slow_body", "slow_headers")


async def _slow_request(base_url: str, up: Upload, token: str | None, endpoint: str, give_up_s: float = 60.0) -> int | None:
    """A stalling client on a raw socket: the status the server answered, or None if it just closed."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        if up.kind == "slow_headers":
            writer.write(f"POST {endpoint} HTTP/1.1\r\nHost: {host}\r\n{auth}X-Slow: ".encode())
        else:
            part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n' + up.data
                    + b"\r\n--b--\r\n")
            writer.write(f"POST {endpoint} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: {len(part)}\r\n"
                         f"Content-Type: multipart/form-data; boundary=b\r\n\r\n".encode() + part[: len(part) // 2])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), give_up_s)
        if answer.startswith(b"HTTP/1.1 "):
            return int(answer[9:12])
        return None
    except (ConnectionError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()


@dataclass
class LoadReport:
    clients: int
    requests: int
    elapsed_s: float
    rate_req_s: float
    """All answered requests per second."""
    rate_ok_s: float
    """Successful predictions per second."""
    latency_ms: dict
    """p50 / p95 / p99 / max over all requests, and over valid uploads only."""
    status_counts: dict
    by_kind: dict
    """kind -> {status: count}."""
    server_errors_5xx: int
    transport_errors: int
    """Transport errors of ordinary requests (not slow clients, not over the upload limit): must be 0."""
    transport_errors_by_kind: dict
    latency_by_kind_ms: dict
    """kind -> p50 / p95 / p99 / max / mean."""
    successes: int
    audit_rows_added: int | None
    audit_matches: bool | None
    stopped_by_deadline: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    q = np.percentile(np.asarray(values), [50, 95, 99])
    return {"p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "max": float(max(values)),
            "mean": float(statistics.fmean(values))}


async def _audit_total(client: httpx.AsyncClient) -> int | None:
    resp = await client.get("/v1/predictions", params={"limit": 1})
    return resp.json()["total"] if resp.status_code == 200 else None


async def run_load_async(
    base_url: str, valid: list[Upload], bad: list[Upload], *, clients: int = 50, total: int = 1000,
    max_seconds: float = 120.0, valid_share: float = 0.8, token: str | None = None, seed: int = 0,
    endpoint: str = "/v1/predict",
) -> LoadReport:
    rng = random.Random(seed)
    plan = [rng.choice(valid) if rng.random() < valid_share or not bad else rng.choice(bad) for _ in range(total)]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    results: list[tuple[str, int, float]] = []
    transport: Counter = Counter()
    next_index = 0
    deadline = time.monotonic() + max_seconds
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=max_seconds) as client:
        before = await _audit_total(client)

        async def worker() -> None:
            nonlocal next_index
            while time.monotonic() < deadline:
                if next_index >= len(plan):
                    return
                up = plan[next_index]
                next_index += 1
                t = time.perf_counter()
                if up.kind in SLOW_KINDS:
                    status = await _slow_request(base_url, up, token, endpoint)
                    results.append((up.kind, status or 0, (time.perf_counter() - t) * 1000))  # 0: closed by the server
                    continue
                try:
                    resp = await client.post(endpoint, files={"file": (up.name, up.data, up.content_type)})
                    results.append((up.kind, resp.status_code, (time.perf_counter() - t) * 1000))
                except httpx.HTTPError:
                    transport[up.kind] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        after = await _audit_total(client)
    transport_errors = sum(n for k, n in transport.items() if k != "over_upload_limit")
    statuses = Counter(s for _, s, _ in results)
    by_kind: dict[str, Counter] = {}
    for kind, s, _ in results:
        by_kind.setdefault(kind, Counter())[s] += 1
    successes = statuses.get(200, 0)
    added = after - before if before is not None and after is not None else None
    notes = []
    if added is None:
        notes.append("audit rows not checked: GET /v1/predictions refused (token?)")
    return LoadReport(
        clients=clients, requests=len(results), elapsed_s=elapsed, rate_req_s=len(results) / elapsed,
        rate_ok_s=successes / elapsed,
        latency_ms={"all": _percentiles([ms for _, _, ms in results]),
                    "valid": _percentiles([ms for k, _, ms in results if k == "valid"])},
        status_counts={str(k): v for k, v in sorted(statuses.items())},
        by_kind={k: {str(s): n for s, n in sorted(c.items())} for k, c in sorted(by_kind.items())},
        server_errors_5xx=sum(v for k, v in statuses.items() if k >= 500), transport_errors=transport_errors,
        transport_errors_by_kind=dict(sorted(transport.items())),
        latency_by_kind_ms={k: _percentiles([ms for kk, _, ms in results if kk == k]) for k in sorted(by_kind)},
        successes=successes, audit_rows_added=added, audit_matches=None if added is None else added == successes,
        stopped_by_deadline=len(results) + sum(transport.values()) < total, notes=notes,
    )


def run_load(*args, **kwargs) -> LoadReport:
    return asyncio.run(run_load_async(*args, **kwargs))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0):
    """Run ``app`` under uvicorn in a background thread, configured as ``cxrdx serve`` runs it (header and
    keep-alive timeouts from ``app.state.settings``); yields the base URL and stops the server after."""
    import uvicorn

    from cxrdx.serve.server import server_config

    port = port or free_port(host)
    server = uvicorn.Server(server_config(app, app.state.settings, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    start = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - start > timeout:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


@dataclass
class KillReport:
    """What a SIGKILL under load left behind in a SQLite audit log."""

    acknowledged: int
    """Predictions answered 200 before the kill."""
    in_flight: int
    """Clients that may have had an answer written but not yet delivered."""
    integrity: str
    rows: int

    @property
    def consistent(self) -> bool:
        """Intact database holding every acknowledged success and at most the in-flight ones more."""
        return self.integrity == "ok" and self.acknowledged <= self.rows <= self.acknowledged + self.in_flight


def kill_under_load(proc, url: str, uploads: list[Upload], audit_db, *, clients: int = 4, seconds: float = 4.0,
                    headers: dict | None = None) -> KillReport:
    """Post ``uploads`` to ``url``/v1/predict from ``clients`` threads, SIGKILL ``proc`` after ``seconds``,
    then read the SQLite audit log ``audit_db`` the server was writing."""
    import os
    import signal
    import sqlite3

    acked, stop = [0], threading.Event()

    def client(i: int) -> None:
        with httpx.Client(headers=headers or {}, timeout=60) as c:
            while not stop.is_set():
                up = uploads[i % len(uploads)]
                try:
                    if c.post(url + "/v1/predict", files={"file": (up.name, up.data, up.content_type)}).status_code == 200:
                        acked[0] += 1
                except httpx.HTTPError:
                    return

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    stop.set()
    for w in workers:
        w.join(60)
    con = sqlite3.connect(audit_db)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows = con.execute("SELECT count(*) FROM cxrdx_predictions").fetchone()[0]
    finally:
        con.close()
    return KillReport(acked[0], len(workers), integrity, rows)
