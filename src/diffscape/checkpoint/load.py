"""Finding and reading checkpoints: the newest that verifies, and an exact resume's states."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffscape.checkpoint.verify import CheckpointError, checkpoint_problem
from diffscape.core import layout
from diffscape.settings.presets import load_config_json
from diffscape.settings.sections import RunConfig


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (those with a marker), oldest first; not yet verified."""
    folder = Path(run_dir) / layout.CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        step = layout.checkpoint_step(p.name)
        if step is not None and (p / layout.COMPLETE).is_file():
            found.append((step, p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint that verifies; None if the run has no complete one yet.

    Damaged ones (files that do not match their marker) are skipped and named on stderr in one
    line; if every complete checkpoint is damaged, a CheckpointError says so."""
    found = list_checkpoints(run_dir)
    damaged: list[tuple[Path, str]] = []
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:  # named on stderr in one line
                first, why = damaged[0]
                one = f"checkpoint {first.name} is damaged ({why})"
                many = f"checkpoints {_describe(damaged)} are damaged"
                print(f"{one if len(damaged) == 1 else many}; using {path.name}", file=sys.stderr)
            return path
        damaged.append((path, problem))
    if not damaged:
        return None
    raise CheckpointError(
        f"no checkpoint of {run_dir} is intact: {_describe(damaged)}. Restore the run from a "
        "backup, or train again into a new --out"
    )


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder (verified), or a run folder (-> its newest checkpoint that verifies)."""
    path = Path(path)
    if (path / layout.COMPLETE).is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(
                f"checkpoint {path} is damaged ({problem}); give the run folder instead to use "
                "its newest intact checkpoint"
            )
        return path
    if (path / layout.CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path} has no complete checkpoint yet")
        return latest
    if path.is_dir() and layout.checkpoint_step(path.name) is not None:
        raise CheckpointError(f"{path} is an incomplete checkpoint (no {layout.COMPLETE} marker)")
    raise CheckpointError(f"{path} is neither a run folder nor a checkpoint folder")


def _describe(damaged: list[tuple[Path, str]]) -> str:
    return ", ".join(f"{p.name} ({problem})" for p, problem in damaged)


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    """Restore CUDA, numpy and python RNG states; return the named states for the caller."""
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    return {k.removeprefix("state_"): v for k, v in tensors.items() if k.startswith("state_")}


@dataclass
class TrainingState:
    """Everything besides weights that an exact resume needs."""

    step: int  # optimizer steps done
    bad_steps_in_a_row: int = 0
    skipped_steps: int = 0  # non-finite steps skipped so far
    # wall-clock seconds this run has trained, over every call: what train.minutes counts and
    # what the LR schedule's budget progress is (0 in checkpoints written before it existed)
    seconds: float = 0.0


def read_checkpoint_config(ckpt: Path) -> RunConfig:
    return load_config_json(Path(ckpt) / layout.CONFIG_JSON)


def load_training_state(
    ckpt: Path,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """Restore weights, optimizer and global RNG states in place; return the counters and the
    named RNG states saved by the caller. The checkpoint is verified first (free when
    :func:`latest_checkpoint` just did it), and only safetensors and JSON are read, so no code
    from the checkpoint can run."""
    ckpt = Path(ckpt)
    if not (ckpt / layout.COMPLETE).is_file():
        raise CheckpointError(f"{ckpt} is incomplete (no {layout.COMPLETE} marker); not loading it")
    problem = checkpoint_problem(ckpt)
    if problem is not None:
        raise CheckpointError(f"checkpoint {ckpt} is damaged ({problem}); not loading it")
    for name, module in ((layout.MODEL_DIR, model), (layout.EMA_DIR, ema)):
        weights = ckpt / name / layout.UNET_WEIGHTS  # listed in the marker: verified above
        try:
            missing, unexpected = module.load_state_dict(_tensors(weights), strict=False)
        except RuntimeError as e:  # shapes that differ from the network's
            raise CheckpointError(f"{weights} does not fit the network: {_first_line(e)}") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{weights} does not fit the network: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
    try:
        meta_opt = _json(ckpt / layout.OPTIMIZER_JSON)
        opt_state = optimizer_from_files(_tensors(ckpt / layout.OPTIMIZER_TENSORS), meta_opt)
        optimizer.load_state_dict(opt_state)
        meta = _json(ckpt / layout.STATE_JSON)
        states = restore_rng(_tensors(ckpt / layout.RNG_TENSORS), meta["rng"])
        counters = TrainingState(
            step=int(meta["step"]),
            bad_steps_in_a_row=int(meta["bad_steps_in_a_row"]),
            skipped_steps=int(meta["skipped_steps"]),
            seconds=float(meta.get("seconds", 0.0)),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{ckpt}: optimizer or RNG state does not fit this run ({_first_line(e)})"
        ) from None
    return counters, states


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({_first_line(e)})") from None
