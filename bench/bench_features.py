"""Inception feature extraction speed (images/s) for a few batch sizes.

Runs the FID Inception network (64 + 2048 features in one pass, as ``evaluate`` does) on random
uint8 images of the dataset's size, resized to 299x299 inside the network. Each batch size is
timed ``--runs`` times after a warm-up; the median is reported. Writes bench/results/features.json.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_features.py
    python bench/bench_features.py --batches 1,16,64 --images 64 --size 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from diffscape.metrics.evaluate import versions
from diffscape.metrics.features import InceptionExtractor
from diffscape.metrics.weights import resolve_inception_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--images", type=int, default=32, help="images per timed run")
    p.add_argument("--runs", type=int, default=3, help="timed runs per batch size (median kept)")
    p.add_argument("--size", type=int, default=32, help="input image side, px (resized to 299)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "features.json"))
    args = p.parse_args()

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    weights = resolve_inception_weights(args.inception_weights)
    ext = InceptionExtractor(weights, args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=g
    )

    def sync() -> None:
        if ext.device.type == "cuda":
            torch.cuda.synchronize()

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        ext(images[:batch])  # warm-up (allocator, kernels)
        rates = []
        for _ in range(args.runs):
            sync()
            t0 = time.perf_counter()
            for start in range(0, args.images, batch):
                ext(images[start : start + batch])
            sync()
            rates.append(args.images / (time.perf_counter() - t0))
        rows.append(
            {
                "batch": batch,
                "images_per_s": statistics.median(rates),
                "runs": [round(r, 3) for r in rates],
            }
        )
        print(
            f"batch {batch:>4}: {statistics.median(rates):7.2f} images/s  (runs: "
            + ", ".join(f"{r:.2f}" for r in rates)
            + ")",
            flush=True,
        )

    result = {
        "what": "FID Inception (64 + 2048 features, one pass), uint8 input resized to 299x299",
        "input_size": args.size,
        "images_per_run": args.images,
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if ext.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "weights_sha256": weights.sha256,
        "versions": versions(),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(f"{'batch':>6}  {'images/s':>9}  {'s/image':>8}")
    for r in rows:
        print(f"{r['batch']:>6}  {r['images_per_s']:>9.2f}  {1 / r['images_per_s']:>8.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
