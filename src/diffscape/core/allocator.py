"""The memory allocator: tcmalloc where the system has it, through ``LD_PRELOAD`` (an allocator
is chosen when a process starts, before Python runs).

- The command's own process: ``diffscape`` restarts itself once, at the very start, with tcmalloc
  preloaded (:func:`restart_with_tcmalloc`; ``DIFFSCAPE_ALLOCATOR=system`` keeps the C library's
  malloc). Whole commands ran 1.03-1.32x faster with it (sampling the demo's 200 images, training
  its CNN judge, evaluate; bench/cli_malloc.py), the images bit for bit the same
  (docs/benchmarks.md "tcmalloc in the command's own process").
- The training processes that :func:`diffscape.train.train` starts itself (``train.allocator``,
  :func:`worker_environment`): the tiny network's step allocates and frees hundreds of
  short-lived tensors, and with the C library's malloc a training process of one thread took
  1,200-5,600 page faults per step; with tcmalloc 40-74. The two processes trained 1.07-1.16x
  faster with it, on the AMX CPU and restricted to AVX2 alike, in two runs of three repeats
  (bench/cpu_speed.py "ddp2-tc"); jemalloc 0.96-1.11x. It changes nothing computed: a run's
  losses and weights are the same bit for bit (tests/test_processes.py).

Written here rather than through ``torch.backends.xeon.run_cpu``, which preloads tcmalloc the
same way: it wraps a whole command line, and looks only for an unversioned ``libtcmalloc.so`` (a
-dev package's link) in conda/virtualenv/``/usr/lib`` folders, not for the runtime library that
Debian and Ubuntu install (``libtcmalloc_minimal.so.4`` under ``/usr/lib/<arch>``). Light on
purpose (no torch): the command line imports it before anything else.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

MALLOCS = ("tcmalloc", "jemalloc", "mimalloc")  # a user's LD_PRELOAD naming one is left alone
HINT = "apt install libtcmalloc-minimal4 (or conda install gperftools) trains ~1.1x faster"
# tcmalloc reports every allocation above 1 GiB on stderr; a big preset's batch may be one
QUIET_LARGE = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}
SWITCH = "DIFFSCAPE_ALLOCATOR"  # "system": the command keeps the C library's malloc
SYSTEM = "the C library's malloc (train.allocator=system)"  # what train.allocator=system gives
OWN = "DIFFSCAPE_PRELOADED"  # the library the command preloaded into itself (and its children)


def find_tcmalloc(environ: Mapping[str, str] = os.environ) -> str | None:
    """tcmalloc's library: a path in the conda/virtual environment's lib folder, else the name
    the dynamic loader finds it by (``ldconfig``'s cache); None when the system has none, and
    off Linux (``LD_PRELOAD`` is the Linux loader's)."""
    if not sys.platform.startswith("linux"):
        return None
    for prefix in dict.fromkeys(p for p in (environ.get("CONDA_PREFIX"), sys.prefix) if p):
        # the minimal library first: the full one also carries a heap profiler
        found = sorted(
            Path(prefix, "lib").glob("libtcmalloc*.so*"), key=lambda p: "minimal" not in p.name
        )
        if found:
            return str(found[0])
    for name in ("tcmalloc_minimal", "tcmalloc"):
        if lib := ctypes.util.find_library(name):
            return lib
    return None


def worker_environment(
    policy: str, environ: Mapping[str, str] = os.environ
) -> tuple[dict[str, str], str]:
    """The variables to set for processes started now under ``policy`` ("auto": tcmalloc where
    found; "system": the C library's malloc) and the allocator they will have, in words."""
    preload = environ.get("LD_PRELOAD", "")
    own = environ.get(OWN)
    if own and own in preload.split(":"):  # the command's restart put it there, not the user
        if policy == "system":
            rest = ":".join(p for p in preload.split(":") if p and p != own)
            return {"LD_PRELOAD": rest}, SYSTEM
        return {}, f"tcmalloc ({own})"
    if any(m in preload for m in MALLOCS):
        return {}, f"{preload} (LD_PRELOAD)"
    if policy == "system":
        return {}, SYSTEM
    lib = find_tcmalloc(environ)
    if lib is None:
        return {}, f"the C library's malloc: no tcmalloc here ({HINT})"
    extra = {"LD_PRELOAD": ":".join(p for p in (lib, preload) if p)}
    extra.update({k: v for k, v in QUIET_LARGE.items() if k not in environ})
    return extra, f"tcmalloc ({lib})"


def command_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The whole environment to restart the command in with tcmalloc preloaded; None where it
    runs so already (or with another allocator a user preloaded), where ``DIFFSCAPE_ALLOCATOR``
    says "system", or where the system has no tcmalloc."""
    if environ.get(SWITCH, "auto") == "system" or OWN in environ:
        return None
    extra, _ = worker_environment("auto", environ)
    if not extra:
        return None
    return {**environ, **extra, OWN: extra["LD_PRELOAD"].split(":")[0]}


def restart_with_tcmalloc(argv: list[str]) -> None:
    """Replace this process by ``python -m diffscape ARGV`` with tcmalloc preloaded, where
    :func:`command_environment` says to; returns only where it does not (or where the restart
    fails: the command then goes on with the C library's malloc). Called first thing by the
    command line, before torch or anything else is loaded."""
    env = command_environment()
    if env is None:
        return
    if (value := env.get(SWITCH, "auto")) != "auto":  # a typo would otherwise pass unseen
        print(f"diffscape: {SWITCH}={value} is neither auto nor system: taken as auto",
              file=sys.stderr)  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "diffscape", *argv], env)
    except OSError:
        return


def in_use(maps: Path = Path("/proc/self/maps")) -> str:
    """The allocator mapped into this process: one of :data:`MALLOCS`, or "libc" (also where
    ``/proc`` cannot say)."""
    try:
        text = maps.read_text()
    except OSError:
        return "libc"
    return next((m for m in MALLOCS if f"lib{m}" in text), "libc")
