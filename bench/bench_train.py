"""Training throughput per preset at its image size: fp32 vs bf16 autocast, img/s and peak memory.
Each measurement times diffscape.train.train_step (the step train() runs) on random images.

Each (preset, precision) runs in its own subprocess (clean peak RSS), `--repeats` times, in
interleaved order so that machine noise hits every variant alike; the table shows the median,
the spread (min-max) and the bf16/fp32 ratio.

    python bench/bench_train.py                       # all presets, 3 repeats
    python bench/bench_train.py --presets tiny small --repeats 5 --steps 20

Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(preset: str, precision: str, batch: int | None, steps: int, warmup: int) -> dict:
    """Time `steps` steps of diffscape.train.train_step (after `warmup`) on the CPU."""
    import resource

    from diffscape.model.unet import build_unet, count_parameters
    from diffscape.settings.presets import resolve
    from diffscape.train import measure_train_speed

    over = ["model.conditional=true", "model.num_classes=5", f"train.precision={precision}"]
    b = batch or resolve(preset, over).train.batch_size
    cfg = resolve(preset, [*over, f"train.batch_size={b}"])
    ips = measure_train_speed(cfg, steps, warmup=warmup, cpu=True)
    return {
        "preset": preset,
        "precision": precision,
        "image_size": cfg.model.image_size,
        "batch": b,
        "parameters": count_parameters(build_unet(cfg.model)),
        "images_per_second": ips,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "base", "base64"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="batch (0 = each preset's own)")
    ap.add_argument("--one", nargs=2, metavar=("PRESET", "PRECISION"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "train.json"))
    args = ap.parse_args()
    if args.one:
        steps = args.steps if args.one[0] in ("tiny", "small") else max(3, args.steps // 3)
        print(json.dumps(one(args.one[0], args.one[1], args.batch or None, steps, args.warmup)))
        return

    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.repeats):
        for preset in args.presets:
            for prec in args.precisions:
                cmd = [sys.executable, __file__, "--one", preset, prec, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--batch", str(args.batch)]  # fmt: skip
                rec = json.loads(subprocess.check_output(cmd, env=env, text=True).splitlines()[-1])
                results.setdefault((preset, prec), []).append(rec)
                print(f"  repeat {r + 1}: {preset:7s} {prec}: {rec['images_per_second']:.1f} img/s",
                      file=sys.stderr)  # fmt: skip

    rows = []
    for recs in results.values():
        ips = [x["images_per_second"] for x in recs]
        rows.append({**recs[0], "images_per_second": statistics.median(ips),
                     "images_per_second_min": min(ips), "images_per_second_max": max(ips),
                     "peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in recs),
                     "runs": len(ips)})  # fmt: skip
    fp32 = {r["preset"]: r["images_per_second"] for r in rows if r["precision"] == "fp32"}
    print(f"\n{'preset':8s}{'px':>4s}{'params':>9s}{'batch':>6s} {'prec':5s}{'img/s':>8s}"
          f"{'min-max':>14s}{'vs fp32':>8s}{'peak MiB':>10s}")  # fmt: skip
    for r in rows:
        ratio = r["images_per_second"] / fp32[r["preset"]] if r["preset"] in fp32 else float("nan")
        r["ratio_vs_fp32"] = ratio
        print(f"{r['preset']:8s}{r['image_size']:4d}{r['parameters'] / 1e6:8.1f}M{r['batch']:6d} "
              f"{r['precision']:5s}{r['images_per_second']:8.1f}"
              f"{r['images_per_second_min']:7.1f}-{r['images_per_second_max']:<6.1f}"
              f"{ratio:8.2f}{r['peak_rss_mib']:10.0f}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "command": " ".join(sys.argv), "steps": args.steps, "repeats": args.repeats}  # fmt: skip
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
