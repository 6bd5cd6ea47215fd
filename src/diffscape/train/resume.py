"""Exact resume rests on three things: every random draw comes from generators whose state is
checkpointed (noise, timesteps, flips, label dropout on ``gen``; dropout on torch's global RNG);
the data order is a pure function of (seed, step), so there is no loader state to save; and the
LR is a pure function of the step (and, with a wall-clock budget, of the seconds trained, which
are checkpointed too).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from diffscape.checkpoint import (
    TrainingState,
    latest_checkpoint,
    load_training_state,
    read_checkpoint_config,
    save_checkpoint,
)
from diffscape.core import atomic, layout
from diffscape.core.errors import DiffscapeError
from diffscape.core.lock import FolderBusy, hold
from diffscape.data.dataset import Dataset
from diffscape.settings.engine import ConfigError
from diffscape.settings.presets import shape_changes
from diffscape.settings.sections import RunConfig
from diffscape.train.setup import any_process
from diffscape.train.step import StepParts, inner_optimizer


def lock_run_dir(stack: contextlib.ExitStack, run_dir: Path, accelerator: Accelerator) -> None:
    """The main process holds the run folder's lock for the whole run, taken before anything
    is written; every process learns whether it got it (FolderBusy names the holder)."""
    layout.check_out(run_dir, "run")
    busy: FolderBusy | None = None
    if accelerator.is_main_process:
        try:
            stack.enter_context(hold(run_dir, "run folder"))
        except FolderBusy as e:
            busy = e
    if any_process(accelerator, busy is not None)[0]:
        raise busy or FolderBusy(f"run folder {run_dir} is in use by another process")
    if accelerator.is_main_process:
        atomic.clean_stale_tmp(run_dir)  # leftovers of killed writers (run.json, metrics...)


def checkpoint_to_resume(run_dir: Path, cfg: RunConfig, resume: bool | None) -> Path | None:
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


def resume_state(
    ckpt: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
    gen: torch.Generator, rank: int, seed: int,
) -> tuple[TrainingState, str | None]:  # fmt: skip
    """Weights, optimizer, counters and this process's RNG states from ``ckpt``; and a note
    when the step generator could not continue (the checkpoint's is of another device).

    Every process takes rank 0's step generator (they are the same; checkpoints written before
    this rule had one per rank). A checkpoint of another process count continues too
    (``train.processes=0`` decides by the load at each start): a rank it did not have seeds its
    dropout stream from (seed, rank, step). Exact with the same count; with another, up to
    float rounding (and dropout, where the model has any)."""
    state, saved = load_training_state(ckpt, model=model, ema=ema, optimizer=optimizer)
    note = None
    if gen_state_key(gen, 0) in saved:
        gen.set_state(saved[gen_state_key(gen, 0)])
    else:
        # train.data_on_device resolved otherwise than in the run that saved (e.g. "auto" with
        # less free GPU memory): the data order is still exact, the noise draws go on from a seed
        gen.manual_seed(int(np.random.SeedSequence([seed, 0, state.step]).generate_state(1)[0]))
        note = (f"note: {ckpt.name} holds the step generator of another device (the batch source "
                "changed, see train.data_on_device); the data order continues exactly, the "
                "noise draws from a new seed")  # fmt: skip
    if f"torch_rank{rank}" in saved:
        torch.set_rng_state(saved[f"torch_rank{rank}"])
    else:
        torch.manual_seed(
            int(np.random.SeedSequence([seed, rank, state.step]).generate_state(1)[0])
        )
    return state, note


def run_info(cfg: RunConfig, ds: Dataset) -> dict:
    return {
        "classes": ds.classes if cfg.model.conditional else [],
        "dataset": {
            "path": str(ds.root.resolve()),
            "content_hash": ds.content_hash,
            "classes": ds.classes,
            "size": ds.size,
            "train_images": ds.count("train"),
        },
    }


def save(parts: StepParts, state: TrainingState, run_dir: Path, info: dict) -> Path | None:
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
        path = save_checkpoint(
            run_dir, cfg=parts.cfg, model=parts.model, ema=parts.ema,
            optimizer=inner_optimizer(parts.optimizer),
            state=state, rng_states=rng_states, keep_last=t.keep_last,
            milestone_every_steps=t.milestone_every_steps, info=info,
        )  # fmt: skip
    acc.wait_for_everyone()
    return path
