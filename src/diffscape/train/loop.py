"""The training loop: DDPM on a prepared dataset, through Accelerate, resumable exactly.

Multi-process (``accelerate launch --num_processes N``): the global batch of a step is split
across processes by rank, gradients are averaged by DDP, and only the main process writes (and
holds the run folder's lock). Decisions to stop (signal, budget) are reduced over processes so
that all stop after the same step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from diffscape.checkpoint import TrainingState, latest_checkpoint
from diffscape.core import atomic, layout
from diffscape.core.allocator import in_use
from diffscape.core.errors import DiffscapeError, TrainingInterrupted
from diffscape.data.dataset import Dataset, load_dataset
from diffscape.data.source import BatchSource, make_source
from diffscape.model.unet import count_parameters
from diffscape.sample.generate import generate_images, grid_image
from diffscape.settings.sections import RunConfig
from diffscape.train.logger import TrainLogger, trackers, truncate_metrics
from diffscape.train.processes import launch, process_count, sighup_ignored, worker_outcome
from diffscape.train.resume import checkpoint_to_resume, lock_run_dir, resume_state, run_info, save
from diffscape.train.setup import (
    build_model,
    make_accelerator,
    precision_notes,
    prepare_config,
    step_generator,
    step_parts,
)
from diffscape.train.step import StepParts, process_share, train_step

StoppedBy = Literal["steps", "budget"]


class NonFiniteLossError(DiffscapeError):
    """Too many non-finite steps in a row."""


@dataclass(frozen=True)
class TrainOutcome:
    """What one :func:`train` call did (the study records it in train.json)."""

    run_dir: Path
    steps: int  # optimizer steps done in total
    final_checkpoint: Path
    seconds: float  # wall time of this call
    images_per_second: float  # over this call's steps
    skipped_steps: int
    parameters: int
    processes: int  # Accelerate processes that trained together
    main_process: bool  # whether this is the process that wrote the outputs
    allocator: str  # the memory allocator this process had (allocator.in_use)
    stopped_by: StoppedBy = "steps"  # "budget": train.minutes ended it before train.steps


class _StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP/SIGUSR2; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        # SIGUSR2: Slurm's warning before the time limit, which a study's job passes on as
        # SIGTERM; with train.processes the launcher passes it on as it came. SIGHUP: the
        # terminal closed (left ignored under nohup). Not on Windows: SIGTERM twice, harmless.
        signals = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR2")
        for s in (getattr(signal, name, signal.SIGTERM) for name in signals):
            if s == getattr(signal, "SIGHUP", None) and sighup_ignored():
                continue
            # Not the main thread (e.g. a notebook worker): no handler, Ctrl-C interrupts.
            with contextlib.suppress(ValueError):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT or signum != self.signum:  # a second: the user wants out
            raise KeyboardInterrupt
        # A repeated SIGTERM (SIGUSR2, SIGHUP) is one request delivered twice: a process-group
        # signal (Slurm's scancel, time limit and warning, systemd) reaches each of
        # train.processes' processes directly and again through the launcher, which passes it
        # on (train.processes.FORWARDED)

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _stop_reason(
    accelerator: Accelerator, stop: _StopFlag, seconds: float, budget: float
) -> tuple[str | None, float]:
    """Why to stop after this step ("signal", "budget" or None) and the run's seconds trained,
    both agreed by all processes (the seconds set the next step's LR, which must not differ)."""
    by_signal = stop.signum is not None
    if accelerator.num_processes > 1:
        flags = torch.tensor([float(by_signal), seconds], device=accelerator.device)
        by_signal, seconds = accelerator.reduce(flags, "sum").tolist()
        seconds /= accelerator.num_processes
    why = "signal" if by_signal else ("budget" if seconds >= budget else None)
    return why, seconds


def _start(
    cfg: RunConfig, accelerator: Accelerator, run_dir: Path, resume: bool | None, ds: Dataset
) -> tuple[StepParts, TrainingState, BatchSource]:
    """The batch source (``train.data_on_device``), the network, its EMA, the optimizer and
    this process's generator (where the source makes batches): new, or continued from the
    newest checkpoint. The main process prints what the user should know."""
    t = cfg.train
    ckpt = checkpoint_to_resume(run_dir, cfg, resume)  # refusals first: before any upload
    data, data_note = make_source(t.data_on_device, ds.images("train"), ds.labels("train"),
                                  t.seed, t.batch_size, accelerator.device)  # fmt: skip
    notes = [*precision_notes(cfg, accelerator), data_note]
    model, ema, optimizer = build_model(cfg, accelerator)
    rank = accelerator.process_index
    gen = step_generator(cfg, rank, data.device)
    state = TrainingState(step=0)
    if ckpt is not None:
        state, resume_note = resume_state(ckpt, model, ema, optimizer, gen, rank, t.seed)
        notes += [f"resuming {run_dir} from {ckpt.name} (step {state.step})", resume_note]
        if t.minutes and state.seconds >= 60 * t.minutes and state.step < t.steps:
            notes.append(f"train: the run has used its train.minutes={t.minutes:g} budget; "
                         "raise --minutes to train it longer")  # fmt: skip
    for note in notes if accelerator.is_main_process else []:
        if note:
            print(note, file=sys.stderr)
    return step_parts(cfg, accelerator, model, ema, optimizer, gen), state, data


def train(
    cfg: RunConfig, dataset: str | Path | Dataset, run_dir: str | Path, *,
    resume: bool | None = None, progress: bool = True, cpu: bool | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> TrainOutcome:  # fmt: skip
    """Train (or continue) a DDPM on a dataset folder or a loaded Dataset; returns where the
    final checkpoint is. On a CPU, in ``train.processes`` processes (:mod:`.processes`).

    ``resume=None`` continues automatically when ``run_dir`` holds a checkpoint, ``True``
    requires one, ``False`` refuses to touch a run folder that has one. Training ends at
    ``train.steps``, or earlier when the run has trained ``train.minutes`` (over all its calls;
    checkpoints keep the seconds): the step in progress finishes and a checkpoint is saved
    (``stopped_by="budget"``); a decaying ``train.lr_schedule`` reaches 0 there too.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    cfg = prepare_config(cfg, ds)  # the only place: a caller passes the config as resolved
    if on_log is None and (n := process_count(cfg, cpu)) > 1:  # train.processes
        return launch(n, cfg, _worker, (cfg, str(ds.root), str(run_dir), resume, progress), run_dir)
    return _train_here(cfg, ds, run_dir, resume, progress, cpu, on_log, t_start)


def _train_here(
    cfg: RunConfig, ds: Dataset, run_dir: Path, resume: bool | None, progress: bool,
    cpu: bool | None, on_log: Callable[[dict], None] | None, t_start: float,
) -> TrainOutcome:  # fmt: skip
    """:func:`train` in this process (one of several when launched: ``WORLD_SIZE``)."""
    t = cfg.train
    budget = 60 * t.minutes if t.minutes > 0 else math.inf
    with contextlib.ExitStack() as stack:
        # -- setup: the accelerator, the run folder's lock, the network, resume
        accelerator = make_accelerator(cfg, cpu, trackers(cfg, run_dir))
        lock_run_dir(stack, run_dir, accelerator)
        main = accelerator.is_main_process
        parts, state, data = _start(cfg, accelerator, run_dir, resume, ds)
        info = _write_run_files(cfg, ds, run_dir, state.step, accelerator)

        # -- the loop
        start_step, final_ckpt = state.step, None
        log = TrainLogger(run_dir, cfg, accelerator, step=state.step, progress=progress,
                          on_log=on_log)  # fmt: skip
        stack.callback(log.close)
        stop = stack.enter_context(_StopFlag())
        before = state.seconds  # trained in earlier calls (the same on every process)
        while state.step < t.steps and state.seconds < budget:
            result = train_step(parts, state, data)
            log.step(state, result)
            why, state.seconds = _stop_reason(
                accelerator, stop, before + time.perf_counter() - t_start, budget
            )
            saving = _log_and_check(log, state, result.lr, why, cfg, run_dir)
            _grid_when_due(log, parts, ds.classes, run_dir, state.step, end=False)
            if saving:
                final_ckpt = save(parts, state, run_dir, info)
            if why == "signal":
                raise _interrupted(stop, state, final_ckpt, ds.root, run_dir)

        # -- the end: by train.steps, or by the budget (also: resumed with none left)
        stopped_by = "steps" if state.step >= t.steps else "budget"
        final_ckpt = final_ckpt or latest_checkpoint(run_dir)  # None: nothing to train
        _grid_when_due(log, parts, ds.classes, run_dir, state.step, end=True)
    seconds = time.perf_counter() - t_start
    return TrainOutcome(
        run_dir=run_dir, steps=state.step, final_checkpoint=Path(final_ckpt or run_dir),
        seconds=seconds, skipped_steps=state.skipped_steps,
        images_per_second=(state.step - start_step) * t.batch_size / max(seconds, 1e-9),
        parameters=count_parameters(parts.model), processes=accelerator.num_processes,
        main_process=main, allocator=in_use(), stopped_by=stopped_by,
    )  # fmt: skip


def _log_and_check(
    log: TrainLogger, state: TrainingState, lr: float, why: str | None, cfg: RunConfig,
    run_dir: Path,
) -> bool:  # fmt: skip
    """After a step: the non-finite check and the log line when due; whether to save now."""
    t = cfg.train
    at_ckpt = t.checkpoint_every_steps and state.step % t.checkpoint_every_steps == 0
    saving = bool(state.step == t.steps or at_ckpt or why is not None)
    if saving or log.due(state.step):  # the step's only host sync, once per window
        gave_up = log.settle(state, t.max_bad_steps)
        if gave_up is not None:
            last = latest_checkpoint(run_dir)
            raise NonFiniteLossError(
                f"{t.max_bad_steps} non-finite losses or gradients in a row at step "
                f"{gave_up}; stopping. The last good checkpoint is "
                f"{last if last else '(none yet)'}. Lower train.lr, keep train.grad_clip on, "
                "or use train.precision=fp32."
            )
    if log.due(state.step) or why is not None:
        log.log(state, lr, stopped_by=why)
    return saving


def _write_run_files(
    cfg: RunConfig, ds: Dataset, run_dir: Path, step: int, accelerator: Accelerator
) -> dict:
    """run.json (the folder's marker, first) and config.json; the log cut back to ``step``.
    Only the main process writes; every process waits for it. Returns run.json's record."""
    info = run_info(cfg, ds)
    if accelerator.is_main_process:
        atomic.write_json(run_dir / layout.RUN_JSON, info)
        atomic.write_text(run_dir / layout.CONFIG_JSON, cfg.to_json())
        truncate_metrics(run_dir / layout.METRICS_JSONL, step)
    accelerator.wait_for_everyone()
    return info


def _worker(cfg: RunConfig, dataset: str, run_dir: str, resume: bool | None, progress: bool) -> Any:
    """One of ``train.processes``' processes: its training, or its error
    (:func:`~diffscape.train.processes.worker_outcome`)."""
    return worker_outcome(
        lambda: train(cfg, dataset, run_dir, resume=resume, progress=progress, cpu=True)
    )


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


def _grid_when_due(
    log: TrainLogger, parts: StepParts, classes: list[str], run_dir: Path, step: int, end: bool
) -> None:
    """A sample grid every ``train.sample_every_steps``, and one at the end when the run has
    none; each also to the tracker. From the EMA weights with fixed seeds: one row per class (or
    2 rows unconditional), so grids at different steps are comparable.

    Every process makes its share of the images (each depends only on its seed, class and index,
    not on who makes it or beside which others) and the main process writes the grid: with two
    processes of one thread, the 32 images of a grid took 6.3 s on one of them while the other
    waited (7 grids, 7% of a 10-minute budget at 100 img/s); shared, half that."""
    cfg, per_row, acc = parts.cfg, 8, parts.accelerator
    every = cfg.train.sample_every_steps
    if not every:
        return
    if end:  # the folder is the main process's to see; the others follow its answer
        due = [not (run_dir / layout.TRAIN_SAMPLES).is_dir()]
        due = broadcast_object_list(due) if acc.num_processes > 1 else due
        if not due[0]:
            return
    elif step % every:
        return
    if cfg.model.conditional:
        class_idx = [c for c in range(len(classes)) for _ in range(per_row)]
        index = [i for _ in classes for i in range(per_row)]
    else:
        class_idx = [None] * (2 * per_row)
        index = list(range(2 * per_row))
    mine = process_share(acc)
    imgs = generate_images(
        parts.ema,
        cfg,
        class_idx=class_idx[mine],
        index=index[mine],
        seed=1234,
        sampler="ddim",
        steps=cfg.train.sample_steps,
        guidance=1.0,
        progress=False,
    )
    if acc.num_processes > 1:
        shares = gather_object([imgs])
        imgs = np.empty((len(index), *imgs.shape[1:]), imgs.dtype)
        for rank, share in enumerate(shares):
            imgs[rank :: acc.num_processes] = share  # as process_share split them
    if not log.main:
        return
    names = classes if cfg.model.conditional else ["samples"]
    path = run_dir / layout.TRAIN_SAMPLES / layout.train_grid_name(step)
    with atomic.atomic_path(path) as tmp:
        grid_image(imgs, names, per_row).save(tmp, format="PNG")
    log.image(path, step)
