"""Writing checkpoints: the weights, optimizer and RNG states as safetensors + JSON (torch's own
format is a pickle) into a temporary folder beside the checkpoint (``core.atomic``), completed
with the marker and renamed into place (rename is atomic on one file system); older ones are
pruned only afterwards, so a kill at any moment leaves the last complete checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from diffscape import __version__
from diffscape.checkpoint.load import TrainingState, list_checkpoints
from diffscape.checkpoint.verify import write_marker
from diffscape.core import atomic, layout
from diffscape.settings.sections import RunConfig


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
    final = Path(run_dir) / layout.CHECKPOINTS / layout.checkpoint_name(state.step)
    tmp = atomic.tmp_dir_beside(final)
    try:
        model.save_pretrained(tmp / layout.MODEL_DIR, safe_serialization=True)
        ema.save_pretrained(tmp / layout.EMA_DIR, safe_serialization=True)
        opt_tensors, opt_meta = optimizer_to_files(optimizer)
        save_file(opt_tensors, tmp / layout.OPTIMIZER_TENSORS)
        # compact and strict (no default=str): these are read back into the optimizer and RNGs
        atomic.write_text(tmp / layout.OPTIMIZER_JSON, json.dumps(opt_meta))
        rng_tensors, rng_meta = rng_to_files(rng_states)
        save_file(rng_tensors, tmp / layout.RNG_TENSORS)
        meta = {
            **dataclasses.asdict(state),  # step, bad_steps_in_a_row, skipped_steps, seconds
            "rng": rng_meta,
            "diffscape_version": __version__,
            "torch_version": torch.__version__,
        }
        atomic.write_text(tmp / layout.STATE_JSON, json.dumps(meta))
        atomic.write_text(tmp / layout.CONFIG_JSON, cfg.to_json())
        atomic.write_json(tmp / layout.RUN_JSON, info or {})
        write_marker(tmp)
    except BaseException as e:
        atomic.remove_tmp(tmp)  # a failed save leaves nothing behind; the previous ones are intact
        raise atomic.disk_full(e, final, tmp, _checkpoint_bytes(model, optimizer)) from None
    # replaces the same step saved again (a signal right after a save)
    atomic.publish_dir(tmp, final)
    prune_checkpoints(run_dir, keep_last, milestone_every_steps)
    return final


def _checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About what a checkpoint takes on disk: the weights twice (model, EMA), the optimizer's
    tensors, and a little JSON."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(
        t.numel() * t.element_size()
        for st in optimizer.state.values()
        for t in st.values()
        if isinstance(t, torch.Tensor)
    )
    return 2 * weights + moments + 65536


def prune_checkpoints(run_dir: Path, keep_last: int, milestone_every_steps: int = 0) -> None:
    """Delete complete checkpoints beyond the last ``keep_last`` (milestones stay), and the
    leftovers of killed saves: temporaries of processes that no longer run, and step folders
    without a marker."""
    folder = Path(run_dir) / layout.CHECKPOINTS
    complete = list_checkpoints(run_dir)
    keep = {p for _, p in complete[-keep_last:]}
    for step, path in complete:
        milestone = milestone_every_steps and step % milestone_every_steps == 0
        if path not in keep and not milestone:
            shutil.rmtree(path)
    atomic.clean_stale_tmp(folder)
    for p in folder.iterdir():
        if layout.checkpoint_step(p.name) is not None and not (p / layout.COMPLETE).exists():
            shutil.rmtree(p, ignore_errors=True)
