"""Checkpoints: a folder of safetensors + JSON, written atomically, never unpickled.

``RUN/checkpoints/step-000500/`` holds

- ``model/`` and ``ema/``: diffusers ``UNet2DModel`` folders (``config.json`` + safetensors),
  loadable with ``UNet2DModel.from_pretrained``;
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW tensors and its hyperparameters;
- ``rng.safetensors``: torch CPU/CUDA RNG states and every noise generator's state;
- ``state.json``: step, consecutive bad steps, numpy/python RNG states, versions;
- ``config.json``: the run's ``RunConfig``; ``run.json``: class names and the dataset's identity;
- ``COMPLETE``: written last. A folder without it is never read.

A checkpoint is written to ``checkpoints/.tmp-step-N``, completed with the marker and renamed
into place (rename is atomic on one file system); older ones are deleted only afterwards, so a
kill at any moment leaves the last complete checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffscape import __version__
from diffscape.config import RunConfig, load_config_json
from diffscape.errors import DiffscapeError

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(DiffscapeError):
    pass


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder (-> its latest complete checkpoint)."""
    path = Path(path)
    if (path / COMPLETE).is_file():
        return path
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path} has no complete checkpoint yet")
        return latest
    if path.is_dir() and _STEP_DIR.match(path.name):
        raise CheckpointError(f"{path} is an incomplete checkpoint (no {COMPLETE} marker)")
    raise CheckpointError(f"{path} is neither a run folder nor a checkpoint folder")


# --- optimizer state as safetensors + JSON (torch's own format is a pickle) -------------------


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# --- RNG states ------------------------------------------------------------------------------


def rng_to_files(states: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Torch CUDA states plus the caller's named states (per-process generators and CPU RNG);
    numpy and python RNG states go to JSON."""
    tensors = {f"state_{k}": v.contiguous() for k, v in states.items()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": [py_version, list(py_state), py_gauss],
    }
    return tensors, meta


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


# --- save / load -------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """Everything besides weights that an exact resume needs."""

    step: int  # optimizer steps done
    bad_steps_in_a_row: int = 0
    skipped_steps: int = 0  # non-finite steps skipped so far


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_marker(folder: Path) -> None:
    """The last file of a checkpoint; its presence means every other file is complete."""
    with open(folder / COMPLETE, "w") as f:
        f.write("complete\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    run_dir: Path,
    *,
    cfg: RunConfig,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    rng_states: dict[str, torch.Tensor],
    keep_last: int,
    milestone_every_steps: int = 0,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint atomically, then prune old ones. Returns its folder."""
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(state.step)
    tmp = folder / f".tmp-{checkpoint_name(state.step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    ema.save_pretrained(tmp / "ema", safe_serialization=True)
    opt_tensors, opt_meta = optimizer_to_files(optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    rng_tensors, rng_meta = rng_to_files(rng_states)
    save_file(rng_tensors, tmp / "rng.safetensors")
    meta = {
        "step": state.step,
        "bad_steps_in_a_row": state.bad_steps_in_a_row,
        "skipped_steps": state.skipped_steps,
        "rng": rng_meta,
        "diffscape_version": __version__,
        "torch_version": torch.__version__,
    }
    (tmp / "state.json").write_text(json.dumps(meta))
    cfg.save(tmp / "config.json")
    (tmp / "run.json").write_text(json.dumps(info or {}, indent=2) + "\n")
    _fsync_dir(tmp)
    write_marker(tmp)
    if final.exists():  # the same step saved again (e.g. a signal right after a save)
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(folder)
    prune_checkpoints(run_dir, keep_last, milestone_every_steps)
    return final


def prune_checkpoints(run_dir: Path, keep_last: int, milestone_every_steps: int = 0) -> None:
    """Delete complete checkpoints beyond the last ``keep_last`` (milestones stay), and any
    leftover temporary or incomplete folders from killed saves."""
    folder = Path(run_dir) / "checkpoints"
    complete = list_checkpoints(run_dir)
    keep = {p for _, p in complete[-keep_last:]}
    for step, path in complete:
        milestone = milestone_every_steps and step % milestone_every_steps == 0
        if path not in keep and not milestone:
            shutil.rmtree(path)
    for p in folder.iterdir():
        if p.name.startswith(".tmp-") or (_STEP_DIR.match(p.name) and not (p / COMPLETE).exists()):
            shutil.rmtree(p, ignore_errors=True)


def read_checkpoint_config(ckpt: Path) -> RunConfig:
    return load_config_json(Path(ckpt) / "config.json")


def load_training_state(
    ckpt: Path,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """Restore weights, optimizer and global RNG states in place; return the counters and the
    named RNG states saved by the caller. Only safetensors and JSON are read, so no code from
    the checkpoint can run."""
    ckpt = Path(ckpt)
    if not (ckpt / COMPLETE).is_file():
        raise CheckpointError(f"{ckpt} is incomplete (no {COMPLETE} marker); not loading it")
    for name, module in (("model", model), ("ema", ema)):
        weights = _weights_file(ckpt / name)
        missing, unexpected = module.load_state_dict(load_file(weights), strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{weights} does not fit the network: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
    meta_opt = json.loads((ckpt / "optimizer.json").read_text())
    opt_tensors = load_file(ckpt / "optimizer.safetensors")
    optimizer.load_state_dict(optimizer_from_files(opt_tensors, meta_opt))
    meta = json.loads((ckpt / "state.json").read_text())
    states = restore_rng(load_file(ckpt / "rng.safetensors"), meta["rng"])
    counters = TrainingState(
        step=int(meta["step"]),
        bad_steps_in_a_row=int(meta["bad_steps_in_a_row"]),
        skipped_steps=int(meta["skipped_steps"]),
    )
    return counters, states


def _weights_file(folder: Path) -> Path:
    path = folder / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        # Anything but safetensors would mean unpickling: refuse instead.
        others = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
        raise CheckpointError(
            f"{folder} has no diffusion_pytorch_model.safetensors (found: {others}); "
            "diffscape only loads safetensors weights"
        )
    return path
