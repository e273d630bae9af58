"""Backbone forward speed on this CPU, each at its native input size (the model-zoo table's speed column).

    python benchmarks/backbone_speed.py [--backbones tf_efficientnet_lite0,tf_efficientnet_lite1,...] [--batch 16] [--threads N]
        [--out benchmarks/backbone_speed.json]

Times ``forward_features`` (what the feature cache computes; image decoding excluded) on random input,
fp32, after one warm-up batch; median of ``--repeats`` batches. Prints ms per image and images per second,
with the machine's load average: a busy machine slows everything down, so compare numbers of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from cxrdx.models.backbones import get_spec
from cxrdx.models.factory import create_model

DEFAULT = "raw_patches,tf_efficientnet_lite0,tf_efficientnet_lite0_ms,tf_efficientnet_lite1,tf_efficientnet_lite2"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", default=DEFAULT)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    load0 = os.getloadavg()[0]
    for name in args.backbones.split(","):
        spec = get_spec(name)
        size = spec.input_size[1]
        model = create_model(name, "pool", weights="imagenet", image_size=size).eval()
        x = torch.randn(args.batch, 3, size, size)
        times = []
        with torch.inference_mode():
            model.forward_features(x)
            for _ in range(args.repeats):
                t = time.perf_counter()
                model.forward_features(x)
                times.append(time.perf_counter() - t)
        ms = 1000 * statistics.median(times) / args.batch
        rows.append({"backbone": name, "input_px": size, "map": [spec.channels, *spec.feature_size],
                     "ms_per_image": round(ms, 2), "images_per_s": round(1000 / ms, 1)})
        print(f"{name:28s} {size} px  {spec.channels} x {spec.feature_size[0]} x {spec.feature_size[1]}  "
              f"{ms:7.2f} ms/image  {1000 / ms:7.1f} images/s")
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "batch": args.batch, "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)], "rows": rows}
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
