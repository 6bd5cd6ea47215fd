"""Running a study's trainings (:func:`run_study`): one after another in this process, or each
training (with its samplings) a submitit job: several at once on this machine
(:func:`worker_slots`), or all at once on a Slurm cluster, which queues them. A job's log is
<study>/_logs/<training>/<job id>_0_log.out."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from diffscape.core import layout
from diffscape.core.errors import DiffscapeError
from diffscape.settings.sections import SlurmSettings
from diffscape.study import results
from diffscape.study.narrate import Tools, log
from diffscape.study.results import RunResult
from diffscape.study.spec import RunSpec, Study
from diffscape.study.stages import is_finished, record_failure, run_training, skip_finished

POLL_S = 2.0  # how often the jobs are looked at
# A job on this machine runs as long as its training takes (submitit's default: 2 minutes).
LOCAL_TIME_LIMIT_MIN = 60 * 24 * 365
# The states of a job that ended: a local process's, Slurm's, or "GONE" (squeue forgot it).
ENDED = {
    "FINISHED", "INTERRUPTED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED",
    "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "GONE",
}  # fmt: skip


def run_study(
    study: Study, runs: list[RunSpec], tools: Tools, *, gpus: int = 0, jobs: int | None = None,
    slurm: SlurmSettings | None = None,
) -> list[RunResult]:  # fmt: skip
    """Every run of a prepared study; returns each run's result. Trainings run in this process
    (sharing its Inception network, progress bars and Ctrl-C) unless they can be jobs."""
    todo: dict[str, list[RunSpec]] = {}  # training -> its samplings not finished yet
    for r in runs:
        if is_finished(study, r):
            skip_finished(r, tools)
        else:
            todo.setdefault(r.training, []).append(r)
    if slurm is None:
        slots = worker_slots(gpus, jobs)
    else:  # all at once: the cluster queues them
        slots = [Slot("Slurm", threads=slurm.cpus, slurm=slurm)] * len(todo)
    if todo and (slurm is not None or (len(slots) > 1 and len(todo) > 1)):
        run_jobs(study, todo, slots, tools)
    else:
        for group in todo.values():
            run_training(study, group, tools)
    return [
        results.read_result(r.sample_dir(study.out))
        or RunResult(name=r.name, training=r.training, sampling=r.sampling, status="missing")
        for r in runs
    ]


@dataclass(frozen=True)
class Slot:
    """Where one job runs: its name in messages, its training's CPU threads (None: torch's
    default), the GPU it sees on this machine, or on a Slurm cluster what it asks for."""

    name: str
    threads: int | None = None
    gpu: int | None = None
    slurm: SlurmSettings | None = None

    def executor(self, folder: Path) -> submitit.Executor:
        """A submitit executor for one training's job, its files and log in ``folder``."""
        if self.slurm is not None:
            executor: submitit.Executor = submitit.SlurmExecutor(folder)
            asked = slurm_parameters(self.slurm, folder.name)
        else:
            executor = submitit.LocalExecutor(folder)
            gpu = {} if self.gpu is None else {"visible_gpus": (self.gpu,), "gpus_per_node": 1}
            asked = {"timeout_min": LOCAL_TIME_LIMIT_MIN, **gpu}
        executor.update_parameters(stderr_to_stdout=True, **asked)
        return executor


def worker_slots(gpus: int, jobs: int | None = None, cores: int | None = None) -> list[Slot]:
    """Where jobs run on this machine: one per GPU (at most ``jobs`` of them when given), or,
    without a GPU, ``jobs`` jobs each given ``cores // jobs`` threads (at least 1).

    Why CPU jobs: a small UNet does not keep two threads busy. On a 2-core VM, two one-thread
    trainings of ``tiny`` ran at 46.6 img/s each (93 together) where one two-thread training ran
    at 65 (docs/real-photos.md). A run's ``train.minutes`` is its own wall clock, so runs that
    share the cores each get their share of them in those minutes.
    """
    if jobs is not None and jobs < 1:
        raise DiffscapeError(f"--jobs {jobs}: give 1 or more workers")
    if gpus >= 1:
        n = gpus if jobs is None else min(jobs, gpus)
        return [Slot(f"GPU {g}", gpu=g) for g in range(n)]
    n = jobs or 1
    t = max(1, (cores or os.cpu_count() or 1) // n)
    return [Slot(f"CPU worker {i} ({t} thread{'s' * (t > 1)})", threads=t) for i in range(n)]


def slurm_parameters(s: SlurmSettings, training: str) -> dict[str, Any]:
    """A training's job's sbatch options, by submitit's names (sbatch's, ``_`` for ``-``)."""
    asked = {"job_name": training, "partition": s.partition, "account": s.account}
    asked |= {"cpus_per_task": s.cpus, "gpus_per_node": s.gpus or None, "time": s.minutes}
    return {k: v for k, v in asked.items() if v is not None}


def describe_jobs(
    trainings: list[str], out: str, slurm: SlurmSettings | None, gpus: int, jobs: int | None
) -> str:
    """--dry-run: the jobs a sweep would start, where, and how many at once."""
    slots = worker_slots(gpus, jobs) if slurm is None else []
    if slurm is None and (len(slots) == 1 or len(trainings) == 1):
        return f"{len(trainings)} trainings, one after another in this process"
    if slurm is None:
        head = f"{len(trainings)} jobs on this machine, {len(slots)} at a time"
    else:
        head = f"{len(trainings)} Slurm jobs, all submitted at once"
    lines = [f"{head} (those finished before are skipped), logs in {out}/{layout.SWEEP_LOGS}/:"]
    for i, name in enumerate(trainings):
        if slurm is None:
            lines.append(f"  {name}: on {slots[i % len(slots)].name}")
        else:
            options = slurm_parameters(slurm, name).items()
            lines.append(
                f"  {name}: sbatch " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in options)
            )
    return "\n".join(lines)


