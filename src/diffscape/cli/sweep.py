"""``diffscape sweep`` and ``diffscape report``: parse, then call :func:`diffscape.sweep.run_sweep`
and :func:`diffscape.report.build_report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffscape.cli import add_overwrite, options
from diffscape.core import layout
from diffscape.settings.flags import Flags
from diffscape.settings.sections import SlurmSettings

SLURM_FLAGS = Flags(SlurmSettings, rename={n: f"slurm_{n}" for n in SlurmSettings.model_fields})

SWEEP_EPILOG = """\
examples:
  diffscape sweep schedule-cpu --out runs/schedule          # a shipped sweep, by name
  diffscape sweep my-sweep.toml --out runs/mine --data data/photos32
  diffscape sweep guidance-cpu --out runs/guidance --dry-run  # list the runs, do nothing
  diffscape sweep --list                                    # the shipped sweeps
  diffscape sweep schedule-seeds-cpu --out runs/schedule-seeds  # 2 settings x 3 seeds
  diffscape sweep my-sweep.toml --out runs/mine --launcher slurm --slurm-gpus 1  # Slurm jobs

Each run is trained, sampled, evaluated (FID/KID) and judged (per-class accuracy) into
RUNS/<run>/ and RUNS/<run>/samples/<sampling>/ (result.json last). Running the same command
again skips finished work, retries what failed and resumes interrupted training; a failing run
is recorded with its error and the sweep goes on. With several GPUs, runs go one per GPU;
on a CPU, --jobs 2 trains two runs at once with one thread each (on a 2-core VM, 1.4x the images
per minute of one two-thread run for `tiny`). Each run's train.minutes is its own wall clock.
With --launcher slurm every unfinished training is a Slurm job, all submitted at once (logs in
RUNS/_logs/<run>/); a job cancelled, pre-empted or out of time saves a checkpoint and its run is
recorded as failed: the same command again resubmits only what is unfinished, which resumes.
Without a dataset (--data or `dataset = ...` in the file) the default synthetic landscapes are
made in RUNS/_data. At the end RUNS/report.html and RUNS/results.csv are written.

A sweep file (TOML):
  preset = "tiny"                       # where every run starts
  seeds = [0, 1, 2]                     # optional: every setting once per seed (replicates);
  baseline = "linear"                   #   the report gives intervals and verdicts against it
  [base]                                # overrides for every run
  model.conditional = true
  train = { steps = 1500, batch_size = 32 }
  [grid]                                # cartesian product of training settings, or:
  "model.activation" = ["gelu", "relu", "silu"]
  # [[runs]]  name = "cosine"  diffusion = { schedule = "cosine" }
  [sample]                              # n per class, sampler, steps, guidance, eta, seed
  n = 50
  [sample.grid]                         # sampling-only variation: one model, no retraining
  guidance = [0, 1, 2, 3, 5]            # (or [[sample.runs]] sampler = "dpm" steps = 20 ...)
  [evaluate]                            # n, n_real, split, floor; enabled = false to skip
  n = 250
  [judge]                               # kind = "cnn" | "svc", or path = "judges/x"
  kind = "svc"
  [slurm]                               # --launcher slurm: partition, account, gpus, cpus,
  partition = "gpu"                     #   minutes (each job's time limit)
The full format is in the docstring of diffscape/sweep/__init__.py (`python -c "import diffscape.sweep; help(diffscape.sweep)"`).
"""

REPORT_EPILOG = """\
examples:
  diffscape report runs/schedule --out runs/schedule/report.html
  diffscape report runs/a runs/b --out compare.html           # several run folders

One self-contained HTML page (no server, no network): a sortable table of every run (its
changes from the base config, FID and KID ± std with their n, the real-vs-real floor, judge
accuracy overall and per class, training time, img/s), plots the data supports (loss curves,
FID against sampler steps, accuracy against guidance, FID against accuracy) and each run's
per-class sample grid; results.csv is written beside it. A sweep with seeds gets a table of
settings first: each number's mean ± 95% interval over the seeds (seed-to-seed spread and each
run's own sampling noise) and a verdict against the baseline: better, worse, or no difference
found at this n and these seeds. Closest pairs (memorisation) show beside each grid.

