"""Will it fit? A check before reading arrays into memory, so that a dataset too large for this
machine is refused in one line instead of ending in a MemoryError or the kernel's OOM killer."""

from __future__ import annotations

import os

from diffscape.core.errors import DiffscapeError

# Leave this share of the available memory to everything else (the model, Python, the OS cache).
HEADROOM = 0.8


class OutOfMemoryError(DiffscapeError):
    """An operation would need more memory than this machine has available."""


def available_bytes() -> int | None:
    """Memory this machine can give without swapping: ``MemAvailable`` from /proc/meminfo
    (Linux), else the free physical pages; None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_fits(nbytes: int, what: str, hint: str) -> None:
    """Refuse ``what`` (needing about ``nbytes``) when it would not fit in the memory available
    now; ``hint`` says what to do instead. Does nothing where the available memory is unknown."""
    available = available_bytes()
    if available is not None and nbytes > HEADROOM * available:
        raise OutOfMemoryError(
            f"{what} needs about {gib(nbytes)} of memory but only {gib(available)} is available; "
            f"{hint}"
        )
