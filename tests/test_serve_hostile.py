"""The server under hostile clients (issue 11): decode slots, no head-of-line blocking, auth before the
body, bounded offset, trusted proxies only, 413 delivered, one error shape, header/body timeouts,
secure-by-default CLI, bounded peak RSS of a real server process, audit log after ``kill -9``."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from conftest import make_xray
from cxrdx.serve.server import client_address
from test_serve_support import (Upload, free_port, kill_under_load, make_app, png_bytes, served_run,  # noqa: F401
                                serve_in_thread)

PNG = png_bytes(make_xray((256, 256), seed=1))


def _post(client, data=PNG, path="/v1/predict", **kw):
    return client.post(path, files={"file": ("x.png", data, "image/png")}, **kw)


def _is_error_shape(r, status: int, code: str | None = None) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body


# -- 2, 3: decode slots; preprocessing outside the model lock -------------------------------------------------

def test_concurrent_decodes_are_bounded_and_a_long_wait_is_503(served_run, tmp_path):
    app = make_app(served_run, tmp_path, runtime="onnx", max_concurrent_decodes=2, decode_wait_s=0.5)
    service = app.state.service
    original, active, peak, lock = service.decode, [0], [0], threading.Lock()

    def slow_decode(data):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(1.5)
            return original(data)
        finally:
            with lock:
                active[0] -= 1

    service.decode = slow_decode
    with serve_in_thread(app) as url, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: httpx.post(url + "/v1/predict", files={"file": ("x.png", PNG)}, timeout=60), range(6)))
    statuses = sorted(r.status_code for r in answers)
    assert peak[0] <= 2 and set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    busy = next(r for r in answers if r.status_code == 503)
    _is_error_shape(busy, 503, "server_busy")
    assert busy.headers["retry-after"]


def test_preprocessing_runs_outside_the_model_lock(served_run, tmp_path):
    app = make_app(served_run, tmp_path, runtime="onnx")
    service = app.state.service
    original, lock_held = service.predictor.prepare, []

    def spy(grey, *args, **kwargs):
        lock_held.append(service._model_lock.locked())
        return original(grey, *args, **kwargs)

    service.predictor.prepare = spy
    assert _post(TestClient(app)).status_code == 200
    assert lock_held == [False]


def test_a_slow_upload_does_not_delay_another_users_prediction(served_run, tmp_path):
    """Head-of-line blocking: a 2 s preprocessing of one big upload; a normal upload sent meanwhile finishes first."""
    app = make_app(served_run, tmp_path, runtime="onnx")
    service = app.state.service
    original = service.predictor.prepare

    def slow_for_big(grey, *args, **kwargs):
        if grey.shape[0] > 1000:
            time.sleep(2.0)
        return original(grey, *args, **kwargs)

    service.predictor.prepare = slow_for_big
    big = png_bytes(np.zeros((1200, 1000), np.uint8) + 90)
    done: dict[str, float] = {}
    with serve_in_thread(app) as url:
        def send(name, data, delay):
            time.sleep(delay)
            r = httpx.post(url + "/v1/predict", files={"file": ("x.png", data)}, timeout=60)
            done[name] = time.monotonic()
            return r.status_code

        with ThreadPoolExecutor(2) as pool:
            slow, fast = pool.submit(send, "slow", big, 0), pool.submit(send, "fast", PNG, 0.5)
            assert slow.result() == 200 and fast.result() == 200
    assert done["fast"] < done["slow"]


# -- 5: secure by default ------------------------------------------------------------------------------------

@pytest.fixture
def cli(monkeypatch):
    """``cxrdx`` in-process with uvicorn's run loop replaced (so a server that would start returns at once)."""
    import uvicorn

    from cxrdx.cli import app

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: None)
    monkeypatch.delenv("CXRDX_API_TOKEN", raising=False)
    runner = CliRunner()
    return lambda *args, env=None: runner.invoke(app, [str(a) for a in args], env=env)


