"""What tcmalloc gives the command's own process (diffscape.core.allocator): whole commands
after training (sampling, the CNN judge's training, evaluate), each in a fresh process, with
the command's default (tcmalloc where the system has it, the command restarting itself with it)
and with ``DIFFSCAPE_ALLOCATOR=system`` (the C library's malloc), the two alternating in every
repeat; wall seconds per command and their ratio, and whether the two samplings wrote the same
images byte for byte.

    python bench/cli_malloc.py RUN DATA --repeats 2

RUN: a trained conditional run of 32 px (e.g. a demo's ``run``); DATA: its dataset (a demo's
``data``). Writes bench/results/cli-malloc.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu_speed import write_results  # bench/ is on the path when run as a script

from diffscape.core import allocator

HERE = Path(__file__).resolve().parent
ALLOCATORS = {"tcmalloc": {}, "libc": {allocator.SWITCH: "system"}}


def commands(run: str, data: str, tmp: Path, tag: str) -> dict[str, list[str]]:
    samples = tmp / f"s-{tag}"
    return {
        "sample 200 (dpm 20, w=3)": ["sample", run, "--n", "40", "--per-class", "--sampler",
                                     "dpm", "--steps", "20", "--guidance", "3",
                                     "--guidance-interval", "0.28,2.9", "--out", str(samples), "--no-progress"],
        "judge train (cnn)": ["judge", "train", data, "--kind", "cnn", "--out", str(tmp / f"j-{tag}"), "--no-progress"],
        "evaluate 200 vs 200": ["evaluate", "--real", f"{data}:test", "--fake", str(samples),
                                "--n", "200", "--n-real", "200", "--no-memorisation",
                                "--out", str(tmp / f"e-{tag}" / "m.json")],
    }  # fmt: skip


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "diffscape", *argv]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cli-malloc.json")
    a = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.OWN)}
    seconds: dict[str, dict[str, list[float]]] = {}
    same = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.repeats):
            for name, extra in ALLOCATORS.items():
                tag = f"{name}-{r}"
                # a fresh feature cache: evaluate embeds both sides every time
                env = {**base, **extra, "XDG_CACHE_HOME": str(Path(d) / f"cache-{tag}")}
                for what, argv in commands(a.run, a.data, Path(d), tag).items():
                    s = timed(argv, env)
                    seconds.setdefault(what, {}).setdefault(name, []).append(s)
                    print(f"repeat {r + 1} {name:8s} {what:26s} {s:6.1f} s", flush=True)
            grids = [(Path(d) / f"s-{n}-{r}" / "grid.png").read_bytes() for n in ALLOCATORS]
            same.append(grids[0] == grids[1])
    table = []
    print("\n| command | tcmalloc s | libc s | libc / tcmalloc |\n|---|---|---|---|")
    for what, by in seconds.items():
        tc, lc = statistics.median(by["tcmalloc"]), statistics.median(by["libc"])
        ratios = [b / t for t, b in zip(by["tcmalloc"], by["libc"], strict=True)]
        table.append({"command": what, **by, "ratios": ratios})
        print(
            f"| {what} | {tc:.1f} | {lc:.1f} | {lc / tc:.2f} ({', '.join(f'{x:.2f}' for x in ratios)}) |"
        )
    table[0]["same_grid"] = same  # the sampling's row
    print(f"\nsample grids byte for byte the same under both: {same}")
    write_results(a.out, table)


if __name__ == "__main__":
    main()
