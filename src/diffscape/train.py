"""The training loop: DDPM on a prepared dataset, through Accelerate, resumable exactly.

Read top to bottom: the pure pieces (LR, EMA), ``train_step`` (the one copy of the step, also
what the benchmarks time), ``TrainLogger`` (metrics.jsonl, TensorBoard, progress), then
``train()``: setup, resume, loop, checkpoints. Batches come from ``diffscape.data.source``: the
memory-mapped split, or the whole split on the training device (``train.data_on_device``).

Exact resume rests on three things: every random draw comes from generators whose state is
checkpointed (noise, timesteps, flips, label dropout on ``gen``; dropout on torch's global RNG);
the data order is a pure function of (seed, step), so there is no loader state to save; and the
LR is a pure function of the step.

The step does not wait for the device: a non-finite step is skipped on the device (fused AdamW's
``found_inf``, an EMA weight of 0), and the loop reads the steps' flags and losses once per
logging window, checkpoint or stop (``TrainLogger.settle``).

Multi-process (``accelerate launch --num_processes N``): the global batch of a step is split
across processes by rank, gradients are averaged by DDP, and only the main process writes (and
holds the run folder's lock). Decisions to stop (signal, budget) are reduced over processes so
that all stop after the same step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object

from diffscape import atomic, diffusion, layout
from diffscape.checkpoint import (
    TrainingState,
    latest_checkpoint,
    load_training_state,
    read_checkpoint_config,
    save_checkpoint,
)
from diffscape.config import ConfigError, DiffusionConfig, RunConfig, shape_changes, with_changes
from diffscape.data.dataset import Dataset, load_dataset
from diffscape.data.source import BatchSource, make_source
from diffscape.data.source import batch_indices as batch_indices  # re-exported: tests, bench
from diffscape.data.source import load_batch as load_batch
from diffscape.errors import DiffscapeError
from diffscape.lock import FolderBusy, hold
from diffscape.model import build_unet, count_parameters, null_class
from diffscape.timefmt import duration

StoppedBy = Literal["steps", "budget"]


class TrainingInterrupted(DiffscapeError):
    """SIGINT/SIGTERM: the run saved a checkpoint and stopped; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class NonFiniteLossError(DiffscapeError):
    """Too many non-finite steps in a row."""


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps: int  # optimizer steps done in total
    final_checkpoint: Path
    seconds: float  # wall time of this call
    images_per_second: float  # over this call's steps
    skipped_steps: int
    parameters: int
    processes: int  # Accelerate processes that trained together
    main_process: bool  # whether this is the process that wrote the outputs
    stopped_by: StoppedBy = "steps"  # "budget": train.minutes ended it before train.steps


# ---- pure pieces ----------------------------------------------------------------------------