def _one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and fragment in text and "Traceback" not in text, text


def test_non_loopback_without_token_is_refused(cli, served_run, tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    _one_line_error(cli("serve", "--model", served_run, "--host", "0.0.0.0", "--database-url", db), "--insecure-no-auth")
    _one_line_error(cli("serve", "--model", served_run, "--database-url", db, env={"CXRDX_API_TOKEN": ""}), "CXRDX_API_TOKEN")
    ok = cli("serve", "--model", served_run, "--host", "0.0.0.0", "--database-url", db, "--insecure-no-auth")
    assert ok.exit_code == 0, ok.output
    assert cli("serve", "--model", served_run, "--host", "0.0.0.0", "--database-url", db,
               env={"CXRDX_API_TOKEN": "t"}).exit_code == 0


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_max_upload_mb_must_be_positive(cli, served_run, tmp_path, value):
    _one_line_error(cli("serve", "--model", served_run, f"--max-upload-mb={value}", "--database-url",
                        f"sqlite:///{tmp_path / 'a.db'}"), "max-upload-mb")


def test_unauthenticated_body_is_never_parsed(served_run, tmp_path, monkeypatch):
    from starlette.formparsers import MultiPartParser

    monkeypatch.setenv("CXRDX_API_TOKEN", "s3cret")
    app = make_app(served_run, tmp_path, max_upload_bytes=20 * 1024 * 1024)
    parsed = []
    original = MultiPartParser.parse

    async def spy(self):
        parsed.append(1)
        return await original(self)

    monkeypatch.setattr(MultiPartParser, "parse", spy)
    body = b"\0" * (19 * 1024 * 1024)
    with serve_in_thread(app) as url:
        r = httpx.post(url + "/v1/predict", files={"file": ("x.png", body)}, timeout=60)
        _is_error_shape(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer" and not parsed
        ok = httpx.post(url + "/v1/predict", files={"file": ("x.png", PNG)}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and parsed


# -- 6: bounded offset ---------------------------------------------------------------------------------------

def _check_offsets(client) -> None:
    for query in ({"offset": 9223372036854775808}, {"offset": -1}, {"offset": 10**9 + 1}, {"limit": 10**6}, {"limit": 0}):
        _is_error_shape(client.get("/v1/predictions", params=query), 422, "invalid_request")
    page = client.get("/v1/predictions", params={"offset": 10**9})
    assert page.status_code == 200 and page.json()["items"] == []


def test_offset_is_bounded_sqlite(served_run, tmp_path):
    _check_offsets(TestClient(make_app(served_run, tmp_path)))


# -- 7: X-Forwarded-For only from trusted proxies ------------------------------------------------------------

def test_client_address_rules():
    assert client_address("127.0.0.1", "203.0.113.7") == "127.0.0.1"  # no trusted proxy: the peer
    assert client_address("127.0.0.1", "203.0.113.7", "127.0.0.1") == "203.0.113.7"
    assert client_address("127.0.0.1", "1.1.1.1, 203.0.113.7", "127.0.0.0/8") == "203.0.113.7"  # right-most untrusted
    assert client_address("10.0.0.9", "203.0.113.7", "127.0.0.1") == "10.0.0.9"  # peer not a trusted proxy
    assert client_address("127.0.0.1", "A" * 65, "127.0.0.1") == "127.0.0.1"
    assert client_address("127.0.0.1", "<script>", "127.0.0.1") == "127.0.0.1"
    assert client_address("testclient", None) == "unknown" and client_address(None, None) == "unknown"
    assert client_address("::1", "2001:db8::1", "::1") == "2001:db8::1"


def _stored_client(app, xff: str) -> str:
    client = TestClient(app, client=("127.0.0.1", 5000))
    assert _post(client, headers={"X-Forwarded-For": xff}).status_code == 200
    return client.get("/v1/predictions", params={"limit": 1}).json()["items"][0]["client"]


def test_forwarded_for_is_believed_only_from_trusted_proxies(served_run, tmp_path):
    untrusted = make_app(served_run, tmp_path / "a", runtime="onnx")
    assert _stored_client(untrusted, "203.0.113.7") == "127.0.0.1"
    assert _stored_client(untrusted, "A" * 65) == "127.0.0.1"
    with serve_in_thread(untrusted) as url:  # through uvicorn, whose own proxy-header rewriting trusted loopback
        r = httpx.post(url + "/v1/predict", files={"file": ("x.png", PNG)}, headers={"X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 200
        assert httpx.get(url + "/v1/predictions", params={"limit": 1}).json()["items"][0]["client"] == "127.0.0.1"
    trusted = make_app(served_run, tmp_path / "b", runtime="onnx", trusted_proxies="127.0.0.1")
    assert _stored_client(trusted, "203.0.113.7") == "203.0.113.7"
    assert _stored_client(trusted, "A" * 65) == "127.0.0.1"


def test_postgresql_offset_and_long_forwarded_for(postgres_url, served_run, tmp_path):
    app = make_app(served_run, tmp_path, runtime="onnx", database_url=postgres_url, trusted_proxies="127.0.0.0/8")
    _check_offsets(TestClient(app))
    assert _stored_client(app, "B" * 65) == "127.0.0.1"  # was 503 on PostgreSQL (VARCHAR(64))


from test_audit import postgres_url  # noqa: E402,F401 (the throwaway PostgreSQL fixture)


# -- 11: 413 reaches the client ------------------------------------------------------------------------------

def test_oversized_uploads_get_their_413_not_a_reset(served_run, tmp_path):
    app = make_app(served_run, tmp_path, max_upload_bytes=1_000_000)
    body = os.urandom(1_900_000)

    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
        for i in range(0, len(body), 64_000):
            yield body[i : i + 64_000]

    with serve_in_thread(app) as url:
        for _ in range(10):  # declared Content-Length over the limit
            _is_error_shape(httpx.post(url + "/v1/predict", files={"file": ("x.png", body)}, timeout=30), 413, "upload_too_large")
        for _ in range(3):  # chunked, no Content-Length
            r = httpx.post(url + "/v1/predict", content=chunks(), timeout=30,
                           headers={"content-type": "multipart/form-data; boundary=b"})
            _is_error_shape(r, 413, "upload_too_large")
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:  # Expect: 100-continue: no body needed
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\nExpect: 100-continue\r\n"
                      b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
            assert s.recv(200).startswith(b"HTTP/1.1 413")


# -- 13: one error shape -------------------------------------------------------------------------------------

def test_every_error_has_the_documented_shape(served_run, tmp_path):
    app = make_app(served_run, tmp_path, runtime="onnx", max_upload_bytes=100_000)
    client = TestClient(app, raise_server_exceptions=False)
    _is_error_shape(client.get("/nope"), 404, "not_found")
    _is_error_shape(client.get("/v1/predict"), 405, "method_not_allowed")
    _is_error_shape(client.post("/v1/predict", content=b"plainly not multipart",
                                headers={"content-type": "multipart/form-data; boundary=x"}), 400)
    _is_error_shape(_post(client, b"\0" * 200_000), 413, "upload_too_large")
    _is_error_shape(_post(client, b"plain text, not an image"), 415)
    _is_error_shape(client.post("/v1/predict"), 422, "invalid_request")
    service = app.state.service
    service.score = lambda x: (_ for _ in ()).throw(RuntimeError("boom"))
    _is_error_shape(_post(client), 500, "internal_error")
    del service.score
    app.state.audit.record = lambda entry: (_ for _ in ()).throw(OSError("disk full"))
    _is_error_shape(_post(client), 503, "audit_unavailable")


# -- 14: header and body timeouts ----------------------------------------------------------------------------

def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it was still open after ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (socket.timeout, TimeoutError):
        return None
    except ConnectionResetError:
        pass
    return data


def test_slow_clients_are_dropped(served_run, tmp_path):
    app = make_app(served_run, tmp_path, header_timeout_s=1.0, body_idle_timeout_s=1.0, body_timeout_s=3.0)
    with serve_in_thread(app) as url:
        host, port = url.removeprefix("http://").split(":")
        silent = [socket.create_connection((host, int(port))) for _ in range(5)]
        partial = [socket.create_connection((host, int(port))) for _ in range(15)]
        for s in partial:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        trickle = socket.create_connection((host, int(port)))
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.1 s: still dropped after ~1 s
            try:
                trickle.send(bytes([b]))
            except OSError:
                break
            time.sleep(0.1)
        body = socket.create_connection((host, int(port)))
        body.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        start = time.monotonic()
        for s in silent + partial + [trickle]:
            assert _closed_within(s, 4.0) is not None
            s.close()
        answer = _closed_within(body, 4.0)
        body.close()
        assert answer is not None and answer.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in answer
        assert time.monotonic() - start < 8
        assert httpx.get(url + "/healthz").status_code == 200  # the server itself is fine


# -- memory of a real server process; audit log after kill -9 ------------------------------------------------

def _start_server(run_dir, tmp_path, *extra) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "CXRDX_API_TOKEN": "tok"}
    cmd = [sys.executable, "-c", "from cxrdx.cli import main; main()", "serve", "--model", str(run_dir), "--runtime", "onnx",
           "--port", str(port), "--database-url", f"sqlite:///{tmp_path / 'audit.db'}", "--threads", "2", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not start")


def _vm(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _encoded(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_hostile_uploads_keep_server_peak_rss_bounded(served_run, tmp_path):
    proc, url = _start_server(served_run, tmp_path, "--max-upload-mb", "20")
    auth = {"Authorization": "Bearer tok"}
    try:
        assert httpx.post(url + "/v1/predict", files={"file": ("x.png", PNG)}, headers=auth, timeout=60).status_code == 200
        base = _vm(proc.pid, "VmHWM")
        hostile = [_encoded(Image.new("I;16", (8000, 7999))), _encoded(Image.new("L", (16, 3_999_999))),
                   _encoded(Image.new("L", (7900, 7900))), _encoded(Image.new("RGB", (5000, 5000)))] * 2
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda d: httpx.post(url + "/v1/predict", files={"file": ("x.png", d)},
                                                         headers=auth, timeout=120), hostile))
        assert all(r.status_code < 500 for r in answers), [r.status_code for r in answers]
        grown = _vm(proc.pid, "VmHWM") - base
        print(f"peak RSS {base / 1e9:.2f} GB -> {(base + grown) / 1e9:.2f} GB; statuses {[r.status_code for r in answers]}")
        assert grown < 1.0e9, f"peak RSS grew by {grown / 1e9:.2f} GB"  # was +4.4 GB for 4 concurrent 16-bit images
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.slow
def test_kill_9_mid_load_leaves_a_consistent_audit_log(served_run, tmp_path):
    proc, url = _start_server(served_run, tmp_path)
    upload = Upload("x.png", PNG, "image/png", "valid")
    killed = kill_under_load(proc, url, [upload], tmp_path / "audit.db", clients=4, seconds=4,
                             headers={"Authorization": "Bearer tok"})
    assert killed.acknowledged > 0 and killed.consistent, killed  # at most the in-flight answers are unacknowledged
    rows = killed.rows
    proc2, url2 = _start_server(served_run, tmp_path)  # restarts on the same database
    try:
        total = httpx.get(url2 + "/v1/predictions", headers={"Authorization": "Bearer tok"}).json()["total"]
        assert total == rows
    finally:
        proc2.kill()
        proc2.wait(30)
