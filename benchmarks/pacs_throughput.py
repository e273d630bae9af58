"""PACS node throughput: N CR DICOMs pushed into a temporary Orthanc, the node analysing them as they arrive.

Starts a throwaway Orthanc (``pacs_orthanc.py``), starts the node (``cxrdx.pacs.node.PacsNode``) in a thread
on an empty state database, uploads ``--n`` chest DICOMs built from real cxr3 images (each a new study) as
fast as Orthanc takes them, and waits until the node has stored an SR and a Grad-CAM Secondary Capture for
every one. Reports images/second end to end (first upload -> last result stored), the node's per-image
latency (fetch + decode + predict + Grad-CAM + build + store) p50/p95, and the queueing delay.

    nice -n 10 python benchmarks/pacs_throughput.py --n 200 --threads 1 --json runs/pacs/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pacs_orthanc import OrthancServer, chest_dicom, cxr3_greys  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="Run folder; default: tf_efficientnet_lite0 (ImageNet) + bilstm head with seed-0 weights.")
    p.add_argument("--data", type=Path, default=None, help="cxr3 folder (default: $CXRDX_DATA or ../shared/data/cxr3).")
    p.add_argument("--n", type=int, default=200, help="DICOMs to push.")
    p.add_argument("--distinct", type=int, default=50, help="Distinct cxr3 images they are built from.")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    p.add_argument("--threads", type=int, default=1, help="Intra-op threads (1 suits a shared CPU).")
    p.add_argument("--no-overlay", action="store_true", help="SR only (no Grad-CAM Secondary Capture).")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--json", type=Path, default=None, help="Write the report here.")
    return p.parse_args(argv)


def default_run_dir(tmp: Path) -> Path:
    import torch

    from cxrdx.models.factory import create_model
    from cxrdx.models.run import save_run

    torch.manual_seed(0)
    save_run(create_model("tf_efficientnet_lite0", "bilstm", weights="imagenet"), tmp / "bench-model")
    return tmp / "bench-model"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(args: argparse.Namespace) -> dict:
    from cxrdx.config import default_data_root
    from cxrdx.pacs.analysis import Analyzer
    from cxrdx.pacs.node import PacsNode
    from cxrdx.pacs.orthanc import OrthancClient
    from cxrdx.pacs.state import NodeState

    tmp = Path(tempfile.mkdtemp(prefix="cxrdx-pacs-bench-"))
    run_dir = args.model or default_run_dir(tmp)
    greys = cxr3_greys(args.data or default_data_root(), args.distinct)
    files = [chest_dicom(greys[i % len(greys)], instance_number=1) for i in range(args.n)]
    analyzer = Analyzer(run_dir, runtime=args.runtime, threads=args.threads, overlay=not args.no_overlay)
    analyzer.analyse(files[0])  # warm-up outside the clock
    with OrthancServer(tmp / "orthanc") as orthanc:
        client = OrthancClient(orthanc.url)
        state = NodeState(f"sqlite:///{tmp / 'state.db'}", client.url)
        node = PacsNode(client, analyzer, state, poll_interval=0.1)
        node.start_seq()  # follow from now on: only the pushed images
        worker = threading.Thread(target=node.run, daemon=True)
        worker.start()
        t0 = time.time()
        sent_at = {}
        for data in files:
            r = orthanc.upload(data)
            sent_at[r["ID"]] = time.time()
        t_uploaded = time.time()
        deadline = time.monotonic() + args.timeout
        while state.counts().get("done", 0) + state.counts().get("failed", 0) < args.n:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        node.stop()
        worker.join(60)
        rows = state.rows("done")
        t_end = max((r.handled_at.timestamp() for r in rows), default=time.time())
        n_instances = len(orthanc.get("/instances"))
    latencies = [r.latency_ms for r in rows]
    done = len(rows)
    return {
        "benchmark": "pacs_throughput",
        "n_pushed": args.n, "n_done": done, "n_failed": state.counts().get("failed", 0),
        "orthanc_instances_after": n_instances,
        "images_per_second": done / (t_end - t0) if done else 0.0,
        "wall_seconds": t_end - t0,
        "upload_seconds": t_uploaded - t0,
        "node_latency_ms": {"p50": pct(latencies, 50), "p95": pct(latencies, 95), "mean": float(np.mean(latencies)) if latencies else None},
        "queue_to_result_s": {"p50": pct([r.handled_at.timestamp() - t0 for r in rows], 50),
                              "max": t_end - t0},
        "setup": {"model": str(args.model or "tf_efficientnet_lite0+bilstm (ImageNet backbone, seed-0 head)"),
                  "runtime": args.runtime, "threads": args.threads, "overlay": not args.no_overlay,
                  "image_max_side": 512, "distinct_images": len(greys), "cpu_count": os.cpu_count(),
                  "load_average_at_end": os.getloadavg(), "python": platform.python_version(),
                  "orthanc": "Debian orthanc, loopback, SQLite index"},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if report["n_done"] == report["n_pushed"] else 1


if __name__ == "__main__":
    sys.exit(main())