def lr_at(step: int, cfg_lr: float, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Linear warm-up from 0 to ``cfg_lr``, then constant or cosine decay to 0."""
    if warmup_steps and step < warmup_steps:
        return cfg_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return cfg_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg_lr


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """EMA decay for the update after ``step`` optimizer steps: ``min(decay, (1+s)/(10+s))``
    with warm-up (the schedule of diffusers' EMAModel), so early averages are not dominated by
    the random initialisation."""
    if not warmup:
        return decay
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, weight: float | torch.Tensor) -> None:
    """ema <- ema + weight * (model - ema), over all parameters at once (weight = 1 - decay).

    A 0-d tensor ``weight`` stays on the device: 0 for a skipped step leaves the EMA as it was
    with no host sync. By hand rather than diffusers' EMAModel: keeping the EMA as a whole UNet
    makes it save as a diffusers folder and sample directly, with no shadow-parameter list.
    """
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    if not torch.is_tensor(weight):
        torch._foreach_lerp_(e, m, weight)
    elif e[0].device.type == "cuda":
        # lerp with a list of 0-d weights has no multi-tensor CUDA kernel (shapes differ: it
        # falls back to one lerp per tensor); sub, mul by a tensor scalar and add have one each.
        diff = torch._foreach_sub(m, e)
        torch._foreach_mul_(diff, weight)
        torch._foreach_add_(e, diff)
    else:  # CPU foreach ops loop over the tensors anyway; the float-weight lerp, bit for bit
        torch._foreach_lerp_(e, m, [weight] * len(e))


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (one draw per image from ``gen``)."""
    mask = torch.rand(x.shape[0], generator=gen, device=gen.device) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def diffusion_loss(
    pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
    d: DiffusionConfig,
) -> torch.Tensor:  # fmt: skip
    """MSE in fp32, weighted per sample by ``diffusion.loss_weighting`` (min-SNR or none)."""
    weights = diffusion.loss_weights(t, alpha_bar, d.prediction, d.loss_weighting, d.min_snr_gamma)
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    return (weights * per_sample).mean()


# ---- the step -------------------------------------------------------------------------------


Guard = Literal["device", "host", "off"]


@dataclass
class StepParts:
    """What every step works on; built once by :func:`step_parts` (train() and benchmarks)."""

    cfg: RunConfig
    accelerator: Accelerator
    model: torch.nn.Module  # the parameters: the EMA's source, what checkpoints save
    net: torch.nn.Module  # what runs forward: ``model`` or its compiled/DDP-prepared wrapper
    ema: torch.nn.Module | None  # None: no EMA update (a benchmark measuring its cost)
    optimizer: torch.optim.Optimizer  # prepared by the accelerator
    gen: torch.Generator  # this process's flips, noise, timesteps, label dropout; data's device
    alpha_bar: torch.Tensor  # cumulative alpha product of the noise schedule, (T,)
    # Non-finite steps are skipped. "device": decided on the device, no host sync (needs an
    # optimizer that reads ``found_inf``, i.e. fused AdamW; others fall back to "host");
    # "host": the flag is read before the update (one sync per step); "off": benchmarks only.
    guard: Guard = "device"


@dataclass(frozen=True)
class StepResult:
    """Tensors on the device; reading them syncs (TrainLogger reads them once per window)."""

    loss: torch.Tensor  # mean over processes
    grad_norm: torch.Tensor  # before clipping
    lr: float
    finite: torch.Tensor  # bool; False: the step was skipped (weights, optimizer, EMA unchanged)


def step_inputs(
    parts: StepParts, step: int, data: BatchSource
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This process's share of the batch of ``step`` and its draws from ``parts.gen``, in this
    order: flips, noise, timesteps, label dropout; made where the data is, then moved to the
    training device (a no-op for a :class:`DeviceSource`). Returns (x0, noise, t, labels)."""
    cfg, t, acc, gen = parts.cfg, parts.cfg.train, parts.accelerator, parts.gen
    if gen.device.type != data.device.type:
        raise ValueError(f"the step's generator is on {gen.device}, the data on {data.device}")
    x0, y = data.batch(step, acc.process_index, acc.num_processes)
    if t.hflip:
        x0 = random_flip(x0, gen)
    noise = torch.randn(x0.shape, generator=gen, device=gen.device)
    tt = torch.randint(0, cfg.diffusion.timesteps, (x0.shape[0],), generator=gen, device=gen.device)
    class_labels = None
    if cfg.model.conditional:
        class_labels = diffusion.drop_labels(y, t.label_dropout, null_class(cfg.model), gen)
        class_labels = class_labels.to(acc.device)
    x0, noise, tt = (v.to(acc.device) for v in (x0, noise, tt))
    return x0, noise, tt, class_labels


def train_step(parts: StepParts, state: TrainingState, data: BatchSource) -> StepResult:
    """One optimizer step of ``state.step`` on ``data`` (a :class:`HostSource` or
    :class:`DeviceSource`); advances ``state.step``. The only copy of the training step.

    With ``parts.guard="device"`` nothing here waits for the device: whether the step was
    finite is ``StepResult.finite``; :meth:`TrainLogger.settle` reads it later and keeps
    ``state.skipped_steps``/``bad_steps_in_a_row``."""
    cfg, t, acc = parts.cfg, parts.cfg.train, parts.accelerator
    step, alpha_bar = state.step, parts.alpha_bar
    x0, noise, tt, class_labels = step_inputs(parts, step, data)
    if t.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    x_t = diffusion.q_sample(x0, noise, tt, alpha_bar)
    target = diffusion.training_target(x0, noise, tt, alpha_bar, cfg.diffusion.prediction)

    lr = lr_at(step, t.lr, t.warmup_steps, t.steps, t.lr_schedule)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    with acc.autocast():
        pred = parts.net(x_t, tt, class_labels=class_labels).sample
    loss = diffusion_loss(pred, target, tt, alpha_bar, cfg.diffusion)
    acc.backward(loss)
    max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
    grad_norm = acc.clip_grad_norm_(parts.net.parameters(), max_norm)
    mean_loss = acc.reduce(loss.detach(), "mean")
    finite = torch.isfinite(mean_loss) & torch.isfinite(grad_norm)
    decay = ema_decay_at(step, t.ema_decay, t.ema_warmup)
    guard = parts.guard
    if guard == "device" and not skips_on_device(parts.optimizer):
        guard = "host"
    if guard == "device":
        _update_unless(parts, finite, 1.0 - decay)
    elif guard == "off" or bool(finite):  # "host": the host sync of the step
        parts.optimizer.step()
        if parts.ema is not None:
            ema_update(parts.ema, parts.model, 1.0 - decay)
    if guard == "off":
        finite = torch.ones_like(finite)  # never skipped
    parts.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return StepResult(loss=mean_loss, grad_norm=grad_norm, lr=lr, finite=finite)


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the real one


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer skips its update on a device flag: torch's fused Adam/AdamW read
    ``found_inf`` (GradScaler's protocol, ``_step_supports_amp_scaling``) inside the kernel."""
    return bool(getattr(_inner(optimizer), "_step_supports_amp_scaling", False))


def _update_unless(parts: StepParts, finite: torch.Tensor, ema_weight: float) -> None:
    """Optimizer and EMA update, both no-ops on the device when ``finite`` is false: fused AdamW
    with ``found_inf=1`` leaves parameters and moments as they were and takes its step count back
    (torch/optim/adam.py, _fused_adam), and the EMA moves by a weight of 0. No host sync."""
    inner = _inner(parts.optimizer)
    # An fp16 GradScaler sets (and then deletes) its own found_inf in the step; inf/NaN
    # gradients are what it checks, and they make ``finite`` false too.
    inner.found_inf = (~finite).float()
    try:
        parts.optimizer.step()
    finally:
        inner.__dict__.pop("found_inf", None)
    if parts.ema is not None:
        ema_update(parts.ema, parts.model, finite.float() * ema_weight)


# ---- setup ----------------------------------------------------------------------------------


def make_accelerator(cfg: RunConfig, cpu: bool | None = None) -> Accelerator:
    """The Accelerator for ``cfg.train.precision`` (see :func:`resolve_precision`), on the CPU
    when ``cpu`` or when there is no GPU."""
    t = cfg.train
    if t.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    on_cpu = bool(cpu) if cpu is not None else not torch.cuda.is_available()
    precision = resolve_precision(
        t.precision, "cpu" if on_cpu else "cuda", on_cpu and cpu_has_bf16()
    )
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one process-wide state and refuses a second Accelerator with other
        # settings (e.g. bf16 after fp32). A single process may train several runs in a row
        # (sweeps, notebooks), so forget the previous run's state first.
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        cpu=on_cpu, mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    )
    if t.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"train.batch_size {t.batch_size} must be divisible by the "
            f"{accelerator.num_processes} processes"
        )
    return accelerator


def _precision_notes(cfg: RunConfig, accelerator: Accelerator) -> list[str]:
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
    """This process's generator for the step's draws, on ``device`` (where the batch source
    makes its batches); also seeds its dropout stream (torch's global RNG). Both differ by rank.
    On a CPU the same seed gives the same draws for either source."""
    torch.manual_seed(cfg.train.seed * 1000 + rank + 7)
    return torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + rank + 1)


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
        return with_changes(cfg, model={"num_classes": ds.num_classes})
    return cfg


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU (1.6-2.1x for small/base/base64 on AMX,
    docs/benchmarks.md); without AVX512-BF16 or AMX, bf16 is emulated in software (expected
    slower than fp32; no such CPU was at hand to measure).
    torch.cpu's probes are private: unknown means yes."""
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


