"""The training loop: DDPM on a prepared dataset, through Accelerate, resumable exactly.

Exact resume rests on three things: every random draw comes from generators whose state is
checkpointed (noise, timesteps, flips, label dropout on ``gen``; dropout on torch's global RNG);
the data order is a pure function of (seed, step), so there is no loader state to save; and the
LR is a pure function of the step.

Multi-process (``accelerate launch --num_processes N``): the global batch of a step is split
across processes by rank, gradients are averaged by DDP, and only the main process writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object

from diffscape import diffusion
from diffscape.checkpoint import (
    TrainingState,
    latest_checkpoint,
    load_training_state,
    read_checkpoint_config,
    save_checkpoint,
)
from diffscape.config import ConfigError, RunConfig, shape_changes, with_changes
from diffscape.data.dataset import Dataset, load_dataset
from diffscape.errors import DiffscapeError
from diffscape.model import build_unet, count_parameters, null_class


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


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


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


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


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
    requires one, ``False`` refuses to touch a run folder that has one.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    ds = load_dataset(dataset_dir)
    cfg = prepare_config(cfg, ds)
    t = cfg.train
    if t.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    on_cpu = bool(cpu) if cpu is not None else not torch.cuda.is_available()
    native_bf16 = on_cpu and cpu_has_bf16()
    precision = resolve_precision(t.precision, "cpu" if on_cpu else "cuda", native_bf16)

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one process-wide state and refuses a second Accelerator with other
        # settings (e.g. bf16 after fp32). A single process may train several runs in a row
        # (sweeps, notebooks), so forget the previous run's state first.
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        cpu=on_cpu, mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % world:
        raise ConfigError(
            f"train.batch_size {t.batch_size} must be divisible by the {world} processes"
        )
    main = accelerator.is_main_process
    if t.precision == "auto" and main:
        print(f"precision: auto -> {precision} on {accelerator.device.type}", file=sys.stderr)
    if precision == "bf16" and on_cpu and not native_bf16 and main:
        print(
            "warning: train.precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) "
            "is usually slower than fp32; set train.precision=fp32",
            file=sys.stderr,
        )

    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and resume is False:
        raise DiffscapeError(
            f"{run_dir} already holds checkpoints; use --resume to continue it or pick a new --out"
        )
    if ckpt is None and resume is True:
        raise DiffscapeError(f"--resume: {run_dir} has no complete checkpoint to continue from")
    if ckpt is not None:
        old = read_checkpoint_config(ckpt)
        changed = shape_changes(old, cfg)
        if changed:
            raise ConfigError("cannot resume with a different network shape: " + "; ".join(changed))

    torch.manual_seed(t.seed)  # weights; identical on every process
    model = build_unet(cfg.model)
    ema = build_unet(cfg.model)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    params = count_parameters(model)
    # On CUDA the fused kernel (one launch per step): small UNets are launch-bound there; it gave
    # 1.35x img/s over the for-loop AdamW on an H100 (preset base, bench/results/
    # bench-gpu-study.json; fused vs foreach not measured there). foreach elsewhere.
    fused = accelerator.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=t.lr,
        weight_decay=t.weight_decay,
        foreach=not fused,
        fused=fused,
    )
    # One generator per process for noise, timesteps, flips and label dropout; ranks differ.
    gen = torch.Generator().manual_seed(t.seed * 1000 + rank + 1)
    # Per-process dropout streams (torch's global RNG) differ by rank too.
    torch.manual_seed(t.seed * 1000 + rank + 7)
    state = TrainingState(step=0)
    if ckpt is not None:
        state, saved = load_training_state(ckpt, model=model, ema=ema, optimizer=optimizer)
        if f"gen_rank{rank}" not in saved:
            raise DiffscapeError(
                f"{ckpt} was written by a run with fewer processes; resume it with the same "
                "number of processes"
            )
        gen.set_state(saved[f"gen_rank{rank}"])
        torch.set_rng_state(saved[f"torch_rank{rank}"])
        if main:
            print(f"resuming {run_dir} from {ckpt.name} (step {state.step})", file=sys.stderr)

    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema.to(accelerator.device)
    train_model = torch.compile(model) if t.compile else model
    train_model, optimizer = accelerator.prepare(train_model, optimizer)
    unwrapped = model  # same parameters as the prepared wrapper

    run_info = {
        "classes": ds.classes if cfg.model.conditional else [],
        "dataset": {
            "path": str(Path(dataset_dir).resolve()),
            "content_hash": ds.content_hash,
            "classes": ds.classes,
            "size": ds.size,
            "train_images": ds.count("train"),
        },
    }
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
        _write_json(run_dir / "run.json", run_info)
        _truncate_metrics(run_dir / "metrics.jsonl", state.step)
    accelerator.wait_for_everyone()

    images = ds.images("train")
    labels = ds.labels("train")
    n = len(images)
    alpha_bar = diffusion.alphas_cumprod(cfg.diffusion)
    per_proc = t.batch_size // world
    null = null_class(cfg.model)

    tb = _tensorboard(run_dir) if main else None
    log_path = run_dir / "metrics.jsonl"
    start_step = state.step
    window_loss = torch.zeros((), device=accelerator.device)
    window_steps = 0
    window_t0 = time.perf_counter()
    last_grad_norm = float("nan")
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)

    def save() -> Path | None:
        # Every process's generator and dropout RNG, so that each continues exactly.
        mine = [gen.get_state(), torch.get_rng_state()]
        everyone = gather_object([mine]) if world > 1 else [mine]
        rng_states = {}
        for r, (g, c) in enumerate(everyone):
            rng_states[f"gen_rank{r}"] = g
            rng_states[f"torch_rank{r}"] = c
        path = None
        if main:
            path = save_checkpoint(
                run_dir,
                cfg=cfg,
                model=unwrapped,
                ema=ema,
                optimizer=optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                state=state,
                rng_states=rng_states,
                keep_last=t.keep_last,
                milestone_every_steps=t.milestone_every_steps,
                info=run_info,
            )
        accelerator.wait_for_everyone()
        return path

    final_ckpt: Path | None = None
    with _StopFlag() as stop:
        while state.step < t.steps:
            step = state.step
            idx = batch_indices(t.seed, step, t.batch_size, n)[rank::world]
            x0, y = load_batch(images, labels, idx)
            if t.hflip:
                x0 = _flip(x0, gen)
            noise = torch.randn(x0.shape, generator=gen)
            tt = torch.randint(0, cfg.diffusion.timesteps, (per_proc,), generator=gen)
            class_labels = None
            if cfg.model.conditional:
                class_labels = diffusion.drop_labels(y, t.label_dropout, null, gen)
                class_labels = class_labels.to(accelerator.device)
            x0, noise, tt = (v.to(accelerator.device) for v in (x0, noise, tt))
            if t.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            x_t = diffusion.q_sample(x0, noise, tt, alpha_bar)
            target = diffusion.training_target(x0, noise, tt, alpha_bar, cfg.diffusion.prediction)

            lr = lr_at(step, t.lr, t.warmup_steps, t.steps, t.lr_schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with accelerator.autocast():
                pred = train_model(x_t, tt, class_labels=class_labels).sample
            weights = diffusion.loss_weights(
                tt, alpha_bar, cfg.diffusion.prediction, cfg.diffusion.loss_weighting,
                cfg.diffusion.min_snr_gamma,
            )  # fmt: skip
            if weights is None:
                loss = F.mse_loss(pred.float(), target.float())
            else:
                per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
                loss = (weights * per_sample).mean()
            accelerator.backward(loss)
            max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
            grad_norm = accelerator.clip_grad_norm_(train_model.parameters(), max_norm)
            # One host sync per step: the decision to skip a non-finite step must be made
            # before the optimizer touches the weights (a skipped step leaves them unchanged).
            mean_loss = accelerator.reduce(loss.detach(), "mean")
            finite = bool(torch.isfinite(mean_loss) & torch.isfinite(grad_norm))
            if finite:
                optimizer.step()
                ema_update(ema, unwrapped, ema_decay_at(step, t.ema_decay, t.ema_warmup))
                state.bad_steps_in_a_row = 0
                window_loss += mean_loss
                window_steps += 1
                last_grad_norm = grad_norm
            else:
                state.bad_steps_in_a_row += 1
                state.skipped_steps += 1
                if main:
                    _append_jsonl(
                        log_path,
                        {
                            "step": step + 1,
                            "skipped": True,
                            "loss": _num(mean_loss),
                            "grad_norm": _num(grad_norm),
                            "skipped_steps": state.skipped_steps,
                        },
                    )
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if state.bad_steps_in_a_row >= t.max_bad_steps:
                last = latest_checkpoint(run_dir)
                raise NonFiniteLossError(
                    f"{state.bad_steps_in_a_row} non-finite losses or gradients in a row at step "
                    f"{state.step}; stopping. The last good checkpoint is "
                    f"{last if last else '(none yet)'}. Lower train.lr, keep train.grad_clip on, "
                    "or use train.precision=fp32."
                )

            if state.step % t.log_every_steps == 0 or state.step == t.steps:
                elapsed = time.perf_counter() - window_t0
                record = {
                    "step": state.step,
                    "loss": float(window_loss) / max(1, window_steps),
                    "lr": lr,
                    "grad_norm": _num(last_grad_norm),
                    "images_per_second": window_steps * t.batch_size / max(elapsed, 1e-9),
                    "skipped_steps": state.skipped_steps,
                    "processes": world,
                    "seconds": time.perf_counter() - t_start,
                }
                if main:
                    _append_jsonl(log_path, record)
                    if tb is not None:
                        for k in ("loss", "lr", "grad_norm", "images_per_second"):
                            tb.add_scalar(f"train/{k}", record[k], state.step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                    if on_log is not None:
                        on_log(record)
                window_loss.zero_()
                window_steps = 0
                window_t0 = time.perf_counter()
            if bar is not None:
                bar.update(1)

            if t.sample_every_steps and state.step % t.sample_every_steps == 0 and main:
                _sample_grid(ema, cfg, ds.classes, run_dir / "samples", state.step, t.sample_steps)

            stop_now = _any_process(accelerator, stop.signum is not None)
            at_ckpt = t.checkpoint_every_steps and state.step % t.checkpoint_every_steps == 0
            if state.step == t.steps or at_ckpt or stop_now:
                final_ckpt = save()
            if stop_now:
                if bar is not None:
                    bar.close()
                name = signal.Signals(stop.signum).name if stop.signum else "a signal"
                raise TrainingInterrupted(
                    f"stopped by {name} after step {state.step}; saved {final_ckpt or 'checkpoint'}"
                    f". Resume with the same command plus --resume "
                    f"(e.g. diffscape train {dataset_dir} --out {run_dir} --resume)",
                    signum=stop.signum or signal.SIGINT,
                )
    if bar is not None:
        bar.close()
    if tb is not None:
        tb.close()
    if final_ckpt is None:  # already complete when called: nothing trained
        final_ckpt = latest_checkpoint(run_dir)
    if main and t.sample_every_steps and not (run_dir / "samples").is_dir():
        _sample_grid(ema, cfg, ds.classes, run_dir / "samples", state.step, t.sample_steps)
    seconds = time.perf_counter() - t_start
    steps_done = state.step - start_step
    accelerator.end_training()
    return RunResult(
        run_dir=run_dir,
        steps=state.step,
        final_checkpoint=Path(final_ckpt) if final_ckpt else run_dir,
        seconds=seconds,
        images_per_second=steps_done * t.batch_size / max(seconds, 1e-9),
        skipped_steps=state.skipped_steps,
        parameters=params,
        processes=world,
        main_process=main,
    )


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


def _num(x: torch.Tensor | float) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True when any process got a stop signal (all must save and stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, "sum").item() > 0)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint we continue from, so the log
    reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _tensorboard(run_dir: Path):  # noqa: ANN202 - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _sample_grid(
    ema: torch.nn.Module,
    cfg: RunConfig,
    classes: list[str],
    folder: Path,
    step: int,
    steps: int,
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
        steps=steps,
        guidance=1.0,
        progress=False,
    )
    names = classes if cfg.model.conditional else ["samples"]
    folder.mkdir(parents=True, exist_ok=True)
    grid_image(imgs, names, per_row).save(folder / f"step-{step:07d}.png")
