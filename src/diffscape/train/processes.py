"""CPU training as several processes of one thread each (``train.processes``): :func:`train`
starts them itself through torch's elastic launcher (what ``torchrun`` runs), each process
trains its share of every batch, and DDP averages the gradients.

Why (bench/cpu_speed.py "ddp2", docs/benchmarks.md "One process per core"): the tiny network's
ops are short, and two OpenMP threads meet at every op where two processes meet once per step
(the gradients' all-reduce). On two AMX cores that trained 77 img/s against one two-thread
process's 66 on a noisy hour (1.37x on AVX2), and tied on a quiet one (113 against 110;
0.97-1.04x per repeat). Every process draws the random numbers of the whole batch and keeps its
share (:func:`diffscape.train.step.step_inputs`), so N processes train what one would, up to
float rounding.

``train.processes=0`` (the default) decides at the start of each call: one process per
core (as many as ``torch.get_num_threads()``: a study's job or ``OMP_NUM_THREADS`` narrows it)
while other processes leave the cores idle, else one (whose threads then follow the load:
:mod:`diffscape.train.threads`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from diffscape.checkpoint import latest_checkpoint
from diffscape.core.allocator import worker_environment
from diffscape.core.errors import DiffscapeError, TrainingInterrupted
from diffscape.settings.engine import ConfigError
from diffscape.settings.sections import RunConfig
from diffscape.train.setup import trains_on_cpu
from diffscape.train.threads import BUSY, other_cores

MIN_SHARE = 8  # images of the batch per process at least (measured: 16 as 2 x 8; no fewer)
# The signals the launcher passes on to its processes (those this OS has): SIGUSR2 too, Slurm's
# warning before a time limit (`sbatch --signal`), which the processes answer as SIGTERM. SIGINT
# (Ctrl-C) reaches them from the terminal: not the launcher's to pass on.
FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR2")
    if hasattr(signal, name)
)


def process_count(cfg: RunConfig, cpu: bool | None) -> int:
    """How many processes :func:`diffscape.train.train` starts (``cpu`` as there: None picks the
    device): 1 on a GPU, under a launcher (``WORLD_SIZE`` set) or when the setting says so;
    ``train.processes`` when > 1; for 0, one per core while the cores are idle (see the
    module's docstring)."""
    t = cfg.train
    if t.processes == 1 or not trains_on_cpu(cpu) or "WORLD_SIZE" in os.environ:
        return 1
    if t.processes > 1:
        if t.batch_size % t.processes:
            raise ConfigError(
                f"train.processes {t.processes} must divide train.batch_size {t.batch_size}"
            )
        return t.processes
    if t.threads or "OMP_NUM_THREADS" in os.environ:  # threads fixed: one process with them
        return 1
    cores = torch.get_num_threads()
    n = max(
        d for d in range(1, cores + 1) if t.batch_size % d == 0 and t.batch_size >= d * MIN_SHARE
    )
    return 1 if n > 1 and (other_cores() or 0.0) > BUSY else n


def launch(n: int, cfg: RunConfig, worker: Callable[..., Any], args: tuple, run_dir: Path) -> Any:
    """Run ``worker(*args)`` (a training of ``cfg`` into ``run_dir``) in ``n`` processes of one
    thread each, with ``train.allocator``'s memory allocator, and return rank 0's result; an
    error they return is raised here (rank 0's first), without the launcher's report. SIGTERM
    stops them as it stops one process (the step in progress finishes, a checkpoint is saved);
    Ctrl-C reaches them from the terminal directly."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    extra, allocator = worker_environment(cfg.train.allocator)
    print(f"train: {n} processes of 1 thread each (train.processes); memory allocator: "
          f"{allocator}", file=sys.stderr)  # fmt: skip
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=uuid.uuid4().hex,
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
        monitor_interval=0.1, start_method="spawn",
        signals_to_handle=",".join(s.name for s in _forwarding()),
    )  # fmt: skip
    try:
        with _launch_environment(extra):
            outcomes = elastic_launch(config, worker)(*args)
    except SignalException as e:
        raise _stopped(signal.Signals(e.sigval), "", run_dir) from None
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if (sig := _forwarded(failure.exitcode)) is not None:  # a process signalled by itself
            raise _stopped(sig, f" (rank {rank})", run_dir) from None
        raise DiffscapeError(
            f"a training process ended abnormally: rank {rank} exit code {failure.exitcode}"
        ) from None
    first = next((outcomes[r] for r in sorted(outcomes) if isinstance(outcomes[r], BaseException)),
                 outcomes[0])  # fmt: skip
    if isinstance(first, BaseException):
        raise first
    return first


def worker_outcome(fn: Callable[[], Any]) -> Any:
    """``fn()`` in one of :func:`launch`'s processes: its result, or its error returned (raised
    by :func:`launch` as one line) rather than raised into the launcher, which would print its
    own report. Stopped by a signal that the launcher passes on (``FORWARDED``; the checkpoint
    is saved by then), the process leaves at once with the signal's exit status: the launcher is
    closing and collects no result, and torch's wrapper around ``fn`` would hold the process
    (it waits for an event only the launcher's polling sets) until the launcher's SIGKILL 30 s
    later (torch.distributed.elastic.multiprocessing.api: SIGTERM took 31 s to end a
    two-process training before this, 1-2 s after)."""
    try:
        return fn()
    except TrainingInterrupted as e:
        if e.signum in FORWARDED:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + e.signum)
        return e
    except BaseException as e:  # noqa: BLE001 - passed back whole
        return portable(e)


def _stopped(sig: signal.Signals, who: str, run_dir: Path) -> TrainingInterrupted:
    return TrainingInterrupted(
        f"stopped by {sig.name}{who}; saved {latest_checkpoint(run_dir) or 'nothing'}. Resume "
        "with the same command",
        signum=int(sig),
    )


def sighup_ignored() -> bool:
    """Whether this process ignores SIGHUP (``nohup``): then neither the launcher nor the
    training loop may take it over, and a closed terminal leaves the training running."""
    hup = getattr(signal, "SIGHUP", None)
    return hup is not None and signal.getsignal(hup) == signal.SIG_IGN


def _forwarding() -> list[signal.Signals]:
    """``FORWARDED`` less SIGHUP where this process ignores it (``nohup``): the launcher's
    handler would replace the ignoring, and a closed terminal would end the training. Ignored,
    it stays ignored in the processes it starts (an ignored signal survives their exec)."""
    ignored = sighup_ignored()
    return [s for s in FORWARDED if not (ignored and s.name == "SIGHUP")]


def _forwarded(exitcode: int) -> signal.Signals | None:
    """The forwarded signal that ended a process with ``exitcode`` (128 + N: the exit of
    :func:`worker_outcome`; -N: killed by it), else None."""
    return next((s for s in FORWARDED if exitcode in (128 + s, -s)), None)


def portable(e: BaseException) -> BaseException:
    """``e`` if it can travel between processes (pickle), else its type and text."""
    try:
        pickle.dumps(e)
        return e
    except Exception:  # noqa: BLE001 - whatever made it unpicklable
        return RuntimeError(f"{type(e).__name__}: {e}")


@contextlib.contextmanager
def _launch_environment(extra: dict[str, str]) -> Iterator[None]:
    """The processes' environment (one OpenMP thread each, ``extra``) and this process's
    signals: the launcher turns SIGTERM into a SIGTERM to each process; SIGINT (Ctrl-C, which
    the terminal sends to the processes too) is left to them."""
    # the launcher's warnings and error reports (a traceback for a process that a signal ended)
    # retell the one line that launch() says
    disabled = logging.root.manager.disable
    logging.disable(logging.ERROR)
    old = None
    with contextlib.suppress(ValueError):  # not the main thread: signals are not ours anyway
        old = signal.signal(signal.SIGINT, lambda signum, frame: None)
        # multiprocessing's resource tracker, started with the first process, is in the process
        # group too: a SIGUSR2 to the group (Slurm's warning) would end it, and it would print
        # a traceback. Started here with SIGUSR2 ignored, it keeps ignoring it (and only it).
        if hasattr(signal, "SIGUSR2"):
            usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            try:
                resource_tracker.ensure_running()
            finally:
                signal.signal(signal.SIGUSR2, usr2)
    try:
        # patch.dict restores the whole environment after, the launcher's own key included
        with mock.patch.dict(os.environ, OMP_NUM_THREADS="1", **extra):
            yield
    finally:
        logging.disable(disabled)
        if old is not None:
            signal.signal(signal.SIGINT, old)
