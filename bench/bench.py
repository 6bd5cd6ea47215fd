"""One command, one table: how fast diffscape trains, samples and evaluates on this machine, and
how close that is to the machine's convolution ceiling, measured side by side.

    python bench/bench.py                              # everything, 3 interleaved repeats
    python bench/bench.py --threads 1                  # one torch thread (shared, loaded CPUs)
    python bench/bench.py --parts conv,study --repeats 5
    python bench/bench.py --parts quality              # loss curves: fp32 vs the fast settings
    python bench/bench.py --device cuda --repeats 1    # bench/gpu.sh

Parts (``--parts``, comma-separated; default conv,train,sample,eval,study):
  conv     the ceiling: 3x3 conv 128->128 ch, 32x32, batch 64, fwd+bwd; fp32/bf16 x NCHW/NHWC
  train    each preset at its size: img/s, GFLOP/s, % of ceiling, peak RSS; fp32 vs fast
  sample   each preset: ddpm (its T steps, extrapolated from the per-step cost), ddim 50, dpm 20;
           unguided (batch B) and guided (cond + uncond in one 2B forward)
  eval     Inception (FID network) feature extraction img/s
  study    the `small` preset: each optimisation against a straightforward baseline
  e2e      the real train() (Accelerate loop) with the old and the new `small` settings
  quality  loss curves of train(): fp32 seed 0, fp32 seed 1 (the noise), fast seed 0

Training rows (``--train-rows``): "fp32 baseline" and "fast" (default), "eager" (the training
step before issue 17: memmap batches gathered on the host, the guard's host sync every step, fused
AdamW) and "new step" (the split on the device, the guard decided there: no host sync).

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode over one fwd+bwd (train) or one
forward (sampling) of the real network on the measuring device, never estimated (the CPU
flash-attention op is not counted: < 1% of these UNets' FLOPs). Every measurement runs in its
own subprocess (clean peak RSS, no shared allocator or compile cache; --in-process: not);
repeats are interleaved so that machine noise hits every variant alike; tables show the median
over repeats, min-max, ratios against the reference row of the same run, and the 1-minute load
average seen by the runs. Besides wall-clock img/s the study reports img per CPU-second ("cpu
img/s"), which other processes disturb much less.
Writes bench/results/bench.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESETS = ("tiny", "small", "base", "base64")
BIG = ("base", "base64")  # GPU-sized presets: a small batch and few steps on a CPU
CLASSES = 5  # the benched networks are conditional, as with labelled data
GUIDED = 3.0  # guidance weight of the guided sampling rows (any w not in {0, 1} batches 2x)
FULL_STEPS = {"ddim": 50, "dpm": 20}  # ddpm runs its T steps (diffusion.timesteps)

# Training settings, each row timing diffscape.train.step.train_step (the step train() runs) with
# the preset's loss, LR and EMA settings. BASELINE is the straightforward loop: fp32, NCHW, torch's
# default (for-loop) AdamW, EMA by a loop over parameters, a host sync every step, diffusers'
# attention processor, no compile. FAST is what train() does with precision=bf16 and
# channels_last=true (the `small` preset after this study): fused AdamW, foreach EMA, the guard
# decided on the device and the data where train.data_on_device=auto puts it, as in train().
BASELINE = {
    "precision": "fp32",
    "channels_last": False,
    "optimizer": "loop",  # loop | foreach | fused | auto (as train(): fused)
    "ema": "loop",  # loop | foreach | off
    # the NaN guard: True = read on the host before the update (a sync per step); False = decided
    # on the device (fused AdamW's found_inf), or no guard for an optimizer that cannot do that
    "sync": True,
    # memmap: a memory-mapped split + flips; memory: one batch in RAM, no flips; device: the
    # split on the device + flips (train.data_on_device=on); auto: device on CUDA, else memmap
    "data": "memmap",
    "attention": "diffusers",  # diffusers | fp32 (model.CpuAutocastFp32Attention)
    "compile": False,
}
FAST = {
    **BASELINE,
    "precision": "bf16",
    "channels_last": True,
    "optimizer": "auto",
    "ema": "foreach",
    "sync": False,
    "data": "auto",
    "attention": "fp32",
}
# Issue 17: the training step before (batches gathered on the host from the memmap and copied, the
# guard's host sync every step; fused AdamW, as train() used on CUDA already) and after.
EAGER = {**BASELINE, "optimizer": "fused", "ema": "foreach"}
NEW_STEP = {**EAGER, "data": "device", "sync": False}
TRAIN_ROWS = {"fp32 baseline": BASELINE, "fast": FAST, "eager": EAGER, "new step": NEW_STEP}
STUDY = [  # (row name, settings); the first row is the reference of the ratios
    ("baseline (fp32, NCHW, loop AdamW/EMA, sync)", BASELINE),
    ("train.py before (foreach AdamW + EMA)", {**BASELINE, "optimizer": "foreach", "ema": "foreach"}),
    ("+ channels_last", {**BASELINE, "channels_last": True}),
    ("+ bf16 autocast", {**BASELINE, "precision": "bf16"}),
    ("+ bf16, fp32 attention", {**BASELINE, "precision": "bf16", "attention": "fp32"}),
    ("+ bf16 + channels_last, fp32 attention",
     {**BASELINE, "precision": "bf16", "channels_last": True, "attention": "fp32"}),
    ("+ foreach AdamW", {**BASELINE, "optimizer": "foreach"}),
    ("+ fused AdamW", {**BASELINE, "optimizer": "fused"}),
    ("+ foreach EMA (_foreach_lerp_)", {**BASELINE, "ema": "foreach"}),
    ("  no EMA (its cost)", {**BASELINE, "ema": "off"}),
    ("  no host sync (its cost)", {**BASELINE, "sync": False}),
    ("  data in memory (memmap+flip cost)", {**BASELINE, "data": "memory"}),
    ("fast: bf16 + NHWC, as train.py does it", FAST),
    ("fast + torch.compile", {**FAST, "compile": True}),
    ("eager step: memmap, host sync, fused AdamW", EAGER),
    ("+ data on device", {**EAGER, "data": "device"}),
    ("+ sync-free guard", {**EAGER, "sync": False}),
    ("new step: data on device + sync-free guard", NEW_STEP),
]  # fmt: skip


# ---- measurements, each run in a child process --------------------------------------------------


def _cfg(preset: str, *extra: str):  # noqa: ANN202 - RunConfig, imported lazily
    from diffscape.settings.presets import resolve

    return resolve(preset, ["model.conditional=true", f"model.num_classes={CLASSES}", *extra])


def _sync_fn(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _windows(
    fn: Callable[[], object], windows: int, calls: int, images: int, sync: Callable[[], None]
) -> dict:
    """Time ``windows`` windows of ``calls`` calls; img/s (wall) and img per CPU-second each."""
    wall, cpu = [], []
    for _ in range(windows):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        sync()
        wall.append(calls * images / (time.perf_counter() - t0))
        cpu.append(calls * images / max(time.process_time() - c0, 1e-9))
    return {"ips": statistics.median(wall), "cpu_ips": statistics.median(cpu), "windows": wall}


def child_flops(spec: dict) -> dict:
    """FLOPs per image of one training step (fwd+bwd) and of one forward, counted."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from diffscape.model.unet import build_unet, count_parameters

    cfg, dev = _cfg(spec["preset"]), spec["device"]
    b, s = 2, cfg.model.image_size
    torch.manual_seed(0)
    unet = build_unet(cfg.model).to(dev)
    x, t, y = torch.randn(b, 3, s, s), torch.randint(0, 1000, (b,)), torch.arange(b) % CLASSES
    x, t, y = x.to(dev), t.to(dev), y.to(dev)
    with FlopCounterMode(display=False) as fc:
        F.mse_loss(unet(x, t, class_labels=y).sample, x).backward()
    with torch.no_grad(), FlopCounterMode(display=False) as fc_fwd:
        unet(x, t, class_labels=y)
    return {
        "train_flops_per_image": fc.get_total_flops() / b,
        "forward_flops_per_image": fc_fwd.get_total_flops() / b,
        "parameters": count_parameters(unet),
    }


