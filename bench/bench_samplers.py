"""FID and KID against sampler steps on one trained model: how many steps each fast sampler needs
to come within 10% of DDPM-1000's FID.

    python bench/bench_samplers.py RUN DATASET [--n 100] [--configs ddpm:0 ddim:20 dpm:20 ...]

Every configuration samples the same (seed, class, index) images, so differences come from the
sampler alone; the real side (DATASET:test) is embedded once. Prints a table, writes
bench/results/samplers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = ["ddpm:0", "ddim:10", "ddim:20", "ddim:50", "ddim:100", "dpm:10", "dpm:20", "dpm:50"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", help="trained run folder (conditional)")
    ap.add_argument("dataset", help="prepared dataset; its test split is the real side")
    ap.add_argument("--n", type=int, default=100, help="generated images per configuration")
    ap.add_argument("--n-real", type=int, default=500, help="real test images")
    ap.add_argument("--configs", nargs="+", default=DEFAULT, help="sampler:steps (ddpm: all T)")
    ap.add_argument("--out", default=str(HERE / "results" / "samplers.json"))
    args = ap.parse_args()

    from diffscape.data.dataset import load_dataset
    from diffscape.data.imagefolder import SampleSet
    from diffscape.metrics.evaluate import evaluate
    from diffscape.metrics.features import InceptionExtractor
    from diffscape.metrics.weights import resolve_inception_weights
    from diffscape.sample import generate_images, load_for_sampling, plan
    from diffscape.settings.sections import EvaluateSettings

    ds = load_dataset(args.dataset)
    model = load_for_sampling(args.run)
    class_idx, index, folders = plan(model, args.n, False, None)
    extractor = InceptionExtractor(resolve_inception_weights(), "cpu")
    rows = []
    for spec in args.configs:
        sampler, steps = spec.split(":")
        steps_i = int(steps) or None
        t0 = time.perf_counter()
        images = generate_images(
            model.unet, model.cfg, class_idx=class_idx, index=index, seed=0, sampler=sampler,
            steps=steps_i, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        fake = SampleSet(images=images, class_names=folders, paths=[Path(f) for f in folders])
        m = evaluate(
            (ds, "test"), fake, EvaluateSettings(n=args.n, n_real=args.n_real, per_class=False),
            extractor=extractor, progress=False, say=lambda _: None,
        )  # fmt: skip
        row = {
            "sampler": sampler,
            "steps": steps_i or model.cfg.diffusion.timesteps,
            "images_per_second": len(images) / seconds,
            "fid": m["fid"],
            "kid_mean": m["kid"]["mean"],
            "kid_std": m["kid"]["std"],
            "n_fake": m["n_fake"],
            "n_real": m["n_real"],
        }
        rows.append(row)
        print(f"  {sampler}:{row['steps']}: {row['images_per_second']:.2f} img/s, FID {row['fid']:.1f}",
              file=sys.stderr)  # fmt: skip

    ref = next((r for r in rows if r["sampler"] == "ddpm"), None)
    print(f"\n{'sampler':8s}{'steps':>6s}{'img/s':>9s}{'FID':>8s}{'vs DDPM':>9s}{'KID':>18s}")
    for r in rows:
        r["fid_ratio_vs_ddpm"] = r["fid"] / ref["fid"] if ref else None
        ratio = f"{r['fid_ratio_vs_ddpm']:.2f}" if ref else "-"
        print(f"{r['sampler']:8s}{r['steps']:6d}{r['images_per_second']:9.2f}{r['fid']:8.1f}"
              f"{ratio:>9s}{r['kid_mean']:11.4f}±{r['kid_std']:.4f}")  # fmt: skip
    if ref:
        for sampler in ("ddim", "dpm"):
            ok = [
                r["steps"] for r in rows if r["sampler"] == sampler and r["fid"] <= 1.1 * ref["fid"]
            ]
            print(f"{sampler}: fewest steps within 10% of DDPM-{ref['steps']}'s FID: "
                  f"{min(ok) if ok else 'none tried'}")  # fmt: skip
    meta = {"run": args.run, "dataset": args.dataset, "command": " ".join(sys.argv),
            "machine": platform.machine(), "cpus": os.cpu_count()}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
