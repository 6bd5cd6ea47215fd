"""Running a sweep: its planned runs handed to :mod:`diffscape.study`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from diffscape.core import layout, lock
from diffscape.core.errors import DiffscapeError
from diffscape.settings.presets import resolve
from diffscape.settings.sections import SlurmSettings
from diffscape.study import results
from diffscape.study.launch import run_study, worker_slots
from diffscape.study.narrate import Tools
from diffscape.study.results import RunResult
from diffscape.study.shared import ensure_data, prepare_study
from diffscape.study.spec import RunSpec, StudySpec
from diffscape.sweep.plan import baseline_name, plan
from diffscape.sweep.spec import SweepError, SweepSpec, load_sweep


def study_spec(spec: SweepSpec, out: Path, data: str | os.PathLike[str] | None) -> StudySpec:
    """The sweep's shared settings: --data, else the file's dataset, else the default synthetic
    set made once in RUNS/_data; [evaluate] and [judge] for every run."""
    chosen = data if data is not None else spec.dataset
    return StudySpec(
        out=Path(out),
        dataset=None if chosen is None else str(chosen),
        synth_size=resolve(spec.preset, spec.base).model.image_size,
        evaluate=spec.evaluate,
        judge=spec.judge,
    )


def _selected(runs: list[RunSpec], only: Iterable[str] | None) -> list[RunSpec]:
    if only is None:
        return runs
    wanted = set(only)
    unknown = wanted - {n for r in runs for n in (r.training, r.name, r.setting)}
    if unknown:
        raise SweepError(
            f"--only {', '.join(sorted(unknown))}: no such run; the runs are "
            f"{', '.join(dict.fromkeys(r.training for r in runs))}"
        )
    return [r for r in runs if wanted & {r.training, r.name, r.setting}]


def run_sweep(
    sweep: str | os.PathLike[str] | dict[str, Any] | SweepSpec,
    out_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    only: Iterable[str] | None = None,
    gpus: int | None = None,
    jobs: int | None = None,
    launcher: Literal["local", "slurm"] = "local",
    slurm: SlurmSettings | None = None,
) -> list[RunResult]:
    """Run (or continue) a sweep into ``out_dir``; returns every run's result.

    ``data`` overrides the file's dataset. ``only`` restricts the sweep to some training runs
    (by folder name) or rows (by name); the floor is then left to the whole sweep. ``gpus``
    overrides ``torch.cuda.device_count()`` for deciding whether to run one worker per GPU.
    ``jobs``: how many trainings at once (at most one per GPU; on a CPU, each on its share of
    the cores: :func:`diffscape.study.launch.worker_slots`); default one per GPU, else one.
    ``launcher="slurm"``: every unfinished training a Slurm job asking for ``slurm`` (default:
    the file's ``[slurm]``), all submitted at once.
    """
    worker_slots(0, jobs)  # a bad --jobs fails before anything is written
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise DiffscapeError("--launcher slurm: no sbatch here; run it on a Slurm login node")
    slurm = (slurm or spec.slurm) if launcher == "slurm" else None
    out = layout.check_out(out_dir, "sweep")
    all_runs = plan(spec)
    runs = _selected(all_runs, only)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    with lock.hold(out, "sweep"):
        sspec = study_spec(spec, out, data)
        tools = Tools(progress=progress)
        if only is None or not layout.is_sweep_dir(out):  # the folder's marker, first
            results.write_json(out / layout.SWEEP_JSON, sweep_record(spec, all_runs, sspec))
        dataset = ensure_data(sspec, tools)
        conditional = any(r.config.model.conditional for r in runs)
        study = prepare_study(sspec, dataset, tools, judge_needed=conditional, floor=only is None)
        return run_study(study, runs, tools, gpus=gpus, jobs=jobs, slurm=slurm)


def sweep_record(spec: SweepSpec, runs: list[RunSpec], sspec: StudySpec) -> dict[str, Any]:
    """sweep.json: the spec as read, the base config and the planned rows (for the report)."""
    # where the sweep's dataset is (or will be, once synthesized)
    data = sspec.out / sspec.data_dir if sspec.dataset is None else Path(sspec.dataset)
    dataset = str(data.resolve())
    return {
        "name": spec.name,
        "description": spec.description,
        "source": spec.source,
        "dataset": dataset,
        "spec": {**spec.raw, "dataset": dataset},
        "base_config": resolve(spec.preset, spec.base).to_dict(),
        "base_sample": spec.sample.to_dict(),
        "seeds": None if spec.seeds is None else list(spec.seeds),
        "baseline": baseline_name(spec),
        "runs": [
            {
                "name": r.name,
                "setting": r.setting or r.name,
                "seed": r.seed,
                "training": r.training,
                "sampling": r.sampling,
                "changes": r.changes,
                "sample_dir": str(Path(r.training) / layout.TRAIN_SAMPLES / r.sampling),
            }
            for r in runs
        ],
    }
