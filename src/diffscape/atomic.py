"""Writing files and folders so that readers never see a half-written one.

Every file the package writes goes through ``write_text``/``write_json``/``write_bytes`` (or
``atomic_path`` for writers that need a file name, such as ``np.save``); every folder built in
one go (a dataset, a judge, a samples folder) is built in ``tmp_dir_beside(out)`` and moved into
place with ``publish_dir``. All temporaries carry the writer's PID, so ``clean_stale_tmp`` can
remove the leftovers of killed processes without touching a live writer's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# ".<name>.tmp-<pid>" (folders and files) — the one naming rule for temporaries. A file's
# temporary keeps its suffix after the PID (".a.npy.tmp-7.npy") because some writers choose the
# format by it (PIL) or append it when it is missing (np.save).
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?:\.[A-Za-z0-9]+)?$")


def tmp_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}"


def _full(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute without resolving links, so that "." and "a/.." have a name."""
    return Path(os.path.abspath(path))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_tmp(folder: Path) -> list[Path]:
    """Temporaries in ``folder`` left by processes that no longer run."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _TMP.match(p.name)
        if m and int(m.group("pid")) != os.getpid() and not pid_alive(int(m.group("pid"))):
            found.append(p)
    return found


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Delete temporaries in ``folder`` left by processes that no longer run; returns them."""
    removed = []
    for p in stale_tmp(folder):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto it."""
    path = _full(path)
    if path.is_dir():  # say so now, naming it, rather than when the rename fails
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name(path.name) + path.suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Indented JSON with a final newline; values JSON cannot hold (paths, ...) as strings."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def tmp_dir_beside(out: str | os.PathLike[str]) -> Path:
    """A fresh, empty temporary folder beside ``out`` (same file system: rename is atomic).
    Leftovers of killed writers beside it are removed first."""
    out = _full(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out.parent)
    tmp = out.with_name(tmp_name(out.name))
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out`` (same file system, so each rename is atomic).

    An existing ``out`` is moved aside first and deleted only once the new one is in place.
    """
    out = _full(out)
    if out.exists():
        old = out.with_name(tmp_name(out.name + ".old"))
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            old.rename(out)  # put the previous folder back
            raise
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