def child_conv(spec: dict) -> dict:
    """The conv ceiling: all four variants in one process, interleaved, best-of and median."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dev, sync = spec["device"], _sync_fn(spec["device"])
    b, c, s = spec.get("batch", 64), 128, 32
    variants = {}
    for dtype in ("fp32", "bf16"):
        for cl in (False, True):
            torch.manual_seed(0)
            dt = torch.bfloat16 if dtype == "bf16" else torch.float32
            conv = torch.nn.Conv2d(c, c, 3, padding=1).to(dev, dt)
            x = torch.randn(b, c, s, s, device=dev, dtype=dt)
            if cl:
                conv = conv.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            g = torch.ones(b, c, s, s, device=dev, dtype=dt)

            def run(conv=conv, x=x, g=g) -> None:
                conv(x).backward(g)

            variants[f"{dtype} {'NHWC' if cl else 'NCHW'}"] = run
    with FlopCounterMode(display=False) as fc:
        next(iter(variants.values()))()
    flops = fc.get_total_flops()
    for run in variants.values():
        run()
    rates: dict[str, list[float]] = {k: [] for k in variants}
    calls = spec.get("calls", 2)  # a GPU needs more calls per timing than a CPU
    for _ in range(spec.get("rounds", 7)):
        for k, run in variants.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                run()
            sync()
            rates[k].append(calls * flops / (time.perf_counter() - t0) / 1e9)
    return {
        "batch": b,
        "flops_per_call": flops,
        "gflops": {k: statistics.median(v) for k, v in rates.items()},
        "gflops_max": {k: max(v) for k, v in rates.items()},
        "gflops_min": {k: min(v) for k, v in rates.items()},
    }


def _memmap_data(n: int, size: int, folder: str):  # noqa: ANN202
    """A uint8 (N, 3, H, W) array on disk, memory-mapped read-only like a prepared split."""
    import numpy as np

    path = os.path.join(folder, "train.npy")
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    arr[:] = np.random.default_rng(0).integers(0, 256, arr.shape, dtype=np.uint8)
    arr.flush()
    del arr
    labels = np.arange(n, dtype=np.int64) % CLASSES
    return np.load(path, mmap_mode="r"), labels


def child_train(spec: dict) -> dict:
    """The training's own step (``diffscape.train.step.train_step``), with each optimisation
    switchable: the settings that are config fields go through the config, the rest through
    StepParts."""
    import torch

    from diffscape.checkpoint import TrainingState
    from diffscape.data.source import DeviceSource, HostSource
    from diffscape.model.unet import set_attention_processor
    from diffscape.train.setup import build_model, make_accelerator, step_parts
    from diffscape.train.step import ema_decay_at, skips_on_device, train_step

    dev, sync, b = spec["device"], _sync_fn(spec["device"]), spec["batch"]
    data_kind = (
        spec["data"] if spec["data"] != "auto" else ("device" if dev == "cuda" else "memmap")
    )
    on = {True: "true", False: "false"}
    cfg = _cfg(spec["preset"], f"train.batch_size={b}", f"train.precision={spec['precision']}",
               f"train.channels_last={on[spec['channels_last']]}",
               f"train.compile={on[spec['compile']]}",
               f"train.hflip={on[data_kind != 'memory']}")  # fmt: skip
    accelerator = make_accelerator(cfg, cpu=dev == "cpu")
    model, ema, _ = build_model(cfg, accelerator)
    if spec["attention"] == "diffusers":
        set_attention_processor(model)  # diffusers' processor, bf16 attention under autocast
    kw = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True},
          "auto": {"fused": True}}  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, **kw[spec["optimizer"]])
    tmp = tempfile.TemporaryDirectory()
    images, labels = _memmap_data(max(1024, 4 * b), cfg.model.image_size, tmp.name)
    if data_kind == "device":  # the split on the device, as train.data_on_device=on
        data = DeviceSource(images, labels, 0, b, accelerator.device)
    elif data_kind == "memory":  # one batch's worth, in memory, no flips
        data = HostSource(images[:b].copy(), labels[:b].copy(), 0, b)
    else:
        data = HostSource(images, labels, 0, b)
    gen = torch.Generator(device=data.device).manual_seed(0)
    parts = step_parts(cfg, accelerator, model, ema if spec["ema"] == "foreach" else None, opt, gen)
    # the guard: read on the host before the update, or decided on the device (no guard for an
    # optimizer that cannot skip there: the row then measures the sync's cost)
    parts.guard = "host" if spec["sync"] else ("device" if skips_on_device(opt) else "off")
    ema.to(accelerator.device)
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    state = TrainingState(step=0)

    def step() -> None:
        train_step(parts, state, data)
        if spec["ema"] == "loop":  # the baseline: one lerp per parameter
            decay = ema_decay_at(state.step - 1, cfg.train.ema_decay, cfg.train.ema_warmup)
            with torch.no_grad():
                for e, p in zip(e_params, m_params, strict=True):
                    e.lerp_(p, 1.0 - decay)

    sync()
    t0 = time.perf_counter()
    step()
    sync()
    first_step_seconds = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        step()
    n_steps0, t_loop = state.step, time.perf_counter()
    out = _windows(step, spec["windows"], spec["steps"], b, sync)
    step_ms = 1e3 * (time.perf_counter() - t_loop) / (state.step - n_steps0)
    out["data_ms_per_step"] = _data_ms(data, cfg.train.hflip, spec["steps"], sync)
    out["data_fraction"] = out["data_ms_per_step"] / step_ms
    out["first_step_seconds"] = first_step_seconds
    out["data"], out["guard"] = data_kind, parts.guard
    tmp.cleanup()
    return out


def _data_ms(data, flip: bool, steps: int, sync: Callable[[], None]) -> float:  # noqa: ANN001
    """Milliseconds per step of the step's data part (batch indices, gather, flips), timed on
    its own over as many batches as the timed windows."""
    import torch

    from diffscape.train import random_flip

    gen = torch.Generator(device=data.device).manual_seed(1)
    sync()
    t0 = time.perf_counter()
    for k in range(steps):
        x0, _ = data.batch(k)
        if flip:
            random_flip(x0, gen)
    sync()
    return 1e3 * (time.perf_counter() - t0) / steps


def child_sample(spec: dict) -> dict:
    """Seconds per sampler step of sample.denoise (its real loop) at one batch and guidance."""
    import torch

    from diffscape.model.unet import build_unet
    from diffscape.sample import generate as sample

    dev, sync = spec["device"], _sync_fn(spec["device"])
    cfg = _cfg(spec["preset"])
    b, s, k = spec["batch"], cfg.model.image_size, spec["steps"]
    torch.manual_seed(0)
    unet = build_unet(cfg.model).to(dev).eval()
    if spec.get("channels_last"):
        unet = unet.to(memory_format=torch.channels_last)
    if spec.get("guidance_batching") == "separate":

        def two_forwards(unet, x, t, labels, null, guidance):  # noqa: ANN001, ANN202
            tt = t.expand(x.shape[0]).to(x.device)
            cond = unet(x, tt, class_labels=labels).sample
            uncond = unet(x, tt, class_labels=torch.full_like(labels, null)).sample
            return sample.diffusion.guide(cond, uncond, guidance)

        sample.model_output = two_forwards  # this child process only
    denoise = sample.denoise
    if spec.get("mode") == "no_grad":
        denoise = torch.no_grad()(sample.denoise.__wrapped__)
    elif spec.get("mode") == "grad":
        denoise = sample.denoise.__wrapped__
    noise = torch.randn(b, 3, s, s)
    labels = torch.arange(b) % CLASSES
    gens = [torch.Generator().manual_seed(i) for i in range(b)]
    # DDPM always runs its T steps: time it on a T=k copy of the schedule (same work per step).
    short = cfg.with_changes(diffusion={"timesteps": k, "rescale_linear": False})
    runs = {
        "ddpm": lambda: denoise(unet, short, noise, labels, gens, sampler="ddpm", guidance=spec["guidance"]),
        "ddim": lambda: denoise(unet, cfg, noise, labels, gens, sampler="ddim", steps=k, guidance=spec["guidance"]),
        "dpm": lambda: denoise(unet, cfg, noise, labels, gens, sampler="dpm", steps=k, guidance=spec["guidance"]),
    }  # fmt: skip
    runs = {name: run for name, run in runs.items() if name in spec.get("samplers", runs)}
    amp = spec.get("precision") == "bf16"
    with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=amp):
        for run in runs.values():
            run()
        per_step: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(spec["windows"]):
            for name, run in runs.items():
                sync()
                t0 = time.perf_counter()
                run()
                sync()
                per_step[name].append((time.perf_counter() - t0) / k)
    full = {"ddpm": cfg.diffusion.timesteps, **FULL_STEPS}
    return {
        name: {
            "seconds_per_step": statistics.median(v),
            "full_steps": full[name],
            "ips": b / (statistics.median(v) * full[name]),
        }
        for name, v in per_step.items()
    }


def child_eval(spec: dict) -> dict:
    """The FID Inception network on uint8 images of the dataset's size (resized to 299)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diffscape.metrics.features import InceptionExtractor
    from diffscape.metrics.weights import resolve_inception_weights

    ext = InceptionExtractor(resolve_inception_weights(None), spec["device"])
    b = spec["batch"]
    images = torch.randint(0, 256, (b, 3, spec["size"], spec["size"]), dtype=torch.uint8)
    with FlopCounterMode(display=False) as fc:
        ext(images[:1])
    ext(images)
    out = _windows(lambda: ext(images), spec["windows"], 1, b, _sync_fn(spec["device"]))
    out["flops_per_image"] = fc.get_total_flops()
    return out


