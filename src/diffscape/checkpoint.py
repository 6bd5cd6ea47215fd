"""Checkpoints: a folder of safetensors + JSON, written atomically, verified, never unpickled.

``RUN/checkpoints/step-0000500/`` holds

- ``model/`` and ``ema/``: diffusers ``UNet2DModel`` folders (``config.json`` + safetensors),
  loadable with ``UNet2DModel.from_pretrained``;
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW tensors and its hyperparameters;
- ``rng.safetensors``: torch CPU/CUDA RNG states and every noise generator's state;
- ``state.json``: step, consecutive bad steps, numpy/python RNG states, versions;
- ``config.json``: the run's ``RunConfig``; ``run.json``: class names and the dataset's identity;
- ``COMPLETE``: written last, JSON listing every other file with its size and sha256. A folder
  without it is never read; one whose files do not match it is damaged and skipped.

A checkpoint is written to a PID-tagged temporary folder beside it, completed with the marker and
renamed into place (rename is atomic on one file system); older ones are deleted only afterwards,
so a kill at any moment leaves the last complete checkpoint intact. A crash of the machine (or a
full disk, or a copy cut short) can still leave files shorter than the marker says: loading
verifies every file against the marker and falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffscape import __version__
from diffscape.atomic import (
    clean_stale_tmp,
    disk_full,
    is_disk_full,
    make_tmp_dir,
    remove_tmp,
    tmp_name,
    write_json,
    write_text,
)
from diffscape.config import RunConfig, load_config_json
from diffscape.errors import DiffscapeError
from diffscape.layout import (
    CHECKPOINTS,
    COMPLETE,
    CONFIG_JSON,
    EMA_DIR,
    MODEL_DIR,
    OPTIMIZER_JSON,
    OPTIMIZER_TENSORS,
    RNG_TENSORS,
    RUN_JSON,
    STATE_JSON,
    TMP_MARKER,
    UNET_WEIGHTS,
    checkpoint_name,
    checkpoint_step,
    safe_component,
)

WEIGHTS = UNET_WEIGHTS
MARKER_FORMAT = "diffscape-checkpoint/1"
# Every file a loader reads; a marker that does not list one of them does not vouch for it.
REQUIRED = (
    f"{MODEL_DIR}/{WEIGHTS}",
    f"{MODEL_DIR}/{CONFIG_JSON}",
    f"{EMA_DIR}/{WEIGHTS}",
    f"{EMA_DIR}/{CONFIG_JSON}",
    OPTIMIZER_TENSORS,
    OPTIMIZER_JSON,
    RNG_TENSORS,
    STATE_JSON,
    CONFIG_JSON,
)
_CHUNK = 1 << 20  # bytes per read while hashing
_MAX_MARKER_BYTES = 1 << 20  # a marker lists a dozen files; anything bigger is not one
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
# bytes per element of every dtype the safetensors format defines
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
                "F64": 8}  # fmt: skip


class CheckpointError(DiffscapeError):
    pass


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (those with a marker), oldest first; not yet verified."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        step = checkpoint_step(p.name)
        if step is not None and (p / COMPLETE).is_file():
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
            _announce_damaged(damaged, path)
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
    if (path / COMPLETE).is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(
                f"checkpoint {path} is damaged ({problem}); give the run folder instead to use "
                "its newest intact checkpoint"
            )
        return path
    if (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path} has no complete checkpoint yet")
        return latest
    if path.is_dir() and checkpoint_step(path.name) is not None:
        raise CheckpointError(f"{path} is an incomplete checkpoint (no {COMPLETE} marker)")
    raise CheckpointError(f"{path} is neither a run folder nor a checkpoint folder")


def _describe(damaged: list[tuple[Path, str]]) -> str:
    return ", ".join(f"{p.name} ({problem})" for p, problem in damaged)


def _announce_damaged(damaged: list[tuple[Path, str]], using: Path) -> None:
    """One line on stderr naming the damaged checkpoints skipped."""
    if not damaged:
        return
    if len(damaged) == 1:
        line = f"checkpoint {damaged[0][0].name} is damaged ({damaged[0][1]}); using {using.name}"
    else:
        line = f"checkpoints {_describe(damaged)} are damaged; using {using.name}"
    print(line, file=sys.stderr)


# --- verification ------------------------------------------------------------------------------


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file below ``folder`` (but the marker) -> its size and sha256, by relative path."""
    folder = Path(folder)
    records = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (COMPLETE, TMP_MARKER):
            size, digest, _ = _read_file(path, digest=True)
            records[path.relative_to(folder).as_posix()] = {"size": size, "sha256": digest}
    return records


