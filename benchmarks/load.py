"""Load and fault test on loopback: N concurrent clients send a mix of cxr3 X-rays and broken or hostile files.

Starts ``cxrdx serve`` in a subprocess (its own fresh SQLite audit log), sends
``--requests`` uploads from ``--clients`` concurrent clients (bounded by
``--max-seconds``), then reports the rate served, p50/p95/p99 latency per kind
of request, the status counts (5xx must be 0), transport errors, the server's
peak RSS and whether the audit log gained exactly one row per successful prediction.

``--mix normal``: 80 % cxr3 X-rays + 20 % broken files; ``--mix hostile``: 80 % X-rays + 20 %
broken and hostile uploads (bombs near the limits, a tall strip, a deflated DICOM bomb, slow clients);
``--mix both`` runs an all-valid baseline and the hostile mix, each on a fresh server, and compares the
valid requests' p95. ``--kill-check`` then kills the server with SIGKILL under load, checks
``PRAGMA integrity_check`` and that the rows equal the acknowledged successes, and restarts it.

    python benchmarks/load.py --clients 50 --requests 100000 --max-seconds 60 --mix both --kill-check \\
        --runtime onnx --json runs/load.json
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
    p.add_argument("--mix", default="normal", choices=["normal", "hostile", "both"])
    p.add_argument("--kill-check", action="store_true", help="Also SIGKILL the server under load and check the audit log.")
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


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set (VmHWM, Linux), or None where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def start_server(run_dir: Path, args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen, str]:
    from loadtest import free_port

    port = free_port()
    env = {**os.environ, "CXRDX_API_TOKEN": args.token} if args.token else {k: v for k, v in os.environ.items() if k != "CXRDX_API_TOKEN"}
    cmd = [sys.executable, "-c", "from cxrdx.cli import main; main()", "serve", "--model", str(run_dir), "--runtime", args.runtime,
           "--port", str(port), "--database-url", f"sqlite:///{tmp / 'audit.db'}",
           "--max-upload-mb", str(args.max_upload_mb), "--threads", str(args.threads)]
    log = open(tmp / "server.log", "a")
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
        ("server peak RSS, GB", f"{(report.get('server_peak_rss_bytes') or 0) / 1e9:.2f}"),
    ]
    for r in rows:
        t.add_row(*r)
    Console().print(t)
    kinds = Table(title="Status by upload kind")
    kinds.add_column("kind")
    kinds.add_column("statuses")
    kinds.add_column("p50 / p95 / p99 ms", justify="right")
    for kind, counts in report["by_kind"].items():
        q = report["latency_by_kind_ms"].get(kind) or {}
        kinds.add_row(kind, ", ".join(f"{s}: {n}" for s, n in counts.items()),
                      f"{q.get('p50', 0):.0f} / {q.get('p95', 0):.0f} / {q.get('p99', 0):.0f}")
    Console().print(kinds)


def one_run(run_dir: Path, args: argparse.Namespace, tmp: Path, valid: list, bad: list, valid_share: float) -> dict:
    from loadtest import run_load

    (tmp / "audit.db").unlink(missing_ok=True)
    proc, url = start_server(run_dir, args, tmp)
    try:
        report = run_load(url, valid, bad, clients=args.clients, total=args.requests, max_seconds=args.max_seconds,
                          valid_share=valid_share, token=args.token or None).to_dict()
        report.update(server_peak_rss_bytes=peak_rss_bytes(proc.pid), runtime=args.runtime)
    finally:
        proc.terminate()
        proc.wait(30)
    return report


def kill_check(run_dir: Path, args: argparse.Namespace, tmp: Path, valid: list, seconds: float = 8.0) -> dict:
    """SIGKILL the server under load; the audit log must be intact and hold every acknowledged success."""
    from loadtest import kill_under_load

    (tmp / "audit.db").unlink(missing_ok=True)
    proc, url = start_server(run_dir, args, tmp)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    killed = kill_under_load(proc, url, valid, tmp / "audit.db", clients=min(args.clients, 8), seconds=seconds,
                             headers=headers)
    proc, url = start_server(run_dir, args, tmp)  # restart on the same database
    try:
        after_restart = httpx.get(url + "/v1/predictions", params={"limit": 1}, headers=headers).json()["total"]
    finally:
        proc.terminate()
        proc.wait(30)
    return {"integrity_check": killed.integrity, "rows": killed.rows, "acknowledged_successes": killed.acknowledged,
            "in_flight_clients": killed.in_flight, "rows_after_restart": after_restart,
            "ok": killed.consistent and after_restart == killed.rows}


def main(argv: list[str] | None = None) -> int:
    from loadtest import bad_uploads, hostile_uploads

    args = parse_args(argv)
    limit = int(args.max_upload_mb * 1024 * 1024)
    out: dict = {"runtime": args.runtime, "threads": args.threads, "cpu_count": os.cpu_count(), "mix": args.mix,
                 "load_average_at_start": os.getloadavg(), "command": " ".join(sys.argv), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run_dir = prepare_model(args.model, tmp, args.runtime)
        valid = valid_pool(args.images)
        runs = {"normal": (bad_uploads(limit), args.valid_share)} if args.mix == "normal" else {}
        if args.mix == "both":
            runs["all_valid"] = ([], 1.0)
        if args.mix in ("hostile", "both"):
            runs["hostile"] = (bad_uploads(limit) + hostile_uploads(limit), args.valid_share)
        for name, (bad, share) in runs.items():
            out["runs"][name] = report = one_run(run_dir, args, tmp, valid, bad, share)
            print_table(report)
        if args.kill_check:
            out["kill_check"] = kill_check(run_dir, args, tmp, valid)
            print("kill -9 check:", out["kill_check"])
    out["load_average_at_end"] = os.getloadavg()
    failures = []
    for name, r in out["runs"].items():
        rss = r.get("server_peak_rss_bytes")
        if r["server_errors_5xx"]:
            failures.append(f"{name}: {r['server_errors_5xx']} 5xx")
        if r["transport_errors"]:
            failures.append(f"{name}: {r['transport_errors']} transport errors under the upload limit")
        if not r["audit_matches"]:
            failures.append(f"{name}: audit rows {r['audit_rows_added']} != successes {r['successes']}")
        if rss is not None and rss >= 2.5e9:
            failures.append(f"{name}: server peak RSS {rss / 1e9:.2f} GB >= 2.5 GB")
    if "all_valid" in out["runs"] and "hostile" in out["runs"]:
        base = out["runs"]["all_valid"]["latency_ms"]["valid"]["p95"]
        mixed = out["runs"]["hostile"]["latency_ms"]["valid"]["p95"]
        out["valid_p95_ratio_hostile_vs_all_valid"] = ratio = mixed / base
        print(f"valid p95: all-valid {base:.0f} ms, hostile mix {mixed:.0f} ms (x{ratio:.2f})")
        if ratio > 1.5:
            failures.append(f"valid p95 x{ratio:.2f} of the all-valid run (> 1.5)")
    if "kill_check" in out and not out["kill_check"]["ok"]:
        failures.append(f"kill -9 check: {out['kill_check']}")
    out["failures"] = failures
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