def child_e2e(spec: dict) -> dict:
    """The real train() (Accelerate, checkpoint at the end) on a synthetic dataset."""
    from diffscape.train import train

    cfg = _cfg("small", *spec["overrides"])
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(cfg, spec["dataset"], run, progress=False, cpu=spec["device"] == "cpu")
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [x for x in lines if not x.get("skipped")]
    speeds = [x["images_per_second"] for x in logs[1:]]  # the first window holds warm-up
    return {
        "ips": statistics.median(speeds) if speeds else float("nan"),
        "windows": speeds,
        "losses": [x["loss"] for x in logs],
        "steps": [x["step"] for x in logs],
    }


CHILDREN = {
    "flops": child_flops,
    "conv": child_conv,
    "train": child_train,
    "sample": child_sample,
    "eval": child_eval,
    "e2e": child_e2e,
}


def measure(spec: dict) -> dict:
    """One measurement and what every record carries: GPU peak memory, load before/after, threads."""
    import torch

    load0 = _loadavg()
    out = CHILDREN[spec["kind"]](spec)
    if spec["device"] == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["load"] = [load0, _loadavg()]
    out["threads"] = torch.get_num_threads()
    return out


def child_main(spec: dict) -> None:
    import resource

    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    out = measure(spec)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCH " + json.dumps(out))


