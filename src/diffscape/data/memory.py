"""Will it fit? A check before reading arrays into memory, so that a dataset too large for this
machine is refused in one line instead of ending in a MemoryError or the kernel's OOM killer."""

from __future__ import annotations

import psutil

from diffscape.core.errors import DiffscapeError

# Leave this share of the available memory to everything else (the model, Python, the OS cache).
HEADROOM = 0.8


def available_bytes() -> int:
    """Memory this machine can give without swapping (on Linux the kernel's ``MemAvailable``);
    psutil comes with accelerate."""
    return psutil.virtual_memory().available


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_fits(nbytes: int, what: str, hint: str) -> None:
    """Refuse ``what`` (needing about ``nbytes``) when it would not fit in the memory available
    now; ``hint`` says what to do instead."""
    available = available_bytes()
    if nbytes > HEADROOM * available:
        raise DiffscapeError(
            f"{what} needs about {gib(nbytes)} of memory but only {gib(available)} is available; "
            f"{hint}"
        )
