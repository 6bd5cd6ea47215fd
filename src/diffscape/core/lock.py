"""One writer per folder: an exclusive OS file lock (``flock``) on ``<folder>/.lock``.

The kernel releases the lock when its holder exits, however it exits, so a killed process never
leaves a stale lock behind; the file itself only says who holds it (PID and command), for the
message the second process prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from diffscape.core.errors import DiffscapeError
from diffscape.core.layout import LOCK


class FolderBusy(DiffscapeError):
    """Another process holds the folder's lock."""


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says. The holder writes its line just after taking the
    lock, so a process that lost a race by microseconds may find the file still empty: it waits
    up to half a second for the line (a line ends in a newline when whole)."""
    text = ""
    for _ in range(20):
        try:
            text = path.read_text()
        except OSError:
            return "another process"
        if text.endswith("\n"):
            break
        time.sleep(0.025)
    text = text.strip()
    return f"process {text}" if text else "another process"


@contextlib.contextmanager
def hold(folder: str | os.PathLike[str], what: str = "folder") -> Iterator[Path]:
    """Hold ``folder``'s lock (``folder/.lock``) for the duration, creating the folder;
    FolderBusy if another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(
                f"{what} {folder} is in use by {_holder(path)}; wait for it to finish or stop "
                "it, or pick another --out"
            ) from None
        os.ftruncate(fd, 0)
        name = Path(sys.argv[0]).name
        name = "diffscape" if name == "__main__.py" else name  # python -m diffscape (or restarted)
        command = " ".join([name, *sys.argv[1:]])[:200]
        os.write(fd, f"{os.getpid()} ({command})\n".encode())
        yield folder
    finally:
        os.close(fd)  # releases the lock