# ---- the parent: plan, run interleaved, tabulate -------------------------------------------------


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def run_in_process(spec: dict) -> dict:
    """One measurement in this process (``--in-process``): no start-up cost per measurement
    (17-20 s each on the H100 machine, where it made bench/gpu.sh overrun its budget), at the price
    of a shared allocator. GPU peak memory is reset per measurement; host RSS is not measurable
    per measurement, so it is left out. Never used for rows that patch modules (guidance as two
    forwards): they need their own process."""
    import gc

    import torch

    if spec["device"] == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        out = measure(spec)
    except Exception as e:  # noqa: BLE001 - reported in the table, the bench goes on
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        if spec.get("compile"):
            torch._dynamo.reset()
        gc.collect()
    return json.loads(json.dumps(out))  # the same types as a child's JSON line


def run_child(spec: dict, threads: int, in_process: bool = False) -> dict:
    if in_process and spec.get("guidance_batching") != "separate" and not threads:
        return run_in_process(spec)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    spec = {**spec, "threads": threads}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][6:])


def _med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def machine() -> dict:
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info = {
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def plan(args: argparse.Namespace) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(jobs run once, jobs repeated) as (key, spec) pairs."""
    dev, cpu = args.device, args.device == "cpu"
    once: list[tuple[str, dict]] = []
    rep: list[tuple[str, dict]] = []
    parts = set(args.parts.split(","))
    used = set(args.presets) if parts & {"train", "sample"} else set()
    used |= {args.study_preset} if "study" in parts else set()
    for p in sorted(used, key=lambda p: (PRESETS + (p,)).index(p)):
        once.append((f"flops/{p}", {"kind": "flops", "preset": p, "device": dev}))
    if "conv" in parts:
        # batch 64 fills two CPU cores; a GPU needs a bigger batch and more calls per timing
        size = {"batch": 64, "calls": 2} if cpu else {"batch": 256, "calls": 20}
        size["batch"] = args.conv_batch or size["batch"]
        rep.append(("conv", {"kind": "conv", "device": dev, "rounds": args.conv_rounds, **size}))
    for p in args.presets if "train" in parts else ():
        big = p in BIG and cpu
        batch = args.big_batch if big else _cfg(p).train.batch_size
        sizes = {"batch": batch, "steps": 1 if big else args.steps, "windows": 2 if big else 3}
        sizes["warmup"] = 1 if big else 2
        for name in _train_rows(args):
            spec = {"kind": "train", "preset": p, "device": dev, **TRAIN_ROWS[name], **sizes}
            rep.append((f"train/{p}/{name}", spec))
    for p in args.presets if "sample" in parts else ():
        big = p in BIG and cpu
        for w in (1.0, GUIDED):
            spec = {"kind": "sample", "preset": p, "device": dev, "guidance": w,
                    "batch": args.big_batch if big else args.sample_batch,
                    "steps": args.sample_steps, "windows": 2 if big else 3}  # fmt: skip
            rep.append((f"sample/{p}/w={w:g}", spec))
    if "eval" in parts:
        spec = {"kind": "eval", "device": dev, "batch": args.eval_batch, "size": 32, "windows": 3}
        rep.append(("eval", spec))
    if "study" in parts:
        p = args.study_preset
        sizes = {"batch": _cfg(p).train.batch_size, "steps": args.steps, "windows": 3, "warmup": 2}
        keep = [r.strip().lower() for r in args.study_rows.split(",") if r.strip()]

        def wanted(name: str) -> bool:
            return not keep or any(k in name.lower() for k in keep)

        for name, settings in STUDY:
            spec = {"kind": "train", "preset": p, "device": dev, **settings, **sizes}
            if wanted(name):
                (once if settings["compile"] else rep).append((f"study/{name}", spec))
        if args.other_threads:
            for name, settings in (("baseline", BASELINE), ("fast", FAST)):
                spec = {"kind": "train", "preset": p, "device": dev, **settings, **sizes,
                        "threads_override": args.other_threads}  # fmt: skip
                rep.append((f"study/{name} @ {args.other_threads} threads", spec))
        base = {"kind": "sample", "preset": p, "device": dev, "guidance": GUIDED,
                "batch": args.sample_batch, "steps": args.sample_steps, "windows": 3,
                "samplers": ["ddim"]}  # fmt: skip
        for name, extra in (
            ("sample: inference_mode, batched guidance", {}),
            ("sample: no_grad", {"mode": "no_grad"}),
            ("sample: grad enabled", {"mode": "grad"}),
            ("sample: guidance as two forwards", {"guidance_batching": "separate"}),
            ("sample: channels_last", {"channels_last": True}),
            ("sample: bf16 autocast + channels_last", {"precision": "bf16", "channels_last": True}),
        ):
            if wanted(name):
                rep.append((f"study/{name}", {**base, **extra}))
    if parts & {"e2e", "quality"}:
        ds = _synth_dataset(args)
        common = ["train.log_every_steps=5", "train.sample_every_steps=0", "train.warmup_steps=10"]
        old = [*common, "train.precision=fp32", "train.channels_last=false"]
        new = [*common, "train.precision=bf16", "train.channels_last=true"]
        if "e2e" in parts:
            for name, ov in (("small, fp32 (old preset)", old), ("small, new preset", new)):
                spec = {"kind": "e2e", "device": dev, "dataset": ds,
                        "overrides": [*ov, f"train.steps={args.e2e_steps}"]}  # fmt: skip
                rep.append((f"e2e/{name}", spec))
        if "quality" in parts:
            q = [f"train.steps={args.quality_steps}", "train.log_every_steps=10"]
            for name, ov in (("fp32 seed 0", old), ("fp32 seed 1", [*old, "train.seed=1"]),
                             ("fast seed 0", new)):  # fmt: skip
                once.append((f"quality/{name}", {"kind": "e2e", "device": dev, "dataset": ds,
                                                 "overrides": [*ov, *q]}))  # fmt: skip
    return once, rep


def _train_rows(args: argparse.Namespace) -> list[str]:
    """The training rows asked for (``--train-rows``); the first is the reference of the ratios."""
    names = [r.strip() for r in getattr(args, "train_rows", "fp32 baseline,fast").split(",")]
    unknown = [n for n in names if n not in TRAIN_ROWS]
    if unknown:
        raise SystemExit(f"--train-rows: unknown {unknown}; known: {', '.join(TRAIN_ROWS)}")
    return names


def _synth_dataset(args: argparse.Namespace) -> str:
    from diffscape.data.synth import synthesize

    out = Path(args.data_dir)
    if not (out / "manifest.json").is_file():
        synthesize(n=1000, size=32, out=out, seed=0, test_fraction=0.2)
    return str(out)


def run_all(args: argparse.Namespace) -> dict[str, list[dict]]:
    once, rep = plan(args)
    results: dict[str, list[dict]] = {}

    start = time.perf_counter()

    def go(key: str, spec: dict) -> None:
        if args.budget and time.perf_counter() - start > args.budget:
            print(f"  {key:60s} skipped: --budget {args.budget:g} s spent", file=sys.stderr)
            return
        threads = spec.pop("threads_override", args.threads)
        t0 = time.perf_counter()
        rec = run_child(spec, threads, args.in_process)
        rec["seconds"] = time.perf_counter() - t0
        results.setdefault(key, []).append(rec)
        # every measurement on disk as it comes, so that nothing measured is lost if the run is
        # cut short: `--retabulate OUT.partial.json` prints the table from it
        partial = Path(args.out).with_suffix(".partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"args": vars(args), "raw": results}, default=str) + "\n")
        what = rec.get("error", "").splitlines()[-1:] if "error" in rec else ""
        speed = rec.get("ips", "")
        speed = f"{speed:.2f} img/s" if isinstance(speed, float) else ""
        print(f"  {key:60s} {rec['seconds']:6.1f} s  load {_loadavg():4.1f} {speed} {what}",
              file=sys.stderr, flush=True)  # fmt: skip

    for key, spec in once:
        if not key.startswith("study/"):
            go(key, dict(spec))
    for r in range(args.repeats):
        print(f"repeat {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for key, spec in rep:
            go(key, dict(spec))
    for key, spec in once:  # torch.compile: once, after the repeats (minutes of compiling)
        if key.startswith("study/") and args.compile:
            go(key, dict(spec))
    return results


# ---- tables ---------------------------------------------------------------------------------------


def _agg(recs: list[dict], field: str = "ips") -> tuple[float, float, float]:
    xs = [r[field] for r in recs if field in r and not math.isnan(r[field])]
    if not xs:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(xs), min(xs), max(xs)


def _loads(recs: list[dict]) -> list[float]:
    return [x for r in recs for x in r.get("load", [])]


def tabulate(results: dict[str, list[dict]], args: argparse.Namespace) -> tuple[str, dict]:
    lines: list[str] = []
    summary: dict = {}
    say = lines.append
    flops = {k.split("/", 1)[1]: v[0] for k, v in results.items() if k.startswith("flops/")}
    ceiling = {}
    if "conv" in results:
        recs = [r for r in results["conv"] if "gflops" in r]
        batch = recs[0].get("batch", 64) if recs else 64
        say(f"Conv ceiling: 3x3 conv 128->128 ch, 32x32, batch {batch}, fwd+bwd (GFLOP/s)")
        say(f"{'variant':12s}{'median':>9s}{'min-max':>15s}{'vs fp32 NCHW':>14s}")
        ref = _med([r["gflops"]["fp32 NCHW"] for r in recs])
        for k in recs[0]["gflops"] if recs else ():
            vals = [r["gflops"][k] for r in recs]
            ceiling[k] = _med(vals)
            say(
                f"{k:12s}{ceiling[k]:9.1f}{min(vals):7.1f}-{max(vals):<7.1f}{ceiling[k] / ref:10.2f}x"
            )
        say("")
    summary["ceiling_gflops"] = ceiling
    top = ceiling.get("bf16 NHWC", float("nan"))

    def own_ceiling(settings: dict) -> float:
        dt = "bf16" if settings.get("precision") == "bf16" else "fp32"
        return ceiling.get(f"{dt} {'NHWC' if settings.get('channels_last') else 'NCHW'}", math.nan)

    train_rows = [k for k in results if k.startswith("train/")]
    if train_rows:
        say("Training (train.py's step: data, flips, AdamW, EMA, NaN guard; rows: --train-rows)")
        say(f"{'preset':8s}{'settings':15s}{'batch':>6s}{'img/s':>8s}{'min-max':>14s}{'x':>6s}"
            f"{'GFLOP/s':>9s}{'%own':>6s}{'%bf16':>6s}{_mem_label(args):>9s}")  # fmt: skip
        for key in train_rows:
            _, p, name = key.split("/")
            recs = [r for r in results[key] if "ips" in r]
            med, lo, hi = _agg(recs)
            first = f"train/{p}/{_train_rows(args)[0]}"
            ref = _agg([r for r in results.get(first, []) if "ips" in r])[0]
            gf = med * flops.get(p, {}).get("train_flops_per_image", math.nan) / 1e9
            spec_settings = TRAIN_ROWS.get(name, BASELINE)
            rss = _mem(recs)
            say(f"{p:8s}{name:15s}{_batch(key, args):6d}"
                f"{med:8.2f}{lo:7.2f}-{hi:<6.2f}{med / ref:6.2f}{gf:9.1f}"
                f"{100 * gf / own_ceiling(spec_settings):6.0f}{100 * gf / top:6.0f}{rss:9.0f}")  # fmt: skip
            summary.setdefault("train", {})[f"{p}/{name}"] = {
                "ips": med, "min": lo, "max": hi, "ratio": med / ref, "gflops": gf,
                "pct_bf16_ceiling": 100 * gf / top, "peak_rss_mib": rss}  # fmt: skip
        say("")
    sample_rows = [k for k in results if k.startswith("sample/")]
    if sample_rows:
        say(
            "Sampling (sample.denoise, fp32, inference_mode; ddpm at T=1000 from its per-step cost)"
        )
        say(f"{'preset':8s}{'guidance':>9s}{'batch':>6s}{'s/step':>8s}"
            f"{'ddpm img/s':>11s}{'ddim50':>8s}{'dpm20':>8s}{'GFLOP/s':>9s}{'%fp32':>6s}"
            f"{_mem_label(args)[:-4]:>6s}")  # fmt: skip
        for key in sample_rows:
            _, p, w = key.split("/")
            recs = [r for r in results[key] if "ddim" in r]
            if not recs:
                say(f"{p:8s}{w:>9s}  failed: {results[key][0].get('error', '')[-200:]}")
                continue
            sps = _med([r["ddim"]["seconds_per_step"] for r in recs])
            ips = {s: _med([r[s]["ips"] for r in recs]) for s in ("ddpm", "ddim", "dpm")}
            batch = _batch(key, args)
            fwd = flops.get(p, {}).get("forward_flops_per_image", math.nan)
            forwards = 2 if w != "w=1" else 1
            gf = batch * forwards * fwd / sps / 1e9
            rss = _mem(recs)
            say(f"{p:8s}{w:>9s}{batch:6d}{sps:8.3f}{ips['ddpm']:11.3f}{ips['ddim']:8.2f}"
                f"{ips['dpm']:8.2f}{gf:9.1f}{100 * gf / ceiling.get('fp32 NCHW', math.nan):6.0f}"
                f"{rss:6.0f}")  # fmt: skip
            summary.setdefault("sample", {})[f"{p}/{w}"] = {**ips, "seconds_per_step": sps,
                                                             "gflops": gf}  # fmt: skip
        say("")
    if "eval" in results:
        recs = [r for r in results["eval"] if "ips" in r]
        med, lo, hi = _agg(recs)
        gf = med * recs[0]["flops_per_image"] / 1e9 if recs else math.nan
        say(f"Evaluation: Inception features, batch {args.eval_batch}, 32 px -> 299 px: "
            f"{med:.2f} img/s ({lo:.2f}-{hi:.2f}), {gf:.0f} GFLOP/s, "
            f"{_mem_label(args)[:-4]} {_mem(recs):.0f} MiB")  # fmt: skip
        say("")
        summary["eval"] = {"ips": med, "min": lo, "max": hi, "gflops": gf}
    study = [k for k in results if k.startswith("study/")]
    if study:
        p = args.study_preset
        fl = flops.get(p, {}).get("train_flops_per_image", math.nan)
        say(f"Study: preset {p}, batch {_cfg(p).train.batch_size}, each row against the first")
        say(f"{'variant':46s}{'img/s':>7s}{'min-max':>13s}{'x':>6s}{'cpu img/s':>10s}{'x':>6s}"
            f"{'GFLOP/s':>8s}{'%bf16':>6s}{_mem_label(args)[:-4]:>6s}  note")  # fmt: skip
        ref_w = ref_c = ref_s = math.nan
        for key in study:
            name = key.split("/", 1)[1]
            recs = [r for r in results[key] if "ips" in r or "ddim" in r]
            if not recs:
                say(f"{name:46s} failed: {results[key][0].get('error', '')[-300:]}")
                continue
            note = ""
            if name.startswith("sample:"):
                sps = _med([r["ddim"]["seconds_per_step"] for r in recs])
                if name.startswith("sample: inference_mode"):
                    ref_s = sps
                    say("")
                say(f"{name:46s}{'':26s}  {sps * 1e3:7.1f} ms/step (guided, batch "
                    f"{args.sample_batch}): x{ref_s / sps:.2f} speed")  # fmt: skip
                summary.setdefault("study", {})[name] = {"seconds_per_step": sps,
                                                         "ratio": ref_s / sps}  # fmt: skip
                continue
            med, lo, hi = _agg(recs)
            cmed = _agg(recs, "cpu_ips")[0]
            if math.isnan(ref_w):
                ref_w, ref_c = med, cmed
            gf = med * fl / 1e9
            note = f"data {_med([r['data_ms_per_step'] for r in recs]):.1f} ms/step"
            if "compile" in name:
                note += f", compile+1st step {recs[0]['first_step_seconds']:.0f} s"
            say(f"{name:46s}{med:7.2f}{lo:6.2f}-{hi:<6.2f}{med / ref_w:6.2f}{cmed:10.2f}"
                f"{cmed / ref_c:6.2f}{gf:8.1f}{100 * gf / top:6.0f}"
                f"{_mem(recs):6.0f}  {note}")  # fmt: skip
            summary.setdefault("study", {})[name] = {
                "ips": med, "min": lo, "max": hi, "ratio": med / ref_w, "cpu_ips": cmed,
                "cpu_ratio": cmed / ref_c, "gflops": gf, "pct_bf16_ceiling": 100 * gf / top,
                "runs": len(recs)}  # fmt: skip
        say("")
    e2e = [k for k in results if k.startswith("e2e/")]
    if e2e:
        say("End to end: diffscape.train.train() on 800 synthetic 32 px images, preset small")
        ref = math.nan
        for key in e2e:
            med, lo, hi = _agg([r for r in results[key] if "ips" in r])
            ref = med if math.isnan(ref) else ref
            say(f"  {key[4:]:28s} {med:7.2f} img/s ({lo:.2f}-{hi:.2f})  x{med / ref:.2f}")
            summary.setdefault("e2e", {})[key[4:]] = {"ips": med, "min": lo, "max": hi}
        say("")
    quality = {k[8:]: v[0] for k, v in results.items() if k.startswith("quality/")}
    if quality and all("losses" in v for v in quality.values()):
        a, b, f = (quality[k]["losses"] for k in ("fp32 seed 0", "fp32 seed 1", "fast seed 0"))
        steps = quality["fp32 seed 0"]["steps"]
        say("Loss curves of train() (mean loss per 10-step window), preset small")
        say(f"{'step':>6s}{'fp32 s0':>9s}{'fp32 s1':>9s}{'fast s0':>9s}")
        for i, s in enumerate(steps):
            say(f"{s:6d}{a[i]:9.4f}{b[i]:9.4f}{f[i]:9.4f}")
        half = len(steps) // 2
        noise = statistics.fmean(abs(x - y) for x, y in zip(a[half:], b[half:], strict=True))
        diff = statistics.fmean(abs(x - y) for x, y in zip(a[half:], f[half:], strict=True))
        tail = {k: statistics.fmean(v[half:]) for k, v in
                (("fp32 s0", a), ("fp32 s1", b), ("fast s0", f))}  # fmt: skip
        say(
            f"second half: mean |fp32 s0 - fp32 s1| = {noise:.4f} (seed noise), "
            f"mean |fp32 s0 - fast s0| = {diff:.4f}; mean losses "
            + ", ".join(f"{k} {v:.4f}" for k, v in tail.items())
        )
        speeds = {k: v.get("ips", math.nan) for k, v in quality.items()}
        say("img/s of these runs: " + ", ".join(f"{k} {v:.2f}" for k, v in speeds.items()))
        summary["quality"] = {"seed_noise": noise, "fast_vs_fp32": diff, "tail_means": tail,
                              "ips": speeds}  # fmt: skip
        say("")
    loads = [x for recs in results.values() for x in _loads(recs)]
    if loads:
        say(
            f"1-min load average during the runs: median {statistics.median(loads):.1f}, "
            f"min {min(loads):.1f}, max {max(loads):.1f} (machine: {os.cpu_count()} CPUs)"
        )
        summary["load"] = {"median": statistics.median(loads), "min": min(loads),
                           "max": max(loads)}  # fmt: skip
    return "\n".join(lines), summary


def _mem(recs: list[dict]) -> float:
    """Peak memory of the measurement: the GPU's allocations on CUDA, else the process's RSS."""
    return _med([r.get("peak_cuda_mib", r.get("peak_rss_mib", math.nan)) for r in recs])


def _mem_label(args: argparse.Namespace) -> str:
    return "GPU MiB" if args.device == "cuda" else "RSS MiB"


def _batch(key: str, args: argparse.Namespace) -> int:
    p = key.split("/")[1]
    if key.startswith("sample/"):
        return args.big_batch if p in BIG and args.device == "cpu" else args.sample_batch
    return args.big_batch if p in BIG and args.device == "cpu" else _cfg(p).train.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", default="conv,train,sample,eval,study")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each child")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--other-threads", type=int, default=0,
                    help="also run the study's baseline and fast rows at this thread count")  # fmt: skip
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed window")
    ap.add_argument("--big-batch", type=int, default=8, help="batch of base/base64 on a CPU")
    ap.add_argument("--sample-batch", type=int, default=32, help="sampling batch (guided: 2x)")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--sample-steps", type=int, default=0,
                    help="sampler steps per timing (0: 2 on a CPU, 10 on a GPU)")  # fmt: skip
    ap.add_argument("--budget", type=float, default=0,
                    help="seconds; measurements not started by then are skipped, and the table "
                    "shows what was measured (0: no limit)")  # fmt: skip
    ap.add_argument("--train-rows", default="fp32 baseline,fast",
                    help=f"training rows, comma-separated, the first the reference: "
                    f"{', '.join(TRAIN_ROWS)}")  # fmt: skip
    ap.add_argument("--conv-rounds", type=int, default=7, help="timing rounds of the conv ceiling")
    ap.add_argument(
        "--conv-batch", type=int, default=0, help="conv ceiling batch (0: 64 CPU, 256 GPU)"
    )
    ap.add_argument("--study-preset", default="small")
    ap.add_argument("--study-rows", default="", help="only study rows naming one of these words")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="skip the torch.compile study row (minutes of compiling on a CPU)")  # fmt: skip
    ap.add_argument("--e2e-steps", type=int, default=40)
    ap.add_argument("--quality-steps", type=int, default=150)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "diffscape-bench-ds"))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--in-process", choices=["auto", "yes", "no"], default="auto",
                    help="run the measurements in this process instead of one subprocess each "
                    "(auto: yes on cuda, where a subprocess costs ~20 s of start-up; no on a "
                    "CPU, where a clean peak RSS per measurement matters)")  # fmt: skip
    ap.add_argument("--out", default=str(HERE / "results" / "bench.json"))
    ap.add_argument("--retabulate", metavar="JSON",
                    help="print the table of a saved run (its .json or .partial.json) and exit")  # fmt: skip
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sample_steps = args.sample_steps or (2 if args.device == "cpu" else 10)
    args.in_process = {"yes": True, "no": False}.get(args.in_process, args.device == "cuda")
    if args.child:
        child_main(json.loads(args.child))
        return

    if args.retabulate:
        saved = json.loads(Path(args.retabulate).read_text())
        for key, value in saved["args"].items():
            if key not in ("retabulate", "out"):
                setattr(args, key, value)
        print(tabulate(saved["raw"], args)[0])
        return

    t0 = time.perf_counter()
    info = machine()
    print(f"machine: {info}", file=sys.stderr)
    results = run_all(args)
    table, summary = tabulate(results, args)
    header = (
        f"diffscape bench: {info.get('gpu') or info['cpu']} ({info['cpus']} CPUs), "
        f"torch {info['torch']}, device {args.device}, threads {args.threads or 'default'}, "
        f"{args.repeats} repeats, {time.perf_counter() - t0:.0f} s\n"
        f"command: python bench/bench.py {' '.join(sys.argv[1:])}\n"
    )
    print("\n" + header + "\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "args": vars(args), "command": " ".join(sys.argv),
              "summary": summary, "table": header + "\n" + table, "raw": results}  # fmt: skip
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
