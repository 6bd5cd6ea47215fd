from __future__ import annotations

import functools
import os
import time

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.tracking import GeneralTracker

from diffscape.checkpoint import TrainingState
from diffscape.data.dataset import Dataset
from diffscape.data.source import make_source
from diffscape.model import diffusion
from diffscape.model.unet import build_unet
from diffscape.settings.engine import ConfigError
from diffscape.settings.sections import RunConfig
from diffscape.train.step import StepParts, train_step


def trains_on_cpu(cpu: bool | None) -> bool:
    """Whether training runs on the CPU: ``cpu`` when given (``--cpu``), else when there is no
    GPU."""
    return bool(cpu) if cpu is not None else not torch.cuda.is_available()


def make_accelerator(
    cfg: RunConfig, cpu: bool | None = None, trackers: list[GeneralTracker] | None = None
) -> Accelerator:
    """The Accelerator for ``cfg.train.precision`` (see :func:`resolve_precision`), on the CPU
    when ``cpu`` or when there is no GPU, logging to ``trackers`` (given to the main process
    only: RANK 0 of a launcher)."""
    t = cfg.train
    if t.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    on_cpu = trains_on_cpu(cpu)
    precision = resolve_precision(
        t.precision, "cpu" if on_cpu else "cuda", on_cpu and cpu_has_bf16()
    )
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one process-wide state and refuses a second Accelerator with other
        # settings (e.g. bf16 after fp32). A single process may train several runs in a row
        # (sweeps, notebooks), so forget the previous run's state first.
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision],
        log_with=trackers if trackers and os.environ.get("RANK", "0") == "0" else None,
    )
    if t.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"train.batch_size {t.batch_size} must be divisible by the "
            f"{accelerator.num_processes} processes"
        )
    return accelerator


def precision_notes(cfg: RunConfig, accelerator: Accelerator) -> list[str]:
    """What the user should know about the precision chosen (printed by the main process)."""
    precision = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
    on_cpu = accelerator.device.type == "cpu"
    notes = []
    if cfg.train.precision == "auto":
        notes.append(f"precision: auto -> {precision} on {accelerator.device.type}")
    if precision == "bf16" and on_cpu and not cpu_has_bf16():
        notes.append(
            "warning: train.precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) "
            "is usually slower than fp32; set train.precision=fp32"
        )
    return notes


def build_model(
    cfg: RunConfig, accelerator: Accelerator
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """(model, EMA copy, AdamW) from ``train.seed``; identical on every process."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = build_unet(cfg.model)
    ema = build_unet(cfg.model)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    # The fused kernel everywhere: it skips a non-finite step on the device (``found_inf``, see
    # train_step), so the guard needs no host sync. On CUDA small UNets are launch-bound and it
    # gave 1.35x img/s over the for-loop AdamW on an H100 (preset base, bench/results/
    # bench-gpu-study.json). On the development CPU (1 thread, preset tiny) its step took 4.7 ms
    # against foreach's 15.8 ms, and the whole train_step 0.96x the CPU time (noise +-10%).
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True
    )
    return model, ema, optimizer


def step_generator(
    cfg: RunConfig, rank: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator for the step's draws, on ``device`` (where the batch source makes its
    batches): the same on every process (each draws for the whole batch and keeps its share);
    also seeds this process's dropout stream (torch's global RNG), which differs by rank. On a
    CPU the same seed gives the same draws for either source."""
    torch.manual_seed(cfg.train.seed * 1000 + rank + 7)
    return torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + 1)


def step_parts(
    cfg: RunConfig,
    accelerator: Accelerator,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
) -> StepParts:
    """Move to the device, apply ``train.channels_last`` and ``train.compile``, prepare."""
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ema is not None:
        ema.to(accelerator.device)
    net = torch.compile(model) if cfg.train.compile else model
    net, optimizer = accelerator.prepare(net, optimizer)
    alpha_bar = diffusion.alphas_cumprod(cfg.diffusion)
    return StepParts(cfg, accelerator, model, net, ema, optimizer, gen, alpha_bar)


def measure_train_speed(
    cfg: RunConfig, steps: int = 6, *, warmup: int = 1, cpu: bool | None = None
) -> float:
    """Training images/s of this config on this machine: :func:`train_step` on random images
    held in memory, after ``warmup`` steps (allocations, kernel selection, compiling)."""
    accelerator = make_accelerator(cfg, cpu)
    model, ema, optimizer = build_model(cfg, accelerator)
    b, s = cfg.train.batch_size, cfg.model.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, 3, s, s), dtype=np.uint8)
    labels = rng.integers(0, max(1, cfg.model.num_classes), b)
    data, _ = make_source(cfg.train.data_on_device, images, labels, 0, b, accelerator.device)
    gen = torch.Generator(device=data.device).manual_seed(0)
    parts = step_parts(cfg, accelerator, model, ema, optimizer, gen)
    state = TrainingState(step=0)
    for _ in range(warmup):
        train_step(parts, state, data)
    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(parts, state, data)
    sync()
    return steps * b / (time.perf_counter() - t0)


def prepare_config(cfg: RunConfig, ds: Dataset) -> RunConfig:
    """Fill in what the dataset decides (classes, image size) and check the rest fits it."""
    m = cfg.model
    if m.image_size != ds.size:
        raise ConfigError(
            f"model.image_size is {m.image_size} but the dataset {ds.root} is {ds.size} px; "
            f"set model.image_size={ds.size} or prepare the data at {m.image_size}"
        )
    if m.conditional:
        if not ds.labelled:
            raise ConfigError(
                f"model.conditional: the dataset {ds.root} has no classes; train unconditionally"
            )
        if m.num_classes not in (0, ds.num_classes):
            raise ConfigError(
                f"model.num_classes is {m.num_classes} but the dataset has {ds.num_classes}"
            )
        return cfg.with_changes(model={"num_classes": ds.num_classes})
    return cfg


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 (AVX512-BF16 or AMX), where bf16 autocast pays (see
    :func:`resolve_precision`). torch.cpu's probes are private: unknown means yes."""
    # ONEDNN_MAX_CPU_ISA below the bf16 ISAs (e.g. AVX2, to stand in for an older CPU) leaves
    # bf16 to slow reference kernels: 1.5-5 img/s against fp32's 22-38 (bench/cpu_speed.py)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if not cap.startswith(("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16",
                           "AVX512_CORE_AMX", "AVX10")):  # fmt: skip
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: True)() for name in probes)


def resolve_precision(precision: str, device_type: str, native_cpu_bf16: bool) -> str:
    """``train.precision`` -> the autocast dtype used ("fp32" | "bf16" | "fp16").

    "auto" is bf16 on a CPU with native bf16 (AMX/AVX512-BF16: 1.6x for `small`, 1.8-2.1x for
    `base`/`base64` on the development VM) and fp32 elsewhere: emulated bf16 is expected to be
    slower than fp32, and on an H100 bf16 autocast measured 0.86-0.90x of fp32/TF32 for `small`
    and `base` at 32 px (launch-bound: autocast adds cast kernels; docs/benchmarks.md). Set bf16
    explicitly for big, compute-bound GPU batches."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cpu" and native_cpu_bf16 else "fp32"


def any_process(accelerator: Accelerator, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true when it is true on any process (all must stop at the same step)."""
    if accelerator.num_processes == 1:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=accelerator.device)
    return tuple(v > 0 for v in accelerator.reduce(t, "sum").tolist())
