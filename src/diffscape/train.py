"""The training loop: DDPM on a prepared dataset, through Accelerate, resumable exactly.

Read top to bottom: the pure pieces (LR, EMA, data order), ``train_step`` (the one copy of the
step, also what the benchmarks time), ``TrainLogger`` (metrics.jsonl, TensorBoard, progress),
then ``train()``: setup, resume, loop, checkpoints.

Exact resume rests on three things: every random draw comes from generators whose state is
checkpointed (noise, timesteps, flips, label dropout on ``gen``; dropout on torch's global RNG);
the data order is a pure function of (seed, step), so there is no loader state to save; and the
LR is a pure function of the step.

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
from diffscape.errors import DiffscapeError
from diffscape.lock import FolderBusy, hold
from diffscape.model import build_unet, count_parameters, null_class

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
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, over all parameters at once.

    By hand rather than diffusers' EMAModel: keeping the EMA as a whole UNet makes it save as
    a diffusers folder and sample directly, with no shadow-parameter list to convert.
    """
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """The global batch of ``step``: epochs are seeded permutations of the data, consumed in
    order, so the data order is a pure function of (seed, step)."""
    start = step * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    filled = 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(batch_size - filled, n - offset)
        out[filled : filled + take] = perm[offset : offset + take]
        filled += take
    return out


def load_batch(
    images: np.ndarray, labels: np.ndarray, idx: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 rows of a memory-mapped array -> float images in [-1, 1] and int64 labels. Sorted
    reads keep the access pattern friendly to the page cache; the order is restored after."""
    order = np.argsort(idx, kind="stable")
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    x = np.asarray(images[idx[order]])[inv]
    y = np.asarray(labels[idx[order]])[inv]
    xt = torch.from_numpy(x).float().div_(127.5).sub_(1.0)
    return xt, torch.from_numpy(y.astype(np.int64))


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (one draw per image from ``gen``)."""
    mask = torch.rand(x.shape[0], generator=gen) < 0.5
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


@dataclass
class StepParts:
    """What every step works on; built once by :func:`step_parts` (train() and benchmarks)."""

    cfg: RunConfig
    accelerator: Accelerator
    model: torch.nn.Module  # the parameters: the EMA's source, what checkpoints save
    net: torch.nn.Module  # what runs forward: ``model`` or its compiled/DDP-prepared wrapper
    ema: torch.nn.Module | None  # None: no EMA update (a benchmark measuring its cost)
    optimizer: torch.optim.Optimizer  # prepared by the accelerator
    gen: torch.Generator  # this process's noise, timesteps, flips and label dropout
    alpha_bar: torch.Tensor  # cumulative alpha product of the noise schedule, (T,)
    guard: bool = True  # skip non-finite steps (one host sync per step); off: benchmarks only


@dataclass(frozen=True)
class StepResult:
    loss: torch.Tensor  # mean over processes, on the device (reading it syncs)
    grad_norm: torch.Tensor  # before clipping
    lr: float
    finite: bool  # False: the step was skipped; weights, optimizer state and EMA unchanged


def train_step(
    parts: StepParts, state: TrainingState, images: np.ndarray, labels: np.ndarray
) -> StepResult:
    """One optimizer step of ``state.step`` on ``images``/``labels`` (uint8 N,3,H,W and int
    labels, memory-mapped or not); advances ``state``. The only copy of the training step."""
    cfg, t, acc = parts.cfg, parts.cfg.train, parts.accelerator
    step, gen, alpha_bar = state.step, parts.gen, parts.alpha_bar
    idx = batch_indices(t.seed, step, t.batch_size, len(images))
    x0, y = load_batch(images, labels, idx[acc.process_index :: acc.num_processes])
    if t.hflip:
        x0 = random_flip(x0, gen)
    noise = torch.randn(x0.shape, generator=gen)
    tt = torch.randint(0, cfg.diffusion.timesteps, (x0.shape[0],), generator=gen)
    class_labels = None
    if cfg.model.conditional:
        class_labels = diffusion.drop_labels(y, t.label_dropout, null_class(cfg.model), gen)
        class_labels = class_labels.to(acc.device)
    x0, noise, tt = (v.to(acc.device) for v in (x0, noise, tt))
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
    # The host sync of the step: the decision to skip a non-finite step must be made before the
    # optimizer touches the weights (a skipped step leaves them unchanged).
    mean_loss = acc.reduce(loss.detach(), "mean")
    finite = not parts.guard or bool(torch.isfinite(mean_loss) & torch.isfinite(grad_norm))
    if finite:
        parts.optimizer.step()
        if parts.ema is not None:
            ema_update(parts.ema, parts.model, ema_decay_at(step, t.ema_decay, t.ema_warmup))
        state.bad_steps_in_a_row = 0
    else:
        state.bad_steps_in_a_row += 1
        state.skipped_steps += 1
    parts.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return StepResult(loss=mean_loss, grad_norm=grad_norm, lr=lr, finite=finite)


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
    # On CUDA the fused kernel (one launch per step): small UNets are launch-bound there; it gave
    # 1.35x img/s over the for-loop AdamW on an H100 (preset base, bench/results/
    # bench-gpu-study.json; fused vs foreach not measured there). foreach elsewhere.
    fused = accelerator.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=t.lr, weight_decay=t.weight_decay, foreach=not fused, fused=fused
    )
    return model, ema, optimizer