def write_marker(folder: Path) -> None:
    """The last file of a checkpoint: every other file with its size and sha256. Its presence
    means every other file was complete when it was written."""
    write_json(Path(folder) / COMPLETE, {"format": MARKER_FORMAT, "files": file_records(folder)})


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be trusted (one short phrase), or None if every file matches its
    marker (checkpoints from before file lists: every safetensors file has a sound header)."""
    ckpt = Path(ckpt)
    try:
        listed = _marker_files(ckpt)
    except CheckpointError as e:
        return str(e)
    names = sorted(listed) if listed is not None else _legacy_tensor_files(ckpt)
    return _verify(str(ckpt.resolve()), _signature(ckpt, names))


# Memoised on the folder and the stat signature (size, mtime, inode) of its marker and files:
# train --resume looks a checkpoint up and then loads it, so each file is hashed once per
# process; any change to a file changes the signature and verifies it again.
@functools.lru_cache(maxsize=64)
def _verify(ckpt: str, signature: tuple) -> str | None:
    path = Path(ckpt)
    try:
        listed = _marker_files(path)
    except CheckpointError as e:
        return str(e)
    if listed is None:
        return _check_headers(path, _legacy_tensor_files(path))
    return _check_files(path, listed)


def _marker_files(ckpt: Path) -> dict[str, dict[str, Any]] | None:
    """The marker's file list; None for a marker from before file lists ("complete")."""
    marker = ckpt / COMPLETE
    if marker.stat().st_size > _MAX_MARKER_BYTES:
        raise CheckpointError(f"{COMPLETE} is {marker.stat().st_size} bytes, not a marker")
    raw = marker.read_bytes()
    if raw.strip() == b"complete":
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{COMPLETE} is not JSON") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{COMPLETE} has no file list")
    for name, rec in files.items():
        _check_relative(name)
        ok = isinstance(rec, dict) and type(rec.get("size")) is int
        if not ok or not isinstance(rec.get("sha256"), str):
            raise CheckpointError(f"{COMPLETE}: bad entry for {name}")
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise CheckpointError(f"{missing[0]}: not listed in {COMPLETE}")
    return files


def _check_relative(name: str) -> None:
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute():
        raise CheckpointError(f"{COMPLETE} lists {name!r}, not a path inside the checkpoint")
    for part in parts:
        try:
            safe_component(part, "a file name")
        except DiffscapeError:
            raise CheckpointError(f"{COMPLETE} lists {name!r}, not a safe path") from None


def _legacy_tensor_files(ckpt: Path) -> list[str]:
    return sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*.safetensors"))


def _signature(ckpt: Path, names: list[str]) -> tuple:
    def stat(p: Path) -> tuple:
        try:
            s = p.lstat()
        except OSError:
            return (None,)
        return (s.st_size, s.st_mtime_ns, s.st_ino, s.st_mode)

    return tuple(stat(ckpt / n) for n in [COMPLETE, *names])


def _check_files(ckpt: Path, listed: dict[str, dict[str, Any]]) -> str | None:
    for name, rec in sorted(listed.items()):
        path = ckpt / name
        if path.is_symlink() or not path.is_file():
            return f"{name}: missing" if not path.is_symlink() else f"{name}: a symbolic link"
        size = path.stat().st_size
        if size != rec["size"]:
            return f"{name}: size {size} != {rec['size']}"
        try:
            _, digest, header_problem = _read_file(path, digest=True)
        except OSError as e:
            return f"{name}: unreadable ({e.strerror or e})"
        if digest != rec["sha256"]:
            return f"{name}: sha256 differs from {COMPLETE}"
        if header_problem:
            return f"{name}: {header_problem}"
    return None


def _check_headers(ckpt: Path, names: list[str]) -> str | None:
    for name in names:
        if (ckpt / name).is_symlink() or not (ckpt / name).is_file():  # a FIFO would block
            return f"{name}: not a regular file"
        try:
            _, _, problem = _read_file(ckpt / name, digest=False)
        except OSError as e:
            return f"{name}: unreadable ({e.strerror or e})"
        if problem:
            return f"{name}: {problem}"
    for name in REQUIRED:
        if name.endswith(".safetensors") and not (ckpt / name).is_file():
            return f"{name}: missing"
    return None


def _read_file(path: Path, *, digest: bool) -> tuple[int, str, str | None]:
    """(size, sha256 or "", problem with its safetensors header or None) in one streaming read;
    without ``digest`` only a safetensors file's header is read."""
    h = hashlib.sha256()
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = f.read(n) if 0 <= n <= min(_MAX_HEADER_BYTES, size - 8) else b""
            problem = safetensors_problem(head, header, size)
            h.update(head)
            h.update(header)
        if not digest:
            return size, "", problem
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return size, h.hexdigest(), problem


