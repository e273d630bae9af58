"""Fine-tuning throughput (training images per second) of a hybrid model on this machine.

    python benchmarks/finetune_speed.py --backbone densenet121 --head lstm --weights none --blocks 2
    python benchmarks/finetune_speed.py --backbone tf_efficientnet_lite0 --head bilstm --blocks 2

Real cxr3 images go through the training transform once (decoding is not timed, it
runs in DataLoader workers in real training); then ``--steps`` optimizer steps
(forward, backward, AdamW) are timed after ``--warmup`` untimed ones, with the same
device / bf16 autocast / channels_last choices as ``cxrdx train`` (GPU when present).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn as nn

from cxrdx.config import default_data_root
from cxrdx.data.dataset import CXRDataset
from cxrdx.data.manifest import load_manifest
from cxrdx.data.transforms import build_transform
from cxrdx.models.factory import create_model
from cxrdx.training.distributed import autocast, current, to_channels_last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--head", default="lstm")
    ap.add_argument("--weights", default="none", help="imagenet | none")
    ap.add_argument("--blocks", type=int, default=2, help="trainable last backbone blocks (finetune_blocks); -1 = whole backbone")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = current().device
    torch.manual_seed(0)
    model = create_model(args.backbone, args.head, weights=args.weights)
    if args.blocks < 0:
        model.freeze_backbone(0)
        model.backbone.requires_grad_(True)
    else:
        model.freeze_backbone(args.blocks)
    model.to(device)
    to_channels_last(model, device)
    df = load_manifest(default_data_root()).sample(args.batch, random_state=0)
    data = CXRDataset(df, build_transform(224, model.spec.mean, model.spec.std, augment=True))
    x = torch.stack([data[i][0] for i in range(len(data))]).to(device)
    y = torch.tensor(df["target"].to_list()).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    print(json.dumps({
        "backbone": args.backbone, "head": args.head, "weights": args.weights, "trainable_blocks": args.blocks,
        "batch": args.batch, "steps": args.steps, "images_per_s": round(args.steps * args.batch / seconds, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(), "bf16_autocast": device.type == "cuda", "channels_last": device.type == "cuda",
        "cores": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }))


if __name__ == "__main__":
    main()
