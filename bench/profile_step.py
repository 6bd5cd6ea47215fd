"""Where the tiny preset's training step spends its CPU time: torch.profiler over ``--steps``
steps of the step as ``bench/cpu_speed.py`` builds it (the CLI's defaults: precision auto),
grouped into kinds of work. Prints a table; writes JSON (``--out``).

    python bench/profile_step.py --steps 20 --out bench/results/profile-step.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from diffscape.checkpoint import TrainingState
from diffscape.data.source import make_source
from diffscape.settings.presets import resolve
from diffscape.train.setup import build_model, make_accelerator, step_parts
from diffscape.train.step import train_step

HERE = Path(__file__).resolve().parent
KINDS = {  # the first kind whose words are in an op's name takes it
    "convolution": ("convolution",),
    "copies and casts": ("copy_", "_to_copy", "clone"),
    "group norm": ("group_norm",),
    "silu": ("silu",),
    "attention": ("attention", "bmm", "softmax"),
    "matmul (time and class embeddings)": ("mm", "addmm", "linear"),
    "optimizer, gradient norm, EMA": ("adam", "norm", "lerp", "foreach"),
    "elementwise": ("add", "mul", "div", "sub", "cat", "upsample", "sum", "mean"),
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "profile-step.json")
    ap.add_argument("overrides", nargs="*", help="settings overrides, e.g. train.precision=fp32")
    args = ap.parse_args()
    cfg = resolve("tiny", ["model.conditional=true", "model.num_classes=4", *args.overrides])
    acc = make_accelerator(cfg, cpu=True)
    model, ema, opt = build_model(cfg, acc)
    rng = np.random.default_rng(0)
    size = cfg.model.image_size
    images = rng.integers(0, 256, (4096, 3, size, size), dtype=np.uint8)
    data, _ = make_source(
        "off", images, rng.integers(0, 4, 4096), 0, cfg.train.batch_size, acc.device
    )
    parts = step_parts(cfg, acc, model, ema, opt, torch.Generator().manual_seed(0))
    state = TrainingState(step=0)
    for _ in range(10):  # warm-up: kernels chosen, caches filled
        train_step(parts, state, data)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            train_step(parts, state, data)
    totals: dict[str, float] = {}
    for e in prof.key_averages():
        name = e.key.lower()
        kind = next((k for k, words in KINDS.items() if any(w in name for w in words)), "other")
        totals[kind] = totals.get(kind, 0.0) + e.self_cpu_time_total / 1e3  # ms
    all_ms = sum(totals.values())
    print(
        f"| kind of work | ms per step | share |  ({args.steps} steps, {torch.get_num_threads()} threads)"
    )
    print("|---|---|---|")
    for kind, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms / args.steps:.1f} | {100 * ms / all_ms:.0f}% |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "argv": sys.argv,
                "steps": args.steps,
                "ms_per_step": {k: v / args.steps for k, v in totals.items()},
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
