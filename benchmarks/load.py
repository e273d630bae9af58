"""Load and fault test on loopback: N concurrent clients send a mix of cxr3 X-rays and broken files.

Starts ``cxrdx serve`` in a subprocess (its own fresh SQLite audit log), sends
``--requests`` uploads from ``--clients`` concurrent clients (bounded by
``--max-seconds``), then reports the rate served, p50/p95/p99 latency, the
status counts (5xx must be 0) and whether the audit log gained exactly one
row per successful prediction.

    python benchmarks/load.py --clients 50 --requests 1000 --runtime onnx --json runs/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loadtest.py and throughput.py beside this script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="Run folder; default: tf_efficientnet_lite0 (ImageNet) + bilstm head with seed-0 weights.")
    p.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--valid-share", type=float, default=0.8, help="Share of uploads that are real cxr3 images.")
    p.add_argument("--images", type=int, default=200, help="Distinct cxr3 images in the valid pool.")
    p.add_argument("--max-upload-mb", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--token", default="load-test-token", help="Bearer token the test server requires ('' = none).")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def valid_pool(n: int) -> list:
    from cxrdx.config import default_data_root
    from cxrdx.data.manifest import load_manifest
    from loadtest import Upload

    df = load_manifest(default_data_root())
    step = max(1, len(df) // n)
    return [Upload(Path(p).name, Path(p).read_bytes(), "image/png", "valid") for p in df["image"].iloc[::step][:n]]


def prepare_model(run_dir: Path | None, tmp: Path, runtime: str) -> Path:
    from cxrdx.inference.onnx_export import ONNX_FILE, export_run

    if run_dir is None:
        from throughput import default_run_dir

        run_dir = default_run_dir(tmp)
    if runtime == "onnx" and not (run_dir / ONNX_FILE).is_file():
        export_run(run_dir)
    return run_dir


def start_server(run_dir: Path, args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen, str]:
    from loadtest import free_port

    port = free_port()
    env = {**os.environ, "CXRDX_API_TOKEN": args.token} if args.token else {k: v for k, v in os.environ.items() if k != "CXRDX_API_TOKEN"}
    cmd = [sys.executable, "-c", "from cxrdx.cli import main; main()", "serve", "--model", str(run_dir), "--runtime", args.runtime,
           "--port", str(port), "--database-url", f"sqlite:///{tmp / 'audit.db'}",
           "--max-upload-mb", str(args.max_upload_mb), "--threads", str(args.threads)]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {(tmp / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit("server did not become healthy within 120 s")


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    lat, lv = report["latency_ms"]["all"], report["latency_ms"]["valid"]
    t = Table(title=f"Load test: {report['clients']} clients, {report['requests']} requests, "
                    f"{report['runtime']} runtime, {report['elapsed_s']:.1f} s")
    t.add_column("measure")
    t.add_column("value", justify="right")
    rows = [
        ("requests answered / s", f"{report['rate_req_s']:.1f}"),
        ("successful predictions / s", f"{report['rate_ok_s']:.1f}"),
        ("latency p50 / p95 / p99 (all), ms", f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f}"),
        ("latency p50 / p95 / p99 (valid), ms", f"{lv['p50']:.0f} / {lv['p95']:.0f} / {lv['p99']:.0f}"),
        ("status counts", ", ".join(f"{k}: {v}" for k, v in report["status_counts"].items())),
        ("5xx responses", str(report["server_errors_5xx"])),
        ("transport errors", str(report["transport_errors"])),
        ("audit rows added / successes", f"{report['audit_rows_added']} / {report['successes']}"),
    ]
    for r in rows:
        t.add_row(*r)
    Console().print(t)
    kinds = Table(title="Status by upload kind")
    kinds.add_column("kind")
    kinds.add_column("statuses")
    for kind, counts in report["by_kind"].items():
        kinds.add_row(kind, ", ".join(f"{s}: {n}" for s, n in counts.items()))
    Console().print(kinds)


def main(argv: list[str] | None = None) -> int:
    from loadtest import bad_uploads, run_load

    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run_dir = prepare_model(args.model, tmp, args.runtime)
        valid = valid_pool(args.images)
        bad = bad_uploads(int(args.max_upload_mb * 1024 * 1024))
        proc, url = start_server(run_dir, args, tmp)
        try:
            report = run_load(url, valid, bad, clients=args.clients, total=args.requests, max_seconds=args.max_seconds,
                              valid_share=args.valid_share, token=args.token or None).to_dict()
        finally:
            proc.terminate()
            proc.wait(30)
    report.update(runtime=args.runtime, threads=args.threads, cpu_count=os.cpu_count(),
                  load_average_at_end=os.getloadavg(), command=" ".join(sys.argv))
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    ok = report["server_errors_5xx"] == 0 and report["audit_matches"] and report["transport_errors"] == 0
    print("PASS: 0 5xx, audit rows == successes" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
