"""Hyperparameter studies: a sweep file -> one folder per training run, each trained, sampled,
evaluated (FID/KID) and judged (per-class accuracy); then ``diffscape report`` reads them all.

A sweep file (TOML; shipped ones in ``diffscape/sweeps/``, by name)::

    name = "schedule"                 # optional, for the report's title
    description = "..."               # optional, shown in the report
    preset = "tiny"                   # the preset every run starts from
    dataset = "data/synth"            # optional, relative to this file; --data wins; neither:
                                      #   the default synthetic set is made in RUNS/_data
    seeds = [0, 1, 2]                 # optional: replicates. Every setting runs once per seed,
                                      #   with train.seed = sample.seed = that seed (so neither
                                      #   may be set elsewhere); data, floor, judges are shared
    baseline = "linear-T1000"         # optional: the setting the report compares the others
                                      #   with (default: the first); a verdict per metric
    [base]                            # overrides for every run: dotted keys or nested tables
    model.conditional = true
    train = { steps = 1500, batch_size = 32 }

    [grid]                            # EITHER a cartesian product of training settings ...
    "model.activation" = ["gelu", "relu", "silu"]

    [[runs]]                          # ... OR named runs, each with its overrides
    name = "cosine"
    diffusion = { schedule = "cosine" }

    [sample]                          # how every model is sampled
    n = 50                            # images per class (in total for unconditional models)
    sampler = "ddim"                  # ddpm | ddim | dpm
    steps = 50                        # sampler steps (ddpm always takes all T)
    guidance = 1.0                    # classifier-free guidance weight w
    guidance_interval = [0.3, 3.0]    # optional: w only at noise levels sigma in (lo, hi]
    [sample.grid]                     # sampling-only variation, on the same trained model(s):
    guidance = [0, 1, 2, 3, 5]        #   a cartesian product ...
    # [[sample.runs]]                 #   ... or a list of settings, e.g. {sampler="ddpm"}

    [evaluate]                        # FID/KID against a real split (enabled = false: skip)
    n = 250                           # generated images used (default: all of them)
    n_real = 250                      # real images (default: n)
    bootstrap = 0                     # FID bootstrap resamples (FID's within-run interval)
    fid64 = true                      # + FID on 64-d features, 150 vs 150 (the seed report's)
    memorisation = true               # nearest training image; near-copy share, closest pairs
    [judge]                           # kind = "cnn" | "svc", trained once into RUNS/_judge,
    kind = "svc"                      #   or path = "judges/x"; enabled = false: skip
    also = ["svc"]                    # further judges, once each into RUNS/_judge-<kind>

    [slurm]                           # with --launcher slurm: what each training's job asks
    partition = "gpu"                 #   for (--slurm-partition ... override it): partition,
    gpus = 1                          #   account, gpus, cpus, minutes (the time limit)
    minutes = 240

A sweep expands to at most 1000 runs (trainings x samplings x seeds, counted before anything is
expanded). Run names become folders (unsafe characters made ``-``); names the sweep folder uses
itself (``sweep.json``, ``report.html``, ``_judge``, any name starting with ``_``), names over
200 bytes and names equal but for case are refused, ``--dry-run`` included.

Output folder::

    RUNS/sweep.json                   the sweep as planned (the report's base config, run list)
    RUNS/_data/  RUNS/_judge/         shared: default dataset, judge (made once)
    RUNS/_floor/floor.json            real vs real: the held-out test split against the same
                                      reference split, the best FID/KID these n allow
    RUNS/<run>/                       a training run (config.json, metrics.jsonl, checkpoints/,
                                      train.json once trained)
    RUNS/<run>/samples/<variant>/     one sampling of it: <class>/<i>.png, grid.png,
                                      samples.json, metrics.json, accuracy.json, result.json,
                                      closest-pairs.png, accuracy-<kind>.json (``also``)
    RUNS/_logs/<run>/                 the log of each job that ran that training (submitit's:
                                      <job id>_0_log.out, its submission and result files)
    RUNS/<run>-seed<k>/               with ``seeds``: each replicate's training run (same
                                      layout); a sweep without ``seeds`` keeps RUNS/<run>/, so
                                      older sweep folders resume and report as they were

``result.json`` is written last, so a re-run skips what is finished (status ok, same settings),
retries what failed, and resumes interrupted training (``train`` continues from its latest
checkpoint). A failure (in training, sampling, evaluation or judging) is recorded in
result.json with its traceback and the sweep goes on with the next run.

Runs go one after another in this process on one device. With several GPUs visible (or
``--jobs N`` on a CPU), each training run (with its samplings) is a submitit job on this machine,
one per GPU (``CUDA_VISIBLE_DEVICES``) or N sharing the cores; with ``--launcher slurm`` every
unfinished training is a Slurm job, all submitted at once (:mod:`diffscape.study.launch`).
"""

# The package's API in one namespace: `from diffscape import sweep; sweep.run_sweep(...)`.
from diffscape.sweep.plan import baseline_name, describe_plan, plan
from diffscape.sweep.runner import run_sweep, study_spec
from diffscape.sweep.spec import SweepError, load_sweep, shipped_sweeps

__all__ = [
    "SweepError",
    "baseline_name",
    "describe_plan",
    "load_sweep",
    "plan",
    "run_sweep",
    "shipped_sweeps",
    "study_spec",
]
