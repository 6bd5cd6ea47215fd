"""How many cores the CPU training step uses, decided from the load and decided again as it
changes (``train.threads=0``, the default): every core while the other processes leave them
idle, one while another process keeps a core busy.

Why (bench/cpu_speed.py, docs/benchmarks.md "issue 26"): the tiny network's step is too short
for two threads to pay unless idle OpenMP threads spin between parallel regions (the CLI lets
them spin, bounded; passive waiting halves the gain), and spinning threads lose 2x and more as
soon as another process needs a core: the thread that spins takes the core the other thread is
waiting for. One thread never waits for another. Nothing here changes what a step computes
beyond float rounding; a run that must be bit-reproducible fixes ``train.threads`` (or
``OMP_NUM_THREADS``), which turns this off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

BUSY = 0.5  # cores used by other processes: above this, train on one thread ...
IDLE = 0.25  # ... and below this again, on all of them
EVERY_S = 5.0  # how often the load is read (/proc/stat: a few microseconds)


def _busy_seconds() -> float:
    """CPU time used by everything on the machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class CoreSharing:
    """Call :meth:`check` between steps; it reads the load every ``EVERY_S`` seconds and moves
    torch between all threads and one, saying so through ``say``."""

    def __init__(self, threads: int, device: torch.device, say: Callable[[str], None]) -> None:
        self.say, self.found = say, torch.get_num_threads()
        if threads > 0 and device.type == "cpu":
            torch.set_num_threads(threads)
        self.full = torch.get_num_threads()
        auto = threads == 0 and "OMP_NUM_THREADS" not in os.environ
        self.active = auto and device.type == "cpu" and self.full > 1 and _readable()
        if self.active:  # decided at once from a short look, then every EVERY_S seconds
            self.last = _look()
            time.sleep(0.2)
            self.check(every=0.0)

    def check(self, every: float = EVERY_S) -> None:
        if not self.active or time.perf_counter() - self.last[0] < every:
            return
        now = _look()
        others, self.last = _others(self.last, now), now
        current = torch.get_num_threads()
        if others > BUSY and current > 1:
            torch.set_num_threads(1)
            self.say(f"train: other processes use {others:.1f} cores: training on 1 thread")
        elif others < IDLE and current < self.full:
            torch.set_num_threads(self.full)
            self.say(f"train: the cores are free again: training on {self.full} threads")

    def close(self) -> None:
        """Back to the thread count found (a notebook trains again, samples, evaluates)."""
        torch.set_num_threads(self.found)


def other_cores(seconds: float = 0.2) -> float | None:
    """Cores that other processes keep busy, from a look of ``seconds``; None where /proc/stat
    cannot be read."""
    if not _readable():
        return None
    first = _look()
    time.sleep(seconds)
    return _others(first, _look())


def _look() -> tuple[float, float, float]:
    """(wall clock, CPU seconds of the machine, CPU seconds of this process)."""
    return time.perf_counter(), _busy_seconds(), _own_seconds()


def _others(before: tuple[float, float, float], now: tuple[float, float, float]) -> float:
    """Cores kept busy by other processes between two looks."""
    return ((now[1] - before[1]) - (now[2] - before[2])) / (now[0] - before[0])


def _readable() -> bool:
    try:
        _busy_seconds()
    except (OSError, ValueError, IndexError):  # not Linux, or no /proc
        return False
    return True
