"""The recipe study's tables (docs/real-photos.md): for groups of a sweep's runs (seeds of one
recipe), the median over seeds of the judge's accuracy, its weakest class, KID and FID, per
guidance; each seed's value in brackets. Reads what `diffscape sweep` wrote (train.json, and
each sampling's accuracy.json and metrics.json); prints Markdown, writes JSON.

    python bench/recipe_table.py runs/real-recipe --out /tmp/recipe.json \
        --group tiny=tiny,tiny-seed1 --group b16=tiny-b16,tiny-b16-seed1 --group eps=eps
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def group(text: str) -> tuple[str, list[str]]:
    name, _, runs = text.partition("=")
    if not name or not runs:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=RUN[,RUN...]")
    return name, runs.split(",")


def row(sweep: Path, name: str, runs: list[str], sampling: str) -> dict:
    each: dict[str, list] = {"steps": [], "acc": [], "min_class": [], "kid": [], "fid": []}
    for run in runs:
        s = sweep / run / "samples" / sampling
        acc = json.loads((s / "accuracy.json").read_text())
        met = json.loads((s / "metrics.json").read_text())
        each["steps"].append(json.loads((sweep / run / "train.json").read_text())["steps"])
        each["acc"].append(100 * acc["accuracy"])
        each["min_class"].append(min(100 * c["accuracy"] for c in acc["per_class"].values()))
        each["kid"].append(met["kid"]["mean"])
        each["fid"].append(met["fid"])
    return {"group": name, "runs": runs, "sampling": sampling, "each": each,
            "median": {k: statistics.median(v) for k, v in each.items()}}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    head = "| run | seeds | steps | judge acc | min class | KID (each seed) | KID median | FID median |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        e, m = r["each"], r["median"]
        lines.append(
            f"| {r['group']} | {len(r['runs'])} | {', '.join(f'{s:,}' for s in e['steps'])} "
            f"| {m['acc']:.1f}% ({', '.join(f'{a:.1f}' for a in e['acc'])}) "
            f"| {m['min_class']:.0f} ({', '.join(f'{a:.0f}' for a in e['min_class'])}) "
            f"| {', '.join(f'{k:.4f}' for k in e['kid'])} | {m['kid']:.4f} | {m['fid']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sweep", type=Path, help="the sweep's --out folder")
    p.add_argument("--group", type=group, action="append", required=True, help="NAME=RUN,RUN")
    p.add_argument("--sampling", action="append", help="default: dpm-20-w3 and dpm-20-w1")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    rows_all = []
    for sampling in args.sampling or ["dpm-20-w3", "dpm-20-w1"]:
        rows = [row(args.sweep, name, runs, sampling) for name, runs in args.group]
        print(f"\n{sampling}\n\n{markdown(rows)}")
        rows_all += rows
    args.out.write_text(json.dumps(rows_all, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
