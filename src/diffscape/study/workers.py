"""Running a study's trainings (:func:`run_study`) in this process or in worker processes
(``python -m diffscape.study.workers worker JOB``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from diffscape.core import layout
from diffscape.core.errors import DiffscapeError
from diffscape.study import results
from diffscape.study.narrate import Narrator, Tools, log
from diffscape.study.results import RunResult
from diffscape.study.run import is_finished, record_failure, run_training, skip_finished
from diffscape.study.spec import RunSpec, Study


def run_study(
    study: Study, runs: list[RunSpec], tools: Tools, *, gpus: int = 0, jobs: int | None = None
) -> list[RunResult]:
    """Every run of a prepared study: one training after another, or several at once in worker
    processes (:func:`worker_slots`: one per GPU, or ``jobs`` sharing the CPU cores); returns
    each run's result."""
    todo: dict[str, list[RunSpec]] = {}  # training -> its samplings not finished yet
    for r in runs:
        if is_finished(study, r):
            skip_finished(r, tools)
        else:
            todo.setdefault(r.training, []).append(r)
    slots = worker_slots(gpus, jobs)
    if len(slots) > 1 and len(todo) > 1:
        run_parallel(study, todo, slots, tools)
    else:
        for group in todo.values():
            run_training(study, group, tools)
    return [results.read_result(r.sample_dir(study.out)) or _missing(r) for r in runs]


def _missing(run: RunSpec) -> RunResult:
    return RunResult(name=run.name, status="missing", training=run.training, sampling=run.sampling)


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: its name in messages and the environment it starts with."""

    name: str
    env: dict[str, str]


def worker_slots(gpus: int, jobs: int | None = None, cores: int | None = None) -> list[Slot]:
    """The places workers run: one per GPU (at most ``jobs`` of them when given), or, without a
    GPU, ``jobs`` workers each given ``cores // jobs`` threads (OMP_NUM_THREADS; at least 1).

    Why CPU workers: a small UNet does not keep two threads busy. On a 2-core VM, two one-thread
    trainings of ``tiny`` ran at 46.6 img/s each (93 together) where one two-thread training ran
    at 65 (docs/real-photos.md). A run's ``train.minutes`` is its own wall clock, so runs that
    share the cores each get their share of them in those minutes.
    """
    if jobs is not None and jobs < 1:
        raise DiffscapeError(f"--jobs {jobs}: give 1 or more workers")
    if gpus >= 1:
        n = gpus if jobs is None else min(jobs, gpus)
        return [Slot(f"GPU {g}", {"CUDA_VISIBLE_DEVICES": str(g)}) for g in range(n)]
    n = jobs or 1
    threads = max(1, (cores or os.cpu_count() or 1) // n)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return [Slot(f"CPU worker {i} ({threads} thread{'s' * (threads > 1)})", env) for i in range(n)]


# A worker's job: the prepared study and the runs of one training (settings, paths and all).
_JOB = TypeAdapter(tuple[Study, list[RunSpec]])


def job_json(study: Study, runs: list[RunSpec]) -> str:
    return _JOB.dump_json((study, runs)).decode()


def job_from_json(text: str) -> tuple[Study, list[RunSpec]]:
    return _JOB.validate_json(text)


def _start_worker(study: Study, runs: list[RunSpec], slot: Slot) -> subprocess.Popen:
    log_path = worker_log(study, runs[0].training)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "diffscape.study.workers", "worker", job_json(study, runs)]
    env = {**os.environ, **slot.env}
    with open(log_path, "ab") as logfile:
        return subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)


def worker_log(study: Study, training: str) -> Path:
    """A worker's log: in the study's _logs/ folder, not in the run folder, which train must
    find new or a run (a log of its own would make it neither)."""
    return study.out / layout.SWEEP_LOGS / layout.worker_log_name(training)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """SIGTERM would end this process at once and leave the workers training unattended; as a
    KeyboardInterrupt it reaches the code that stops them."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def run_parallel(
    study: Study, groups: dict[str, list[RunSpec]], slots: list[Slot], tools: Tools
) -> None:
    """One worker process per slot (:func:`worker_slots`), each running one training (and its
    samplings) in its slot's environment; its output goes to _logs/<training>.log."""
    pending, running = list(groups), {}
    say = tools.narrator.note
    say(f"{len(slots)} workers: running {len(pending)} trainings, {len(slots)} at a time")
    with _sigterm_as_interrupt():
        try:
            while pending or running:
                for i, slot in enumerate(slots):
                    if i not in running and pending:
                        name = pending.pop(0)
                        running[i] = (_start_worker(study, groups[name], slot), name)
                        say(f"{name}: started on {slot.name} (log: {worker_log(study, name)})")
                time.sleep(1.0)
                for i, (proc, name) in list(running.items()):
                    if proc.poll() is not None:
                        del running[i]
                        _worker_ended(study, groups[name], proc.returncode, tools)
        except BaseException:
            for proc, _ in running.values():
                proc.terminate()  # SIGTERM: training saves a checkpoint and stops
            for proc, _ in running.values():
                proc.wait()
            raise


def _worker_ended(study: Study, runs: list[RunSpec], code: int, tools: Tools) -> None:
    name = runs[0].training
    tools.narrator.note(f"{name}: worker exited with code {code}")
    for r in runs:
        if results.read_result(r.sample_dir(study.out)) is None:
            err = DiffscapeError(
                f"worker exited with code {code} before finishing; see {worker_log(study, name)}"
            )
            record_failure(study, r, "worker", err, tools)


def worker_main(argv: list[str]) -> int:
    """``python -m diffscape.study.workers worker JOB``: run one training of a prepared study."""
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m diffscape.study.workers worker JOB_JSON", file=sys.stderr)
        return 2
    study, runs = job_from_json(argv[1])
    import torch

    log(f"worker: {runs[0].training} on {torch.get_num_threads()} CPU thread(s)")
    run_training(study, runs, Tools(Narrator(log), progress=False))
    return 0


if __name__ == "__main__":
    # Import the module by its name: classes defined in __main__ would be other classes.
    from diffscape.study.workers import worker_main as _main

    sys.exit(_main(sys.argv[1:]))
