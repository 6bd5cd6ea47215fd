"""Issue 26's throughput target as a user meets it: ``diffscape train DATA --preset tiny
--conditional --minutes M`` as the README writes it, today's defaults against the defaults the
issue was filed against (fp32, one process of two threads waiting passively), side by side:
``old`` runs the code the issue was filed against (``--old``: the ``src`` of a checkout of it,
e.g. ``git worktree add /tmp/old26 f2418de``; first on PYTHONPATH, this venv's libraries) with
its defaults; ``before`` runs today's code with those defaults set; ``now`` today's defaults
(tcmalloc in the training processes where the system has it), ``now-libc`` them with the C
library's malloc.

Each cell is one whole command in a fresh process and a fresh ``--out``: the figure is images
trained per second of the command's wall time (steps x batch / wall: start-up, the data path,
logging, checkpoints and the periodic sample grids included), the variants of one repeat one
after another and the repeats interleaved, so that machine noise hits every variant alike.

    python bench/cli_speed.py /work/data/intel32 --old /tmp/old26/src --minutes 2 --repeats 3
    python bench/cli_speed.py DATA --kinds native avx2 --loads quiet busy

Writes bench/results/cli-speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu_speed import cells, write_results  # bench/ is on the path when run as a script

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# name -> (environment, settings, what it is)
VARIANTS: dict[str, tuple[dict[str, str], list[str], str]] = {
    "old": ({}, [], "the code issue 26 was filed against (f2418de), its defaults"),
    "before": (
        {"OMP_WAIT_POLICY": "PASSIVE"},  # what the CLI set before issue 26
        ["train.precision=fp32", "train.processes=1", "train.threads=2"],
        "the defaults issue 26 was filed against: fp32, 1 process x 2 threads, passive waiting",
    ),
    "now": ({}, [], "today's defaults"),
    "now-libc": (
        {},
        ["train.allocator=system"],
        "today's defaults without tcmalloc (the C library's malloc)",
    ),
}


def run_one(name: str, kind: str, data: str, minutes: float, old: Path | None) -> dict:
    env_extra, settings, _ = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env.update(env_extra, **(AVX2 if kind == "avx2" else {}))
    env["PYTHONPATH"] = str(old if name == "old" else SRC)
    with tempfile.TemporaryDirectory(prefix="cli-speed-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "diffscape", "train", data, "--out", str(out), "--preset",
               "tiny", "--conditional", "--minutes", str(minutes), "--no-progress"]  # fmt: skip
        for s in settings:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if p.returncode:
            raise SystemExit(f"{name}/{kind} failed:\n{p.stderr[-3000:]}")
        last = json.loads((out / "metrics.jsonl").read_text().strip().splitlines()[-1])
        batch = json.loads((out / "config.json").read_text())["train"]["batch_size"]
        shutil.rmtree(out)
    return {
        "steps": last["step"],
        "images_per_second": last["step"] * batch / wall,
        "train_images_per_second": last["images_per_second"],
        "processes": last.get("processes", 1),
        "wall_s": wall,
        "train_s": last["seconds"],
        # what the processes that train() started were given (none said: one process, libc)
        "allocator": next(
            (
                x.split("memory allocator: ", 1)[1]
                for x in p.stderr.splitlines()
                if "memory allocator: " in x
            ),
            "the C library's malloc (one process)",
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", help="a prepared dataset folder (32 px)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--old", type=Path, help="src/ of a checkout of f2418de (variant old)")
    ap.add_argument("--kinds", nargs="+", default=["native"], choices=["native", "avx2"])
    ap.add_argument("--loads", nargs="+", default=["quiet"], choices=["quiet", "busy"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=2.0, help="each command's --minutes")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cli-speed.json")
    args = ap.parse_args()
    if "old" in args.variants and not args.old:
        ap.error("variant old needs --old SRC (or leave it out: --variants before now)")
    rows: dict[tuple[str, str, str], list[dict]] = {}
    for rep, load, kind, name in cells(args.repeats, args.loads, args.kinds, args.variants):
        r = run_one(name, kind, args.data, args.minutes, args.old)
        rows.setdefault((name, kind, load), []).append(r)
        print(f"[{rep}] {load:5s} {kind:6s} {name:6s} {r['steps']:6d} steps "
              f"{r['images_per_second']:6.1f} img/s of wall "
              f"({r['wall_s']:.0f} s, {r['processes']} processes)",
              file=sys.stderr, flush=True)  # fmt: skip
    table = []
    for (name, kind, load), rs in rows.items():
        ips = [r["images_per_second"] for r in rs]
        first = args.variants[0]
        base = [r["images_per_second"] for r in rows[(first, kind, load)]]
        table.append({
            "variant": name, "kind": kind, "load": load, "what": VARIANTS[name][2],
            "img_s": statistics.median(ips), "min": min(ips), "max": max(ips),
            "x_first": statistics.median(ips) / statistics.median(base),
            "x_first_per_repeat": [a / b for a, b in zip(ips, base, strict=True)],
            "runs": rs,
        })  # fmt: skip
    print(f"| variant | CPU | load | img/s of wall (min-max) | x {args.variants[0]} | per repeat |")
    print("|---|---|---|---|---|---|")
    for r in table:
        per = ", ".join(f"{x:.2f}" for x in r["x_first_per_repeat"])
        print(f"| {r['variant']} | {r['kind']} | {r['load']} | {r['img_s']:.1f} "
              f"({r['min']:.1f}-{r['max']:.1f}) | {r['x_first']:.2f} | {per} |")  # fmt: skip
    write_results(args.out, table)


if __name__ == "__main__":
    main()
