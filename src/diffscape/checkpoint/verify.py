"""Whether a checkpoint can be trusted. A crash of the machine (or a full disk, or a copy cut
short) can leave files shorter than the ``COMPLETE`` marker says: loading verifies every file
against the marker (each file hashed once per process) and falls back to the newest checkpoint
that verifies.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from safetensors import SafetensorError, safe_open

from diffscape.core import layout
from diffscape.core.atomic import write_json
from diffscape.core.errors import DiffscapeError
from diffscape.core.layout import COMPLETE

MARKER_FORMAT = "diffscape-checkpoint/1"


# Every file a loader reads; a marker that does not list one of them does not vouch for it.
REQUIRED = (
    f"{layout.MODEL_DIR}/{layout.UNET_WEIGHTS}",
    f"{layout.MODEL_DIR}/{layout.CONFIG_JSON}",
    f"{layout.EMA_DIR}/{layout.UNET_WEIGHTS}",
    f"{layout.EMA_DIR}/{layout.CONFIG_JSON}",
    layout.OPTIMIZER_TENSORS,
    layout.OPTIMIZER_JSON,
    layout.RNG_TENSORS,
    layout.STATE_JSON,
    layout.CONFIG_JSON,
)


_MAX_MARKER_BYTES = 1 << 20  # a marker lists a dozen files; anything bigger is not one


class CheckpointError(DiffscapeError):
    pass


class _Damaged(Exception):
    """A checkpoint's files do not match its marker (skipped in favour of an older one)."""


def write_marker(folder: Path) -> None:
    """The last file of a checkpoint: every other file with its size and sha256. Its presence
    means every other file was complete when it was written."""
    folder = Path(folder)
    records = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (COMPLETE, layout.TMP_MARKER):
            size = path.stat().st_size
            records[path.relative_to(folder).as_posix()] = {"size": size, "sha256": _sha256(path)}
    write_json(folder / COMPLETE, {"format": MARKER_FORMAT, "files": records})


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be trusted (one short phrase), or None if every file matches its
    marker."""
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
    try:
        data = json.loads(marker.read_bytes())
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
            layout.safe_component(part, "a file name")
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
            digest = _sha256(path)
        except OSError as e:
            return f"{name}: unreadable ({e.strerror or e})"
        if digest != rec["sha256"]:
            return f"{name}: sha256 differs from {COMPLETE}"
        if path.suffix == ".safetensors":
            # a file that matches a rewritten marker may still be no safetensors file (a pickle)
            try:
                with safe_open(path, "np"):
                    pass
            except SafetensorError as e:
                return f"{name}: not a sound safetensors file ({e})"
    return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