# ---- logging --------------------------------------------------------------------------------


class TrainLogger:
    """metrics.jsonl, TensorBoard, the progress bar and the ``on_log`` callback.

    Losses are averaged over a window of ``train.log_every_steps`` good steps; skipped steps get
    their own record. Steps are only queued as they come; :meth:`settle` reads their flags (the
    one host sync of a window) when a record, a checkpoint or a stop is due. Every process keeps
    the window (its losses are already reduced); only the main process writes."""

    def __init__(
        self, run_dir: Path, cfg: RunConfig, *, main: bool, world: int, step: int,
        t_start: float, progress: bool, on_log: Callable[[dict], None] | None,
    ) -> None:  # fmt: skip
        self.path = run_dir / layout.METRICS_JSONL
        self.cfg, self.main, self.world, self.t_start, self.on_log = (
            cfg,
            main,
            world,
            t_start,
            on_log,
        )
        self.tb = _tensorboard(run_dir) if main else None
        self.bar = None
        # With a wall-clock budget the bar counts seconds of it (the step cap is usually far
        # away and its ETA meaningless); otherwise it counts steps.
        self.budget_seconds = cfg.train.minutes * 60
        self.loss_text = ""
        if progress and main:
            from tqdm.auto import tqdm

            if self.budget_seconds:
                self.bar = tqdm(total=round(self.budget_seconds), desc="train (budget)", unit="s",
                                dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total} s "
                                "[{elapsed}<{remaining}{postfix}]")  # fmt: skip
            else:
                self.bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step",
                                dynamic_ncols=True)  # fmt: skip
        self._window_reset()
        self.told_pace = False  # the one-time "at X img/s this takes about ..." line
        self.last_grad_norm: torch.Tensor | float = float("nan")
        self.pending: list[tuple[int, StepResult]] = []  # (step after it, result), unread

    def _window_reset(self) -> None:
        self.window_loss: torch.Tensor | float = 0.0
        self.window_steps = 0
        self.window_t0 = time.perf_counter()

    def step(self, state: TrainingState, result: StepResult) -> None:
        """Queue one step (nothing is read from the device here) and move the progress bar."""
        self.pending.append((state.step, result))
        if self.bar is None:
            return
        if self.budget_seconds:
            spent = min(self.budget_seconds, time.perf_counter() - self.t_start)
            self.bar.set_postfix_str(f"step {state.step}{self.loss_text}", refresh=False)
            self.bar.update(max(0.0, spent - self.bar.n))
        else:
            self.bar.update(1)

    def settle(self, state: TrainingState, max_bad_steps: int) -> int | None:
        """Read the queued steps' finite flags (one host sync): good steps go into the window,
        skipped ones get their record and ``state``'s counters. Returns the first step at which
        ``max_bad_steps`` non-finite steps in a row were reached, or None."""
        if not self.pending:
            return None
        flags = torch.stack([r.finite for _, r in self.pending]).tolist()
        gave_up = None
        for (step, result), ok in zip(self.pending, flags, strict=True):
            if ok:
                self.window_loss = self.window_loss + result.loss
                self.window_steps += 1
                self.last_grad_norm = result.grad_norm
                state.bad_steps_in_a_row = 0
                continue
            state.bad_steps_in_a_row += 1
            state.skipped_steps += 1
            if state.bad_steps_in_a_row >= max_bad_steps and gave_up is None:
                gave_up = step
            if self.main:
                _append_jsonl(self.path, {"step": step, "skipped": True,
                                          "loss": _num(result.loss),
                                          "grad_norm": _num(result.grad_norm),
                                          "skipped_steps": state.skipped_steps})  # fmt: skip
        self.pending.clear()
        return gave_up

    def due(self, step: int) -> bool:
        return step % self.cfg.train.log_every_steps == 0 or step == self.cfg.train.steps

    def log(self, state: TrainingState, lr: float, stopped_by: str | None = None) -> None:
        """Write the window's record (and close the window)."""
        t = self.cfg.train
        elapsed = time.perf_counter() - self.window_t0
        record = {
            "step": state.step,
            "loss": float(self.window_loss) / max(1, self.window_steps),
            "lr": lr,
            "grad_norm": _num(self.last_grad_norm),
            "images_per_second": self.window_steps * t.batch_size / max(elapsed, 1e-9),
            "skipped_steps": state.skipped_steps,
            "processes": self.world,
            "seconds": time.perf_counter() - self.t_start,
        }
        if stopped_by is not None:
            record["stopped_by"] = stopped_by
        if self.main and stopped_by == "budget":
            msg = (f"train: the budget (train.minutes={t.minutes:g}) ended training after step "
                   f"{state.step}; saving a checkpoint (continue with --resume)")  # fmt: skip
            (self.bar.write if self.bar is not None else print)(msg, file=sys.stderr)
        if self.main and not self.told_pace and stopped_by is None and self.window_steps:
            self.told_pace = True
            note = pace_note(t.steps, t.minutes, state.step, record["images_per_second"] / t.batch_size,
                             record["seconds"])  # fmt: skip
            (self.bar.write if self.bar is not None else print)(note, file=sys.stderr)
        if self.main:
            _append_jsonl(self.path, record)
            if self.tb is not None:
                for k in ("loss", "lr", "grad_norm", "images_per_second"):
                    self.tb.add_scalar(f"train/{k}", record[k], state.step)
            self.loss_text = f", loss={record['loss']:.4f}"
            if self.bar is not None and not self.budget_seconds:
                self.bar.set_postfix_str(self.loss_text[2:], refresh=False)
            if self.on_log is not None:
                self.on_log(record)
        self._window_reset()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def pace_note(steps: int, minutes: float, step: int, steps_per_second: float, spent: float) -> str:
    """The one line that says, from the first logging window's speed, how long the run will
    take: to ``steps``, or how many steps the ``minutes`` budget will reach."""
    if steps_per_second <= 0:
        return "train: no speed measured yet"
    to_cap = (steps - step) / steps_per_second
    if minutes and spent + to_cap > 60 * minutes:
        reach = step + int(steps_per_second * max(0.0, 60 * minutes - spent))
        return (f"train: at {steps_per_second:.2f} steps/s the {minutes:g}-minute budget reaches "
                f"about step {reach} of train.steps={steps}")  # fmt: skip
    hint = "" if minutes else "; --minutes M stops earlier, saved and resumable"
    return f"train: at {steps_per_second:.2f} steps/s the {steps - step} steps to go take about {duration(to_cap)}{hint}"