def train_job(study: Study, runs: list[RunSpec], threads: int | None = None) -> str | None:
    """What a job runs: :func:`run_training` of one training, on ``threads`` CPU threads.
    Returns None, or why its training stopped early after saving a checkpoint: SIGTERM (a
    cancel, Slurm's pre-emption or time limit) or SIGUSR2 (which submitit asks Slurm to send 90
    s before the time limit). Outside training either ends the job at once (submitit's own
    handlers would let it run on, until Slurm's SIGKILL)."""
    import torch

    from diffscape.train import TrainingInterrupted

    if threads:
        torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGUSR2, _as_sigterm)
    log(f"job: {runs[0].training} on {torch.get_num_threads()} CPU thread(s)")
    try:
        run_training(study, runs, Tools(progress=False))
    except TrainingInterrupted as e:
        # "stopped by SIGTERM after step 8"; the rest advises the train command's --resume
        why = f"{str(e).split(';')[0]}, checkpoint saved; the same sweep command resumes it"
        log(f"job: {runs[0].training} {why}")
        return why
    return None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _as_sigterm(signum: int, frame: Any) -> None:
    """SIGUSR2 does what SIGTERM does (training installs its own handler of SIGTERM)."""
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        handler(signum, frame)


def _cancel(job: submitit.Job) -> None:
    """Slurm: scancel. Here: SIGTERM to the job's controller, which passes it on and waits for
    the job (submitit's cancel sends SIGINT, on which the controller kills the job a second
    later, maybe in the middle of saving a checkpoint)."""
    if isinstance(job, submitit.LocalJob):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(job.job_id), signal.SIGTERM)  # its job id is the controller's pid
    else:
        job.cancel(check=False)


def job_states(jobs: list[submitit.Job]) -> dict[str, str]:
    """Each job's state: its local process's, or Slurm's from one squeue call (not submitit's
    sacct, which a cluster without accounting, as the tests' one-node Slurm, does not have);
    "UNKNOWN" while squeue does not answer, "GONE" once it forgot the job."""
    states = {j.job_id: j.state for j in jobs if isinstance(j, submitit.LocalJob)}
    ids = [j.job_id for j in jobs if j.job_id not in states]
    if ids:
        cmd = ["squeue", "--noheader", "--states=all", "--format=%i %T", "--jobs", ",".join(ids)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        listed = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        answered = out.returncode == 0 or "Invalid job id" in out.stderr
        states |= {i: listed.get(i, "GONE" if answered else "UNKNOWN") for i in ids}
    return states


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """SIGTERM would end this process at once and leave the jobs unattended; as a
    KeyboardInterrupt it reaches the code that cancels them."""
    try:
        old = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def run_jobs(
    study: Study, groups: dict[str, list[RunSpec]], slots: list[Slot], tools: Tools
) -> None:
    """One job (:func:`train_job`) per training, each started when a slot is free, until all
    have ended. Interrupted (Ctrl-C, SIGTERM), it cancels the running jobs (whose trainings
    save a checkpoint and stop) and waits for them to end."""
    pending, running = list(groups), {}  # running: slot -> (job, training)
    say = tools.narrator.note
    say(f"{len(pending)} trainings as jobs, {min(len(slots), len(pending))} at a time")
    with _sigterm_as_interrupt():
        try:
            while pending or running:
                for i, slot in enumerate(slots):
                    if i not in running and pending:
                        name = pending.pop(0)
                        # its files and log in _logs/, not in the run folder, which train must
                        # find new or a run (files of their own would make it neither)
                        executor = slot.executor(study.out / layout.SWEEP_LOGS / name)
                        job = executor.submit(train_job, study, groups[name], slot.threads)
                        running[i] = (job, name)
                        say(f"{name}: job {job.job_id} on {slot.name} (log: {job.paths.stdout})")
                time.sleep(POLL_S)
                states = job_states([job for job, _ in running.values()])
                for i, (job, name) in list(running.items()):
                    if states[job.job_id] in ENDED:
                        del running[i]
                        _job_ended(study, groups[name], job, states[job.job_id], tools)
        except BaseException:
            jobs = [job for job, _ in running.values()]
            for job in jobs:
                _cancel(job)
            while not ENDED.issuperset(job_states(jobs).values()):
                time.sleep(POLL_S)
            raise


def _job_ended(
    study: Study, runs: list[RunSpec], job: submitit.Job, state: str, tools: Tools
) -> None:
    """The runs a job left without a result are recorded as failed: its state, why its
    training stopped, its log."""
    name = runs[0].training
    tools.narrator.note(f"{name}: job {job.job_id} ended ({state})")
    stopped = None
    if job.paths.result_pickle.exists():  # else submitit's job.result() would wait for it
        with contextlib.suppress(Exception):  # the job raised: its log says what
            stopped = job.result()
    why = f": {stopped}" if stopped else " ended before finishing"
    for r in runs:
        if results.read_result(r.sample_dir(study.out)) is None:
            err = DiffscapeError(f"job {job.job_id} ({state}){why}; see {job.paths.stdout}")
            record_failure(study, r, "job", err, tools)
