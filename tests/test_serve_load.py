"""A small load and fault test on a real uvicorn server: concurrent clients, valid and broken uploads."""

from __future__ import annotations

from test_serve_support import Upload, bad_uploads, cxr3_images, make_app, run_load, served_run, serve_in_thread  # noqa: F401


def test_concurrent_mixed_uploads_give_no_5xx_and_lose_no_audit_rows(served_run, cxr3_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_API_TOKEN", "load")
    app = make_app(served_run, tmp_path, runtime="onnx", max_upload_bytes=500_000)
    valid = [Upload(p.name, p.read_bytes(), "image/png", "valid") for p in cxr3_images(cxr3_root, 12)]
    bad = bad_uploads(500_000)
    with serve_in_thread(app) as url:
        report = run_load(url, valid, bad, clients=10, total=60, max_seconds=90, valid_share=0.6, token="load", seed=1)
    assert report.requests == 60 and not report.stopped_by_deadline
    assert report.server_errors_5xx == 0 and report.transport_errors == 0
    assert report.successes == report.by_kind["valid"]["200"] == report.status_counts["200"]
    assert report.audit_rows_added == report.successes and report.audit_matches
    for kind, statuses in report.by_kind.items():
        if kind != "valid":
            assert all(400 <= int(s) < 500 for s in statuses), (kind, statuses)
    assert report.latency_ms["all"]["p99"] >= report.latency_ms["all"]["p50"] > 0


def test_load_report_refuses_wrong_token(served_run, cxr3_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_API_TOKEN", "right")
    app = make_app(served_run, tmp_path)
    valid = [Upload(p.name, p.read_bytes(), "image/png", "valid") for p in cxr3_images(cxr3_root, 2)]
    with serve_in_thread(app) as url:
        report = run_load(url, valid, [], clients=2, total=4, max_seconds=30, token="wrong")
    assert report.status_counts == {"401": 4} and report.successes == 0 and report.audit_rows_added is None