def _num(x: torch.Tensor | float) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint we continue from, so the log
    reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    atomic.write_text(path, "".join(ln + "\n" for ln in keep))


def _tensorboard(run_dir: Path):  # noqa: ANN202 - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(run_dir / layout.TENSORBOARD))


# ---- train() --------------------------------------------------------------------------------


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            # Not the main thread (e.g. a notebook worker): no handler, Ctrl-C interrupts.
            with contextlib.suppress(ValueError):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # second signal: the user really wants out
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _any_process(accelerator: Accelerator, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true when it is true on any process (all must stop at the same step)."""
    if accelerator.num_processes == 1:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=accelerator.device)
    return tuple(v > 0 for v in accelerator.reduce(t, "sum").tolist())


def _lock_run_dir(stack: contextlib.ExitStack, run_dir: Path, accelerator: Accelerator) -> None:
    """The main process holds the run folder's lock for the whole run, taken before anything
    is written; every process learns whether it got it (FolderBusy names the holder)."""
    layout.check_out(run_dir, "run")
    busy: FolderBusy | None = None
    if accelerator.is_main_process:
        try:
            stack.enter_context(hold(run_dir, "run folder"))
        except FolderBusy as e:
            busy = e
    if _any_process(accelerator, busy is not None)[0]:
        raise busy or FolderBusy(f"run folder {run_dir} is in use by another process")
    if accelerator.is_main_process:
        atomic.clean_stale_tmp(run_dir)  # leftovers of killed writers (run.json, metrics...)


def _checkpoint_to_resume(run_dir: Path, cfg: RunConfig, resume: bool | None) -> Path | None:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and resume is False:
        raise DiffscapeError(
            f"{run_dir} already holds checkpoints; use --resume to continue it or pick a new --out"
        )
    if ckpt is None and resume is True:
        raise DiffscapeError(f"--resume: {run_dir} has no complete checkpoint to continue from")
    if ckpt is not None:
        changed = shape_changes(read_checkpoint_config(ckpt), cfg)
        if changed:
            raise ConfigError("cannot resume with a different network shape: " + "; ".join(changed))
    return ckpt


def gen_state_key(gen: torch.Generator, rank: int) -> str:
    """The checkpoint's name for a step generator's state: ``gen_rank{r}`` for a CPU generator
    (as before device generators existed), ``gen_{type}_rank{r}`` for a device one (its state
    has another format: a CUDA generator's is its seed and offset)."""
    kind = gen.device.type
    return f"gen_rank{rank}" if kind == "cpu" else f"gen_{kind}_rank{rank}"


def _resume(
    ckpt: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
    gen: torch.Generator, rank: int, seed: int,
) -> tuple[TrainingState, str | None]:  # fmt: skip
    """Weights, optimizer, counters and this process's RNG states from ``ckpt``; and a note
    when the step generator could not continue (the checkpoint's is of another device)."""
    state, saved = load_training_state(ckpt, model=model, ema=ema, optimizer=optimizer)
    if f"torch_rank{rank}" not in saved:
        raise DiffscapeError(
            f"{ckpt} was written by a run with fewer processes; resume it with the same "
            "number of processes"
        )
    note = None
    if gen_state_key(gen, rank) in saved:
        gen.set_state(saved[gen_state_key(gen, rank)])
    else:
        # train.data_on_device resolved otherwise than in the run that saved (e.g. "auto" with
        # less free GPU memory): the data order is still exact, the noise draws go on from a seed
        gen.manual_seed(int(np.random.SeedSequence([seed, rank, state.step]).generate_state(1)[0]))
        note = (f"note: {ckpt.name} holds the step generator of another device (the batch source "
                "changed, see train.data_on_device); the data order continues exactly, the "
                "noise draws from a new seed")  # fmt: skip
    torch.set_rng_state(saved[f"torch_rank{rank}"])
    return state, note


def _run_info(cfg: RunConfig, ds: Dataset, dataset_dir: str | Path) -> dict:
    return {
        "classes": ds.classes if cfg.model.conditional else [],
        "dataset": {
            "path": str(Path(dataset_dir).resolve()),
            "content_hash": ds.content_hash,
            "classes": ds.classes,
            "size": ds.size,
            "train_images": ds.count("train"),
        },
    }


def _save(parts: StepParts, state: TrainingState, run_dir: Path, run_info: dict) -> Path | None:
    """A checkpoint with every process's generator and dropout RNG, so that each continues
    exactly; written by the main process (returns its folder there, None elsewhere)."""
    acc, t = parts.accelerator, parts.cfg.train
    mine = [parts.gen.get_state(), torch.get_rng_state()]
    everyone = gather_object([mine]) if acc.num_processes > 1 else [mine]
    rng_states = {}
    for r, (g, c) in enumerate(everyone):
        rng_states[gen_state_key(parts.gen, r)] = g
        rng_states[f"torch_rank{r}"] = c
    path = None
    if acc.is_main_process:
        optimizer = parts.optimizer
        path = save_checkpoint(
            run_dir, cfg=parts.cfg, model=parts.model, ema=parts.ema,
            optimizer=optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
            state=state, rng_states=rng_states, keep_last=t.keep_last,
            milestone_every_steps=t.milestone_every_steps, info=run_info,
        )  # fmt: skip
    acc.wait_for_everyone()
    return path


def _check_bad_steps(gave_up: int | None, max_bad_steps: int, run_dir: Path) -> None:
    """Stop when :meth:`TrainLogger.settle` saw ``max_bad_steps`` non-finite steps in a row
    (ending at step ``gave_up``)."""
    if gave_up is not None:
        last = latest_checkpoint(run_dir)
        raise NonFiniteLossError(
            f"{max_bad_steps} non-finite losses or gradients in a row at step "
            f"{gave_up}; stopping. The last good checkpoint is "
            f"{last if last else '(none yet)'}. Lower train.lr, keep train.grad_clip on, "
            "or use train.precision=fp32."
        )


def _stop_reason(accelerator: Accelerator, stop: _StopFlag, deadline: float) -> str | None:
    """Why to stop after this step ("signal", "budget" or None), agreed by all processes."""
    by_signal, by_budget = _any_process(
        accelerator, stop.signum is not None, time.perf_counter() >= deadline
    )
    return "signal" if by_signal else ("budget" if by_budget else None)


def _start(
    cfg: RunConfig, accelerator: Accelerator, run_dir: Path, resume: bool | None, ds: Dataset
) -> tuple[StepParts, TrainingState, BatchSource]:
    """The batch source (``train.data_on_device``), the network, its EMA, the optimizer and
    this process's generator (where the source makes batches): new, or continued from the
    newest checkpoint. The main process prints what the user should know."""
    t = cfg.train
    ckpt = _checkpoint_to_resume(run_dir, cfg, resume)  # refusals first: before any upload
    data, data_note = make_source(t.data_on_device, ds.images("train"), ds.labels("train"),
                                  t.seed, t.batch_size, accelerator.device)  # fmt: skip
    notes = [*_precision_notes(cfg, accelerator), data_note]
    model, ema, optimizer = build_model(cfg, accelerator)
    rank = accelerator.process_index
    gen = step_generator(cfg, rank, data.device)
    state = TrainingState(step=0)
    if ckpt is not None:
        state, resume_note = _resume(ckpt, model, ema, optimizer, gen, rank, t.seed)
        notes += [f"resuming {run_dir} from {ckpt.name} (step {state.step})", resume_note]
    for note in notes if accelerator.is_main_process else []:
        if note:
            print(note, file=sys.stderr)
    return step_parts(cfg, accelerator, model, ema, optimizer, gen), state, data


def train(
    cfg: RunConfig,
    dataset_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool | None = None,
    progress: bool = True,
    cpu: bool | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train (or continue training) a DDPM; returns where the final checkpoint is.

    ``resume=None`` continues automatically when ``run_dir`` holds a checkpoint, ``True``
    requires one, ``False`` refuses to touch a run folder that has one. Training ends at
    ``train.steps``, or earlier when ``train.minutes`` (of this call) have passed: the step in
    progress finishes and a checkpoint is saved (``stopped_by="budget"``).
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    ds = load_dataset(dataset_dir)
    cfg = prepare_config(cfg, ds)
    t = cfg.train
    deadline = t_start + 60 * t.minutes if t.minutes > 0 else math.inf
    with contextlib.ExitStack() as stack:
        # -- setup: the accelerator, the run folder's lock, the network, resume
        accelerator = make_accelerator(cfg, cpu)
        _lock_run_dir(stack, run_dir, accelerator)
        main = accelerator.is_main_process
        parts, state, data = _start(cfg, accelerator, run_dir, resume, ds)
        run_info = _run_info(cfg, ds, dataset_dir)
        if main:
            atomic.write_json(run_dir / layout.RUN_JSON, run_info)  # the marker first
            atomic.write_text(run_dir / layout.CONFIG_JSON, cfg.to_json())
            _truncate_metrics(run_dir / layout.METRICS_JSONL, state.step)
        accelerator.wait_for_everyone()

        # -- the loop
        start_step, final_ckpt, stopped_by = state.step, None, "steps"
        log = TrainLogger(run_dir, cfg, main=main, world=accelerator.num_processes,
                          step=state.step, t_start=t_start, progress=progress, on_log=on_log)  # fmt: skip
        stack.callback(log.close)
        stop = stack.enter_context(_StopFlag())
        while state.step < t.steps:
            result = train_step(parts, state, data)
            log.step(state, result)
            why = _stop_reason(accelerator, stop, deadline)
            at_ckpt = t.checkpoint_every_steps and state.step % t.checkpoint_every_steps == 0
            save = state.step == t.steps or at_ckpt or why is not None
            if save or log.due(state.step):  # the step's only host sync, once per window
                _check_bad_steps(log.settle(state, t.max_bad_steps), t.max_bad_steps, run_dir)
            if log.due(state.step) or why is not None:
                log.log(state, result.lr, stopped_by=why)
            if t.sample_every_steps and state.step % t.sample_every_steps == 0 and main:
                _sample_grid(parts.ema, cfg, ds.classes, run_dir, state.step)
            if save:
                final_ckpt = _save(parts, state, run_dir, run_info)
            if why == "signal":
                raise _interrupted(stop, state, final_ckpt, dataset_dir, run_dir)
            if why == "budget":
                stopped_by = "budget"
                break

        # -- the end
        final_ckpt = final_ckpt or latest_checkpoint(run_dir)  # None: nothing to train
        if main and t.sample_every_steps and not (run_dir / layout.TRAIN_SAMPLES).is_dir():
            _sample_grid(parts.ema, cfg, ds.classes, run_dir, state.step)
    seconds = time.perf_counter() - t_start
    accelerator.end_training()
    return RunResult(
        run_dir=run_dir, steps=state.step, final_checkpoint=Path(final_ckpt or run_dir),
        seconds=seconds, skipped_steps=state.skipped_steps,
        images_per_second=(state.step - start_step) * t.batch_size / max(seconds, 1e-9),
        parameters=count_parameters(parts.model), processes=accelerator.num_processes,
        main_process=main, stopped_by=stopped_by,
    )  # fmt: skip


def _interrupted(
    stop: _StopFlag, state: TrainingState, saved: Path | None, dataset_dir: str | Path,
    run_dir: Path,
) -> TrainingInterrupted:  # fmt: skip
    name = signal.Signals(stop.signum).name if stop.signum else "a signal"
    return TrainingInterrupted(
        f"stopped by {name} after step {state.step}; saved {saved or 'checkpoint'}. Resume with "
        f"the same command plus --resume (e.g. diffscape train {dataset_dir} --out {run_dir} "
        "--resume)",
        signum=stop.signum or signal.SIGINT,
    )


def _sample_grid(
    ema: torch.nn.Module, cfg: RunConfig, classes: list[str], run_dir: Path, step: int
) -> None:
    """A grid from the EMA weights with fixed seeds: one row per class (or 2 rows
    unconditional), so grids at different steps are comparable."""
    from diffscape.sample import generate_images, grid_image

    per_row = 8
    if cfg.model.conditional:
        class_idx = [c for c in range(len(classes)) for _ in range(per_row)]
        index = [i for _ in classes for i in range(per_row)]
    else:
        class_idx = [None] * (2 * per_row)
        index = list(range(2 * per_row))
    imgs = generate_images(
        ema,
        cfg,
        class_idx=class_idx,
        index=index,
        seed=1234,
        sampler="ddim",
        steps=cfg.train.sample_steps,
        guidance=1.0,
        progress=False,
    )
    names = classes if cfg.model.conditional else ["samples"]
    with atomic.atomic_path(run_dir / layout.TRAIN_SAMPLES / layout.train_grid_name(step)) as tmp:
        grid_image(imgs, names, per_row).save(tmp, format="PNG")
