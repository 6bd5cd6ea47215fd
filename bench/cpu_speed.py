"""The CPU training step, option by option (issue 26): img/s of ``diffscape.train.train_step`` for
the tiny preset (32 px, conditional) under each speed option, on this CPU and with the CPU
restricted to AVX2, on a quiet machine and beside a busy neighbour (a pure-Python loop on one core).

Every measurement runs in its own process (OpenMP reads its environment once, at start-up), the
variants of one repeat one after another and the repeats interleaved, so that machine noise hits
every variant alike; the table gives the median img/s, its min-max and the ratio to the baseline
(today's default) measured in the same conditions. ``start_s`` is the time from the process start
to the first timed step (imports, building, warm-up steps, compiling): what a 10-minute budget
pays before training; ``10-min images`` = (600 - start_s) x img/s.

    python bench/cpu_speed.py                                  # every variant, 3 repeats
    python bench/cpu_speed.py --variants base bf16 --kinds native --loads quiet --seconds 10

Writes bench/results/cpu-speed.json.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# name -> (environment, settings overrides, what it is)
VARIANTS: dict[str, tuple[dict[str, str], list[str], str]] = {
    "base": (PASSIVE, [], "today's default: fp32, NCHW, 2 threads waiting passively"),
    "bf16": (PASSIVE, ["train.precision=bf16"], "bf16 autocast"),
    "cl": (PASSIVE, ["train.channels_last=true"], "channels_last"),
    "bf16-cl": (PASSIVE, ["train.precision=bf16", "train.channels_last=true"], "bf16 + NHWC"),
    "spin": ({"GOMP_SPINCOUNT": "10000"}, [], "bounded spin (GOMP_SPINCOUNT=10000)"),
    "spin-bf16": ({"GOMP_SPINCOUNT": "10000"}, ["train.precision=bf16"], "spin + bf16"),
    "spin-bf16-cl": (
        {"GOMP_SPINCOUNT": "10000"},
        ["train.precision=bf16", "train.channels_last=true"],
        "spin + bf16 + NHWC",
    ),
    "spin100k-bf16": ({"GOMP_SPINCOUNT": "100000"}, ["train.precision=bf16"], "spin 100k + bf16"),
    "active-bf16": ({"OMP_WAIT_POLICY": "ACTIVE"}, ["train.precision=bf16"], "spin forever + bf16"),
    "t1": ({**PASSIVE, "OMP_NUM_THREADS": "1"}, [], "1 thread"),
    "t1-bf16": ({**PASSIVE, "OMP_NUM_THREADS": "1"}, ["train.precision=bf16"], "1 thread, bf16"),
    "t1-bf16-cl": (
        {**PASSIVE, "OMP_NUM_THREADS": "1"},
        ["train.precision=bf16", "train.channels_last=true"],
        "1 thread, bf16 + NHWC",
    ),
    "b32": (PASSIVE, ["train.batch_size=32"], "batch 32 (a different recipe)"),
    # the new defaults: libgomp's own bounded spin (no OMP_* set), precision auto (bf16 where
    # the CPU has it natively), threads by the load (train.threads=0, re-read every 5 s)
    "new": ({}, ["train.precision=auto", "train.threads=0"], "new default: spin, auto, adaptive"),
    "new-fixed": ({}, ["train.precision=auto"], "new default without adapting threads"),
    # one process per core, one thread each, the batch split between them (DDP over gloo):
    # launched by torchrun (PROCESSES below)
    "ddp2": ({"OMP_NUM_THREADS": "1"}, ["train.precision=auto"], "2 processes x 1 thread, auto"),
    "ddp2-cl": (
        {"OMP_NUM_THREADS": "1"},
        ["train.precision=auto", "train.channels_last=true"],
        "2 processes x 1 thread, auto, NHWC",
    ),
    # the memory allocator of the two processes (diffscape.core.allocator; train() preloads
    # tcmalloc in the processes it starts): preloaded where the system has the library
    "ddp2-tc": (
        {"OMP_NUM_THREADS": "1", "LD_PRELOAD": ctypes.util.find_library("tcmalloc_minimal") or ""},
        ["train.precision=auto"],
        "2 processes x 1 thread, auto, tcmalloc",
    ),
    # precision on a CPU whose bf16 is AVX512-BF16 without AMX (AMD Zen 4): is auto's bf16 a win?
    "ddp2-tc-fp32": (
        {"OMP_NUM_THREADS": "1", "LD_PRELOAD": ctypes.util.find_library("tcmalloc_minimal") or ""},
        ["train.precision=fp32"],
        "2 processes x 1 thread, fp32, tcmalloc",
    ),
    "ddp2-je": (
        {"OMP_NUM_THREADS": "1", "LD_PRELOAD": ctypes.util.find_library("jemalloc") or ""},
        ["train.precision=auto"],
        "2 processes x 1 thread, auto, jemalloc",
    ),
    "compile": (PASSIVE, ["train.compile=true"], "torch.compile (inductor)"),
    "compile-spin-bf16": (
        {"GOMP_SPINCOUNT": "10000"},
        ["train.compile=true", "train.precision=bf16"],
        "torch.compile + spin + bf16",
    ),
    "compile-bf16": (
        PASSIVE,
        ["train.compile=true", "train.precision=bf16"],
        "torch.compile + bf16",
    ),
}
# the ddp2 variants run as two processes (torchrun --standalone)
PROCESSES = {name: 2 for name in VARIANTS if name.startswith("ddp2")}


def _stop(flag: bool, world: int) -> bool:
    """Whether every process stops now (all must run the same steps: DDP syncs each step)."""
    if world == 1:
        return flag
    import torch

    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def child(overrides: list[str], seconds: float, warmup: int) -> dict:
    """Build the tiny step as train() does and time it for ``seconds`` after ``warmup`` steps."""
    t_proc = time.time()
    import numpy as np
    import torch

    from diffscape.checkpoint import TrainingState
    from diffscape.core.allocator import in_use
    from diffscape.data.source import make_source
    from diffscape.settings.presets import resolve
    from diffscape.train.setup import build_model, make_accelerator, step_parts
    from diffscape.train.step import train_step

    cfg = resolve("tiny", ["model.conditional=true", "model.num_classes=4", *overrides])
    acc = make_accelerator(cfg, cpu=True)
    model, ema, opt = build_model(cfg, acc)
    b, s = cfg.train.batch_size, cfg.model.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4096, 3, s, s), dtype=np.uint8)
    labels = rng.integers(0, 4, 4096)
    data, _ = make_source("off", images, labels, 0, b, acc.device)
    gen = torch.Generator().manual_seed(0)
    parts = step_parts(cfg, acc, model, ema, opt, gen)
    state = TrainingState(step=0)
    from diffscape.train.threads import CoreSharing

    adapt = "train.threads=0" in overrides  # only the variants that test it
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    cores = CoreSharing(0 if adapt else torch.get_num_threads(), acc.device, say)
    for _ in range(warmup):
        train_step(parts, state, data)
        cores.check()
    float(parts.model.conv_in.weight.sum())
    start_s = time.time() - float(os.environ["BENCH_T0"])  # since the parent started us
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0, steps, world = time.perf_counter(), 0, acc.num_processes
    while not _stop(time.perf_counter() - t0 >= seconds, world):
        train_step(parts, state, data)
        cores.check()
        steps += 1
    float(parts.model.conv_in.weight.sum())
    dt = time.perf_counter() - t0
    cpu = os.times()
    return {
        "images_per_second": steps * b / dt,
        "start_s": start_s,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "cpu_util": (cpu.user + cpu.system) / (time.time() - t_proc),  # cores kept busy
        # page faults of (this) one process per timed step: what the allocator changes
        "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
        "allocator": in_use(),
    }


def run_one(name: str, kind: str, seconds: float, warmup: int) -> dict:
    env_extra, overrides, _ = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env.update(env_extra, **(AVX2 if kind == "avx2" else {}))
    env["BENCH_T0"] = repr(time.time())
    cmd = [sys.executable, __file__, "--child", json.dumps([overrides, seconds, warmup])]
    if name in PROCESSES:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(PROCESSES[name])]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{name}/{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def neighbour(load: str) -> subprocess.Popen | None:
    """'busy': a pure-Python loop that keeps one core busy (another user's job)."""
    if load == "quiet":
        return None
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def cells(
    repeats: int, loads: list[str], kinds: list[str], variants: list[str]
) -> Iterator[tuple[int, str, str, str]]:
    """(repeat, load, kind, variant) in the interleaved order (the variants of a repeat one
    after another, so that machine noise hits them alike), a busy neighbour running through
    the cells of load 'busy'."""
    for rep in range(repeats):
        for load in loads:
            for kind in kinds:
                busy = neighbour(load)
                try:
                    for name in variants:
                        yield rep, load, kind, name
                finally:
                    if busy:
                        busy.kill()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if "compile" not in v])
    ap.add_argument("--kinds", nargs="+", default=["native", "avx2"], choices=["native", "avx2"])
    ap.add_argument("--loads", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per measurement")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cpu-speed.json")
    args = ap.parse_args()
    if args.child:
        r = child(*json.loads(args.child))
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(r))
        return
    rows: dict[tuple[str, str, str], list[dict]] = {}
    for rep, load, kind, name in cells(args.repeats, args.loads, args.kinds, args.variants):
        r = run_one(name, kind, args.seconds, args.warmup)
        rows.setdefault((name, kind, load), []).append(r)
        print(f"[{rep}] {load:5s} {kind:6s} {name:14s} "
              f"{r['images_per_second']:7.1f} img/s  start {r['start_s']:5.1f} s  "
              f"{r['faults_per_step']:6.0f} faults/step ({r['allocator']})",
              file=sys.stderr, flush=True)  # fmt: skip
    table = []
    for (name, kind, load), rs in rows.items():
        ips = [r["images_per_second"] for r in rs]
        base = statistics.median(r["images_per_second"] for r in rows[("base", kind, load)])
        start = statistics.median(r["start_s"] for r in rs)
        med = statistics.median(ips)
        table.append({
            "variant": name, "kind": kind, "load": load, "what": VARIANTS[name][2],
            "img_s": med, "min": min(ips), "max": max(ips), "x_base": med / base,
            "start_s": start, "images_10min": (600 - start) * med,
            "cpu_util": statistics.median(r["cpu_util"] for r in rs),
            "faults_per_step": statistics.median(r["faults_per_step"] for r in rs), "runs": rs,
        })  # fmt: skip
    print("| variant | CPU | load | img/s (min-max) | x base | start s | images in 10 min | "
          "page faults per step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(
        table, key=lambda r: (r["kind"], r["load"], list(VARIANTS).index(r["variant"]))
    ):
        print(f"| {r['variant']} | {r['kind']} | {r['load']} | {r['img_s']:.1f} "
              f"({r['min']:.1f}-{r['max']:.1f}) | {r['x_base']:.2f} | {r['start_s']:.1f} | "
              f"{r['images_10min']:,.0f} | {r['faults_per_step']:,.0f} |")  # fmt: skip
    write_results(args.out, table)


def write_results(out: Path, table: list[dict]) -> None:
    """The table as JSON with the CPU model (lscpu), core count and command line."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                  if ln.startswith("Model name")), platform.processor())  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "cpu": model, "nproc": os.cpu_count(), "argv": sys.argv, "rows": table,
    }, indent=1))  # fmt: skip
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
