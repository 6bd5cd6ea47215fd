"""Whether a checkpoint can be trusted: the ``COMPLETE`` marker, written last, lists every other
file with its size and sha256; a folder without it is never read, one whose files do not match it
is damaged. A crash of the machine (or a full disk, or a copy cut short) can leave files shorter
than the marker says: loading verifies every file against the marker (each file hashed once per
process) and falls back to the newest checkpoint that verifies. A checkpoint from before file lists (its
marker says just "complete") cannot be verified and is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
from pathlib import Path, PurePosixPath
from typing import Any

from diffscape.core.atomic import write_json
from diffscape.core.errors import DiffscapeError
from diffscape.core.layout import (
    COMPLETE,
    CONFIG_JSON,
    EMA_DIR,
    MODEL_DIR,
    OPTIMIZER_JSON,
    OPTIMIZER_TENSORS,
    RNG_TENSORS,
    STATE_JSON,
    TMP_MARKER,
    UNET_WEIGHTS,
    safe_component,
)

MARKER_FORMAT = "diffscape-checkpoint/1"


# Every file a loader reads; a marker that does not list one of them does not vouch for it.
REQUIRED = (
    f"{MODEL_DIR}/{UNET_WEIGHTS}",
    f"{MODEL_DIR}/{CONFIG_JSON}",
    f"{EMA_DIR}/{UNET_WEIGHTS}",
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


class _Damaged(Exception):
    """A checkpoint's files do not match its marker (skipped in favour of an older one)."""


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file below ``folder`` (but the marker) -> its size and sha256, by relative path."""
    folder = Path(folder)
    records = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (COMPLETE, TMP_MARKER):
            digest, _ = _read_file(path)
            size = path.stat().st_size
            records[path.relative_to(folder).as_posix()] = {"size": size, "sha256": digest}
    return records


def write_marker(folder: Path) -> None:
    """The last file of a checkpoint: every other file with its size and sha256. Its presence
    means every other file was complete when it was written."""
    write_json(Path(folder) / COMPLETE, {"format": MARKER_FORMAT, "files": file_records(folder)})


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be trusted (one short phrase), or None if every file matches its
    marker. A marker from before file lists raises CheckpointError: nothing to fall back on."""
    ckpt = Path(ckpt)
    try:
        listed = _marker_files(ckpt)
    except _Damaged as e:
        return str(e)
    return _verify(str(ckpt.resolve()), _signature(ckpt, sorted(listed)))


# Memoised on the folder and the stat signature (size, mtime, inode) of its marker and files:
# train --resume looks a checkpoint up and then loads it, so each file is hashed once per
# process; any change to a file changes the signature and verifies it again.
@functools.lru_cache(maxsize=64)
def _verify(ckpt: str, signature: tuple) -> str | None:
    try:
        return _check_files(Path(ckpt), _marker_files(Path(ckpt)))
    except _Damaged as e:
        return str(e)


def _marker_files(ckpt: Path) -> dict[str, dict[str, Any]]:
    """The marker's file list."""
    marker = ckpt / COMPLETE
    if marker.stat().st_size > _MAX_MARKER_BYTES:
        raise _Damaged(f"{COMPLETE} is {marker.stat().st_size} bytes, not a marker")
    raw = marker.read_bytes()
    if raw.strip() == b"complete":
        raise CheckpointError(
            f"checkpoint {ckpt} was written by diffscape before 2 December 2026 ({COMPLETE} "
            "lists no files) and cannot be verified; train again, or resume it with a diffscape "
            "of 2-6 December 2026 to write a verifiable checkpoint"
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Damaged(f"{COMPLETE} is not JSON") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise _Damaged(f"{COMPLETE} has no file list")
    for name, rec in files.items():
        _check_relative(name)
        ok = isinstance(rec, dict) and type(rec.get("size")) is int
        if not ok or not isinstance(rec.get("sha256"), str):
            raise _Damaged(f"{COMPLETE}: bad entry for {name}")
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise _Damaged(f"{missing[0]}: not listed in {COMPLETE}")
    return files


def _check_relative(name: str) -> None:
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute():
        raise _Damaged(f"{COMPLETE} lists {name!r}, not a path inside the checkpoint")
    for part in parts:
        try:
            safe_component(part, "a file name")
        except DiffscapeError:
            raise _Damaged(f"{COMPLETE} lists {name!r}, not a safe path") from None


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
        if path.is_symlink():
            return f"{name}: a symbolic link"
        if not path.is_file():  # reading a FIFO would block
            return f"{name}: not a regular file" if path.exists() else f"{name}: missing"
        size = path.stat().st_size
        if size != rec["size"]:
            return f"{name}: size {size} != {rec['size']}"
        try:
            digest, header_problem = _read_file(path)
        except OSError as e:
            return f"{name}: unreadable ({e.strerror or e})"
        if digest != rec["sha256"]:
            return f"{name}: sha256 differs from {COMPLETE}"
        if header_problem:
            return f"{name}: {header_problem}"
    return None


def _read_file(path: Path) -> tuple[str, str | None]:
    """(sha256, problem with its safetensors header or None) in one streaming read."""
    h = hashlib.sha256()
    problem = None
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = f.read(n) if 0 <= n <= min(_MAX_HEADER_BYTES, size - 8) else b""
            problem = safetensors_problem(head, header, size)
            h.update(head)
            h.update(header)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest(), problem


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