def safetensors_problem(head: bytes, header: bytes, size: int) -> str | None:
    """Whether the first 8 bytes, the JSON header and the file size make a sound safetensors file
    (the checks the safetensors library makes before it maps the data)."""
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    if n < 2 or len(header) != n:
        return "not a safetensors file (bad header length)"
    try:
        table = json.loads(header)
    except (ValueError, UnicodeDecodeError):
        return "not a safetensors file (header is not JSON)"
    if not isinstance(table, dict):
        return "not a safetensors file (header is not a table)"
    spans = []
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        try:
            shape, (begin, end) = entry["shape"], entry["data_offsets"]
            if not all(type(d) is int and d >= 0 for d in shape):
                raise ValueError(shape)
            nbytes = _DTYPE_BYTES[entry["dtype"]] * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            return f"not a safetensors file (bad entry {str(name)[:40]!r})"
        if not (type(begin) is int and type(end) is int and 0 <= begin <= end) or (
            end - begin != nbytes
        ):
            return f"tensor {str(name)[:40]!r} has inconsistent offsets"
        spans.append((begin, end))
    data = size - 8 - n
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            return "tensor data overlaps or has holes"
        covered = end
    if covered != data:
        return f"size {size} != {8 + n + covered} that its header describes"
    return None


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
    folder = Path(run_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(state.step)
    tmp = folder / tmp_name(final.name)  # atomic's rule: a killed writer's leftover is known
    remove_tmp(tmp)
    make_tmp_dir(tmp)
    try:
        _write_checkpoint(tmp, cfg, model, ema, optimizer, state, rng_states, info)
    except BaseException as e:
        remove_tmp(tmp)  # a failed save leaves nothing behind; the previous ones are intact
        if is_disk_full(e):
            raise disk_full(e, final, tmp, _checkpoint_bytes(model, optimizer)) from None
        raise
    if final.exists():  # the same step saved again (e.g. a signal right after a save)
        shutil.rmtree(final)
    tmp.rename(final)
    (final / TMP_MARKER).unlink(missing_ok=True)
    _fsync_dir(folder)
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


def _write_checkpoint(
    tmp: Path,
    cfg: RunConfig,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    rng_states: dict[str, torch.Tensor],
    info: dict[str, Any] | None,
) -> None:
    model.save_pretrained(tmp / MODEL_DIR, safe_serialization=True)
    ema.save_pretrained(tmp / EMA_DIR, safe_serialization=True)
    opt_tensors, opt_meta = optimizer_to_files(optimizer)
    save_file(opt_tensors, tmp / OPTIMIZER_TENSORS)
    # compact and strict (no default=str): these are read back into the optimizer and RNGs
    write_text(tmp / OPTIMIZER_JSON, json.dumps(opt_meta))
    rng_tensors, rng_meta = rng_to_files(rng_states)
    save_file(rng_tensors, tmp / RNG_TENSORS)
    meta = {
        "step": state.step,
        "bad_steps_in_a_row": state.bad_steps_in_a_row,
        "skipped_steps": state.skipped_steps,
        "rng": rng_meta,
        "diffscape_version": __version__,
        "torch_version": torch.__version__,
    }
    write_text(tmp / STATE_JSON, json.dumps(meta))
    write_text(tmp / CONFIG_JSON, cfg.to_json())
    write_json(tmp / RUN_JSON, info or {})
    _fsync_dir(tmp)
    write_marker(tmp)


def prune_checkpoints(run_dir: Path, keep_last: int, milestone_every_steps: int = 0) -> None:
    """Delete complete checkpoints beyond the last ``keep_last`` (milestones stay), and the
    leftovers of killed saves: temporaries of processes that no longer run, temporaries from
    before PID tags, and step folders without a marker."""
    folder = Path(run_dir) / CHECKPOINTS
    complete = list_checkpoints(run_dir)
    keep = {p for _, p in complete[-keep_last:]}
    for step, path in complete:
        milestone = milestone_every_steps and step % milestone_every_steps == 0
        if path not in keep and not milestone:
            shutil.rmtree(path)
    clean_stale_tmp(folder)
    for p in folder.iterdir():
        untagged = p.name.startswith(".tmp-") and checkpoint_step(p.name[5:]) is not None
        incomplete = checkpoint_step(p.name) is not None and not (p / COMPLETE).exists()
        if untagged or incomplete:
            shutil.rmtree(p, ignore_errors=True)


def read_checkpoint_config(ckpt: Path) -> RunConfig:
    return load_config_json(Path(ckpt) / CONFIG_JSON)


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
    if not (ckpt / COMPLETE).is_file():
        raise CheckpointError(f"{ckpt} is incomplete (no {COMPLETE} marker); not loading it")
    problem = checkpoint_problem(ckpt)
    if problem is not None:
        raise CheckpointError(f"checkpoint {ckpt} is damaged ({problem}); not loading it")
    for name, module in ((MODEL_DIR, model), (EMA_DIR, ema)):
        weights = _weights_file(ckpt / name)
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
        meta_opt = _json(ckpt / OPTIMIZER_JSON)
        opt_state = optimizer_from_files(_tensors(ckpt / OPTIMIZER_TENSORS), meta_opt)
        optimizer.load_state_dict(opt_state)
        meta = _json(ckpt / STATE_JSON)
        states = restore_rng(_tensors(ckpt / RNG_TENSORS), meta["rng"])
        counters = TrainingState(
            step=int(meta["step"]),
            bad_steps_in_a_row=int(meta["bad_steps_in_a_row"]),
            skipped_steps=int(meta["skipped_steps"]),
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


def _weights_file(folder: Path) -> Path:
    path = folder / WEIGHTS
    if not path.is_file():
        # Anything but safetensors would mean unpickling: refuse instead.
        others = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
        raise CheckpointError(
            f"{folder} has no {WEIGHTS} (found: {others}); diffscape only loads safetensors weights"
        )
    return path