def step_generator(cfg: RunConfig, rank: int) -> torch.Generator:
    """This process's generator for the step's draws; also seeds its dropout stream (torch's
    global RNG). Both differ by rank."""
    torch.manual_seed(cfg.train.seed * 1000 + rank + 7)
    return torch.Generator().manual_seed(cfg.train.seed * 1000 + rank + 1)


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
    parts = step_parts(cfg, accelerator, model, ema, optimizer, torch.Generator().manual_seed(0))
    b, s = cfg.train.batch_size, cfg.model.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, 3, s, s), dtype=np.uint8)
    labels = rng.integers(0, max(1, cfg.model.num_classes), b)
    state = TrainingState(step=0)
    for _ in range(warmup):
        train_step(parts, state, images, labels)
    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(parts, state, images, labels)
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
    their own record at once. Every process keeps the window (its losses are already reduced);
    only the main process writes."""

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
        self.last_grad_norm: torch.Tensor | float = float("nan")

    def _window_reset(self) -> None:
        self.window_loss: torch.Tensor | float = 0.0
        self.window_steps = 0
        self.window_t0 = time.perf_counter()

    def step(self, state: TrainingState, result: StepResult) -> None:
        """Count one step: into the window, or as a skipped-step record."""
        if result.finite:
            self.window_loss = self.window_loss + result.loss
            self.window_steps += 1
            self.last_grad_norm = result.grad_norm
        elif self.main:
            _append_jsonl(self.path, {"step": state.step, "skipped": True,
                                      "loss": _num(result.loss), "grad_norm": _num(result.grad_norm),
                                      "skipped_steps": state.skipped_steps})  # fmt: skip
        if self.bar is None:
            return
        if self.budget_seconds:
            spent = min(self.budget_seconds, time.perf_counter() - self.t_start)
            self.bar.set_postfix_str(f"step {state.step}{self.loss_text}", refresh=False)
            self.bar.update(max(0.0, spent - self.bar.n))
        else:
            self.bar.update(1)

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


def _resume(
    ckpt: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
    gen: torch.Generator, rank: int,
) -> TrainingState:  # fmt: skip
    """Weights, optimizer, counters and this process's RNG states from ``ckpt``."""
    state, saved = load_training_state(ckpt, model=model, ema=ema, optimizer=optimizer)
    if f"gen_rank{rank}" not in saved:
        raise DiffscapeError(
            f"{ckpt} was written by a run with fewer processes; resume it with the same "
            "number of processes"
        )
    gen.set_state(saved[f"gen_rank{rank}"])
    torch.set_rng_state(saved[f"torch_rank{rank}"])
    return state


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
        rng_states[f"gen_rank{r}"] = g
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


def _check_bad_steps(state: TrainingState, max_bad_steps: int, run_dir: Path) -> None:
    if state.bad_steps_in_a_row >= max_bad_steps:
        last = latest_checkpoint(run_dir)
        raise NonFiniteLossError(
            f"{state.bad_steps_in_a_row} non-finite losses or gradients in a row at step "
            f"{state.step}; stopping. The last good checkpoint is "
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
    cfg: RunConfig, accelerator: Accelerator, run_dir: Path, resume: bool | None
) -> tuple[StepParts, TrainingState]:
    """The network, its EMA, the optimizer and this process's generator: new, or continued
    from the newest checkpoint."""
    ckpt = _checkpoint_to_resume(run_dir, cfg, resume)
    model, ema, optimizer = build_model(cfg, accelerator)
    rank = accelerator.process_index
    gen = step_generator(cfg, rank)
    state = TrainingState(step=0)
    if ckpt is not None:
        state = _resume(ckpt, model, ema, optimizer, gen, rank)
        if accelerator.is_main_process:
            print(f"resuming {run_dir} from {ckpt.name} (step {state.step})", file=sys.stderr)
    return step_parts(cfg, accelerator, model, ema, optimizer, gen), state


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
        for note in _precision_notes(cfg, accelerator) if main else []:
            print(note, file=sys.stderr)
        parts, state = _start(cfg, accelerator, run_dir, resume)
        run_info = _run_info(cfg, ds, dataset_dir)
        if main:
            atomic.write_json(run_dir / layout.RUN_JSON, run_info)  # the marker first
            atomic.write_text(run_dir / layout.CONFIG_JSON, cfg.to_json())
            _truncate_metrics(run_dir / layout.METRICS_JSONL, state.step)
        accelerator.wait_for_everyone()

        # -- the loop
        images, labels = ds.images("train"), ds.labels("train")
        start_step, final_ckpt, stopped_by = state.step, None, "steps"
        log = TrainLogger(run_dir, cfg, main=main, world=accelerator.num_processes,
                          step=state.step, t_start=t_start, progress=progress, on_log=on_log)  # fmt: skip
        stack.callback(log.close)
        stop = stack.enter_context(_StopFlag())
        while state.step < t.steps:
            result = train_step(parts, state, images, labels)
            log.step(state, result)
            _check_bad_steps(state, t.max_bad_steps, run_dir)
            why = _stop_reason(accelerator, stop, deadline)
            if log.due(state.step) or why is not None:
                log.log(state, result.lr, stopped_by=why)
            if t.sample_every_steps and state.step % t.sample_every_steps == 0 and main:
                _sample_grid(parts.ema, cfg, ds.classes, run_dir, state.step)
            at_ckpt = t.checkpoint_every_steps and state.step % t.checkpoint_every_steps == 0
            if state.step == t.steps or at_ckpt or why is not None:
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
