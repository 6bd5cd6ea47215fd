"""Two versions of diffscape, side by side: the same commands timed alternately (A B A B ...),
so that both see the same machine state, and the ratio per pair.

    python bench/versus.py --old /path/to/other/checkout/src --reps 3 --out bench/versus.json

``--old`` is the ``src`` folder of another checkout (e.g. ``git worktree add /tmp/old REV``);
it goes first on PYTHONPATH, so ``python -m diffscape`` runs that version with this venv's
libraries. The commands: ``sample --n 400`` (DPM-Solver++ 20 steps, per class) and a 200-step
``train --preset tiny`` on a procedural dataset, each from a fresh --out; wall time of the
whole command (start-up included: the same for both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE_SRC = Path(__file__).resolve().parents[1] / "src"


def cli(src: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffscape", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def commands(work: Path, tag: str, rep: int) -> dict[str, list[str]]:
    ds, run = work / "ds", work / "run"
    return {
        "sample --n 400": ["sample", str(run), "--n", "100", "--per-class", "--sampler", "dpm",
                           "--steps", "20", "--no-progress", "--out", str(work / f"s-{tag}-{rep}")],
        "train 200 steps": ["train", str(ds), "--preset", "tiny", "--conditional", "--steps", "200",
                            "--set", "train.sample_every_steps=0", "--no-progress",
                            "--out", str(work / f"r-{tag}-{rep}")],
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="src/ of the other version")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/versus.json"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diffscape-versus-"))
    try:
        cli(HERE_SRC, "data", "synth", "--n", "500", "--size", "32", "--out", str(work / "ds"))
        cli(HERE_SRC, "train", str(work / "ds"), "--preset", "tiny", "--conditional", "--steps",
            "20", "--no-progress", "--out", str(work / "run"))  # fmt: skip
        times: dict[str, dict[str, list[float]]] = {}
        for rep in range(a.reps):
            for tag, src in (("old", a.old), ("new", HERE_SRC), ) if rep % 2 == 0 else (
                    ("new", HERE_SRC), ("old", a.old)):  # fmt: skip
                for name, argv in commands(work, tag, rep).items():
                    seconds = cli(src, *argv)
                    times.setdefault(name, {}).setdefault(tag, []).append(seconds)
                    print(f"rep {rep} {tag:3} {name:16} {seconds:6.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, t in times.items():
        ratios = [n / o for n, o in zip(t["new"], t["old"], strict=True)]
        rows.append({"command": name, "old_s": t["old"], "new_s": t["new"],
                     "median_old_s": statistics.median(t["old"]),
                     "median_new_s": statistics.median(t["new"]),
                     "ratios_new_over_old": ratios, "median_ratio": statistics.median(ratios)})  # fmt: skip
    print(f"\n{'command':18} {'old (s)':>9} {'new (s)':>9} {'new/old':>8}  per pair")
    for r in rows:
        pairs = " ".join(f"{x:.3f}" for x in r["ratios_new_over_old"])
        print(f"{r['command']:18} {r['median_old_s']:9.1f} {r['median_new_s']:9.1f} "
              f"{r['median_ratio']:8.3f}  {pairs}")  # fmt: skip
    a.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                 "old": str(a.old), "reps": a.reps, "rows": rows}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