Reads, per run folder: config.json, metrics.jsonl (training log), samples/<...>/grid.png and
samples.json, metrics.json (diffscape evaluate) and accuracy.json (diffscape judge score), in the
sample folder or the run folder, result.json (written by sweeps: status, error), and a sweep's
sweep.json and its real-vs-real floor (_floor/floor.json).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="a study: train, sample and score every run of a sweep file",
        description="Run a hyperparameter study: every run of a sweep file is trained, sampled, "
        "evaluated and judged, then one report page is written.",
        epilog=SWEEP_EPILOG,
    )
    p.add_argument("sweep", nargs="?", help="sweep .toml file, or a shipped sweep's name")
    p.add_argument("--out", help="folder for the runs (re-run with it to continue)")
    p.add_argument("--data", help="prepared dataset folder (default: the file's, else synthetic)")
    p.add_argument(
        "--only",
        action="append",
        metavar="RUN",
        help="run only this run (folder name; repeatable)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="trainings at once on this machine: on a CPU, N jobs sharing the cores (each gets "
        "cores/N threads; a small model trains more images per minute this way); with GPUs, at "
        "most one per GPU (default: one per GPU, else 1)",
    )
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="where the trainings run: local (this machine; --jobs) or slurm (a Slurm job each, "
        "all submitted at once; the [slurm] table and --slurm-* say what each asks for)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the runs and jobs and exit")
    p.add_argument("--list", action="store_true", help="list the shipped sweeps and exit")
    p.add_argument("--no-report", action="store_true", help="do not write RUNS/report.html")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    SLURM_FLAGS.add_to(p, "Slurm jobs (--launcher slurm; each overrides the file's [slurm])")
    p.set_defaults(func=run_sweep_command)

    r = sub.add_parser(
        "report",
        help="one self-contained HTML page from sweep or run folders",
        description="Build a report page from a sweep folder, a run folder, or several.",
        epilog=REPORT_EPILOG,
    )
    r.add_argument("runs", nargs="+", help="sweep folder(s) or run folder(s)")
    r.add_argument(
        "--out", default=layout.REPORT_HTML, help="HTML file to write (results.csv goes beside it)"
    )
    add_overwrite(r, "a report page and results.csv")
    r.add_argument("--title", help="page title (default: the sweep's name)")
    r.set_defaults(func=run_report_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    from diffscape import sweep

    if args.list:
        for name, description in sweep.shipped_sweeps().items():
            print(f"{name:<16} {' '.join(description.split())[:100]}")
        return 0
    if not args.sweep:
        raise sweep.SweepError("give a sweep file or a shipped sweep's name (see --list)")
    spec = sweep.load_sweep(args.sweep)
    slurm = SLURM_FLAGS.build(args, base=spec.slurm) if args.launcher == "slurm" else None
    if slurm is None and SLURM_FLAGS.given(args):
        raise sweep.SweepError("--slurm-* options are for --launcher slurm")
    if slurm is not None and args.jobs is not None:
        raise sweep.SweepError("--jobs is for --launcher local: Slurm queues every job at once")
    if args.dry_run:
        import torch

        from diffscape.study.launch import describe_jobs

        runs = sweep.plan(spec)
        print(sweep.describe_plan(spec, runs))
        trainings = list(dict.fromkeys(r.training for r in runs))
        gpus = torch.cuda.device_count()
        print(describe_jobs(trainings, args.out or "RUNS", slurm, gpus, args.jobs))
        return 0
    if not args.out:
        raise sweep.SweepError("--out RUNS: say where the runs go")
    from diffscape.train import TrainingInterrupted

    try:
        names = ("data", "progress", "only", "jobs", "launcher")
        results = sweep.run_sweep(spec, args.out, slurm=slurm, **options(args, *names))
    except TrainingInterrupted as e:
        print(f"diffscape: {e}\nRun the same sweep command again to continue.", file=sys.stderr)
        return 128 + int(e.signum)
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} runs finished in {args.out}")
    for r in failed:
        print(f"  {r.name}: {r.status} {r.error or ''}")
    if not args.no_report and args.only is None:
        from diffscape.report import build_report

        page = build_report(args.out, Path(args.out) / layout.REPORT_HTML, overwrite=True)
        print(f"report: {page}")
    return 1 if failed else 0


def run_report_command(args: argparse.Namespace) -> None:
    from diffscape.report import build_report

    page = build_report(args.runs, args.out, **options(args, "title", "overwrite"))
    print(f"wrote {page} and {page.with_name(layout.RESULTS_CSV)}")
