"""Writing files and folders so that readers never see a half-written one (the rules are in
docs/architecture.md: every write, temporaries, cleaning killed writers' leftovers)."""

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

from diffscape.core import layout
from diffscape.core.errors import DiffscapeError

# ".<name>.diffscape-tmp-<pid>" (folders and files) — the one naming rule for temporaries; a
# temporary folder also holds layout.TMP_MARKER. Only such temporaries are ever removed by
# clean_stale_tmp: a person's ".notes.tmp-1234" is not one. A file's temporary keeps its suffix
# after the PID (".a.npy.diffscape-tmp-7.npy") because some writers choose the format by it
# (PIL) or append it when it is missing (np.save).
_TMP = re.compile(r"^\.(?P<name>.+)\.diffscape-tmp-(?P<pid>\d+)(?:\.[A-Za-z0-9]+)?$")


def tmp_name(name: str) -> str:
    return f".{name}{layout.TMP_INFIX}{os.getpid()}"


def _full(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute without resolving links, so that "." and "a/.." have a name."""
    return Path(os.path.abspath(path))


def remove_tmp(p: Path) -> None:
    """Delete one of this program's temporaries (a folder only if it holds the marker)."""
    with contextlib.suppress(FileNotFoundError):
        if p.is_dir() and not p.is_symlink():
            if layout.is_our_temporary(p):
                shutil.rmtree(p)
        elif layout.is_our_temporary(p):
            p.unlink()


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Delete this program's temporaries in ``folder`` left by processes that no longer run;
    returns them."""
    import psutil  # here: the CLI imports this module before it parses (--help stays fast)

    folder = Path(folder)
    removed = []
    for p in folder.iterdir() if folder.is_dir() else []:
        m = _TMP.match(p.name)
        if not m or not layout.is_our_temporary(p):
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and not psutil.pid_exists(pid):
            with contextlib.suppress(OSError):
                remove_tmp(p)
                removed.append(p)
    return removed


def make_tmp_dir(path: Path) -> Path:
    """Create the temporary folder ``path`` with its marker (so that it may be removed later)."""
    path.mkdir()
    (path / layout.TMP_MARKER).write_text(f"{os.getpid()}\n")
    return path


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """``path`` (made absolute) or its nearest ancestor that exists (a broken link counts: it
    is there, and it is no folder): what decides whether ``path`` can be made."""
    full = _full(path)
    return next(p for p in (full, *full.parents) if p.exists() or p.is_symlink())


def unwritable(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` could not be created or written into (a phrase naming the obstacle), or None.
    Creates nothing: the nearest existing folder on the way decides."""
    existing = nearest_existing(path)
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} cannot be written (read-only file system or no permission)"
    return None


class DiskFull(DiffscapeError):
    """The disk ran out of space (or quota) while writing."""


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as wrapped by libraries (safetensors says "os error 28")."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return f"(os error {errno.ENOSPC})" in str(e) or "No space left on device" in str(e)


def disk_full(
    e: BaseException, path: str | os.PathLike[str], tmp: Path | None = None, need: int = 0
) -> BaseException:
    """``e`` as one line naming ``path`` and the space needed when it is a full disk (``tmp``,
    this program's temporary, removed first); any other error unchanged."""
    if not is_disk_full(e):
        return e
    if tmp is not None:
        with contextlib.suppress(OSError):
            remove_tmp(tmp)
    where = _full(path)
    free = shutil.disk_usage(nearest_existing(where)).free
    needed = f"about {need / 1e6:,.1f} MB" if need else "more space"
    return DiskFull(
        f"no space left on the disk of {where}: writing it needs {needed}, {free / 1e6:,.1f} MB "
        "are free; free some space, then run the same command again (nothing else was changed)"
    )


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
    except Exception as e:
        raise disk_full(e, path) from None  # any other error unchanged
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), for comparing with what was written."""
    return json.loads(json.dumps(value, default=str))


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Indented JSON with a final newline; values JSON cannot hold (paths, ...) as strings."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def tmp_dir_beside(out: str | os.PathLike[str]) -> Path:
    """A fresh, empty temporary folder beside ``out`` (same file system: rename is atomic).
    This program's leftovers of killed writers beside it are removed first."""
    out = _full(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out.parent)
    tmp = out.with_name(tmp_name(out.name))
    remove_tmp(tmp)
    return make_tmp_dir(tmp)


def publish_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out`` (same file system, so each rename is atomic).

    An existing ``out`` (which layout.check_out allowed) is moved aside first and deleted only
    once the new one is in place. The marker of ``tmp`` is removed once it is published.
    """
    out = _full(out)
    if out.is_symlink():  # check_out returns a link's target; never replace the link itself
        raise ValueError(f"publish_dir: {out} is a symbolic link; pass its target")
    if out.exists():
        old = out.with_name(tmp_name(out.name + ".old"))
        remove_tmp(old)
        out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            old.rename(out)  # put the previous folder back
            raise
        (old / layout.TMP_MARKER).write_text(f"{os.getpid()}\n")
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    with contextlib.suppress(FileNotFoundError):  # published: no longer a temporary
        (out / layout.TMP_MARKER).unlink()
    # the rename survives a crash before anything older is deleted
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
