"""Score one trained run the way docs/real-photos.md does: for each sampling variant, the
README's commands (`diffscape sample`, `diffscape judge score`, and `diffscape evaluate` where
asked), then one table (stdout) and one JSON file.

    python bench/real_photos.py --run runs/land32 --data data/intel32 --judge judges/intel32 \
        --out /tmp/real-scores --n 60 --variant dpm:20:1 --variant dpm:20:3:kid \
        --variant dpm:20:3@step-0000250

A variant is SAMPLER:STEPS:GUIDANCE, ":kid" adds FID/KID (Inception: minutes on a CPU), and
"@CHECKPOINT" samples that checkpoint (a name under RUN/checkpoints) instead of the latest.
FID/KID are against --n-real images of the training split (a seeded subset: the same one a
sweep's floor uses, so its features come from the cache); the real-vs-real floor is the sweep's
(`diffscape sweep ... --data DATA`: RUNS/_floor/floor.json) or `diffscape evaluate --real
DATA:train --fake DATA:test`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def variant(text: str) -> dict:
    spec, _, ckpt = text.partition("@")
    parts = spec.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "kid"):
        raise argparse.ArgumentTypeError(f"{text!r}: use SAMPLER:STEPS:GUIDANCE[:kid][@CKPT]")
    return {"sampler": parts[0], "steps": int(parts[1]), "guidance": float(parts[2]),
            "kid": len(parts) == 4, "checkpoint": ckpt or None}  # fmt: skip


def name_of(v: dict) -> str:
    at = f"@{v['checkpoint']}" if v["checkpoint"] else ""
    return f"{v['sampler']}-{v['steps']}-w{v['guidance']:g}{at}"


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def score(args: argparse.Namespace, v: dict) -> dict:
    out = Path(args.out) / name_of(v)
    src = Path(args.run) / "checkpoints" / v["checkpoint"] if v["checkpoint"] else Path(args.run)
    row: dict = {"variant": name_of(v), **v}
    if not (out / "accuracy.json").is_file():
        row["sample_seconds"] = run(
            ["diffscape", "sample", str(src), "--n", str(args.n), "--per-class", "--sampler",
             v["sampler"], "--steps", str(v["steps"]), "--guidance", str(v["guidance"]),
             "--out", str(out), "--overwrite", "--no-progress"]
        )  # fmt: skip
        run(["diffscape", "judge", "score", args.judge, str(out)])
    acc = json.loads((out / "accuracy.json").read_text())
    row["accuracy"] = acc.get("accuracy")
    row["per_class"] = {c: r.get("accuracy") for c, r in (acc.get("per_class") or {}).items()}
    if v["kid"]:
        if not (out / "metrics.json").is_file():
            row["evaluate_seconds"] = run(
                ["diffscape", "evaluate", "--real", f"{args.data}:train", "--fake", str(out),
                 "--n-real", str(args.n_real), "--no-per-class", "--out", str(out / "metrics.json")]
            )  # fmt: skip
        m = json.loads((out / "metrics.json").read_text())
        row.update(fid=m.get("fid"), kid=m.get("kid"), n_fake=m.get("n_fake"))
    return row


def table(rows: list[dict]) -> str:
    classes = sorted({c for r in rows for c in r["per_class"]})
    head = ["variant", "judge acc", *classes, "KID ± std", "FID"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kid = r.get("kid") or {}
        cells = [r["variant"], f"{100 * r['accuracy']:.1f}%"]
        cells += [f"{100 * r['per_class'].get(c, float('nan')):.0f}" for c in classes]
        cells += [f"{kid['mean']:.4f} ± {kid['std']:.4f}" if kid else "",
                  f"{r['fid']:.1f}" if r.get("fid") else ""]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="training run folder")
    p.add_argument(
        "--data", required=True, help="prepared dataset (its train split is the real side)"
    )
    p.add_argument("--judge", required=True, help="judge folder (diffscape judge train)")
    p.add_argument("--out", required=True, help="folder for the samples and results.json")
    p.add_argument("--n", type=int, default=60, help="images per class")
    p.add_argument("--n-real", type=int, default=600, help="real training images for FID/KID")
    p.add_argument("--variant", type=variant, action="append", required=True)
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    for v in args.variant:
        rows.append(score(args, v))
        (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
