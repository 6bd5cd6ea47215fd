"""A sweep's plan: every (training, sampling) pair, its config resolved and checked up front."""

from __future__ import annotations

from typing import Any

from diffscape.core import layout
from diffscape.settings.engine import ConfigError
from diffscape.settings.presets import resolve
from diffscape.settings.sections import (
    DEFAULT_SAMPLE_STEPS,
    EvaluateSettings,
    JudgeSettings,
    RunConfig,
    SampleSettings,
)

# One row of the report is a training run sampled one way: the study's RunSpec, so that a
# planned sweep runs as it is.
from diffscape.study.spec import RunSpec
from diffscape.sweep.spec import SweepError, SweepSpec, Variant, folder_problem


def setting_name(spec: SweepSpec, t: Variant, s: Variant) -> str:
    """A setting the sweep compares (a row of its report): the training run, the sampling, or
    ``training/sampling`` where both vary. Seeds replicate each of them."""
    if len(spec.samplings) == 1:
        return t.name
    return s.name if len(spec.trainings) == 1 else f"{t.name}/{s.name}"


def baseline_name(spec: SweepSpec) -> str:
    """The setting the others are compared with: ``baseline = "..."``, else the first."""
    names = [setting_name(spec, t, s) for t in spec.trainings for s in spec.samplings]
    if spec.baseline is None:
        return names[0]
    if spec.baseline not in names:
        raise SweepError(
            f"{spec.source}: baseline {spec.baseline!r} is not one of the settings: "
            f"{', '.join(names)}"
        )
    return spec.baseline


def replicate_folder(training: str, seed: int) -> str:
    """A replicate's training folder: ``<training>-seed<k>`` (a sweep without ``seeds`` keeps
    ``<training>``)."""
    return f"{training}-seed{seed}"


def check_folders(spec: SweepSpec) -> None:
    """Refuse, before anything runs (``--dry-run`` too), a training run whose folder the sweep
    folder cannot hold (its own files' names, ``_`` names, too long), and a sampling whose
    folder name is too long; otherwise they would fail late, or write into the shared judge."""
    problems = []
    for t in spec.trainings:
        folders = [t.name] + [replicate_folder(t.name, seed) for seed in spec.seeds or ()]
        why = next((w for f in folders if (w := folder_problem(f)) is not None), None)
        if why is not None:
            problems.append(f"run {t.name}: {why}")
    for s in spec.samplings:
        if len(s.name.encode("utf-8")) > layout.MAX_NAME_BYTES:
            problems.append(f"sampling {s.name}: longer than {layout.MAX_NAME_BYTES} bytes")
    if problems:
        them = "it" if len(problems) == 1 else "them"
        raise SweepError(f"{spec.source}: {'; '.join(problems)}; rename {them}")


def _sample_for(
    spec: SweepSpec, changes: dict[str, Any], cfg: RunConfig, seed: int | None
) -> tuple[Any, dict]:
    """A run's sampling (``seed``: a replicate's, not a change) with the steps it really takes:
    ancestral sampling (ddpm) every one of the T steps; the others the steps asked for, or
    (none) the default, at most T."""
    seeded = {} if seed is None else {"seed": seed}
    sample = SampleSettings.parse({**spec.sample.to_dict(), **changes, **seeded})
    changes = {f"sample.{k}": v for k, v in changes.items()}
    t = cfg.diffusion.timesteps
    if sample.sampler == "ddpm" or sample.steps is None:
        sample = sample.with_changes(
            steps=t if sample.sampler == "ddpm" else min(DEFAULT_SAMPLE_STEPS, t)
        )
        if "sample.steps" in changes:
            changes["sample.steps"] = sample.steps
    return sample, changes


def plan(spec: SweepSpec) -> list[RunSpec]:
    """Every run of the sweep, its config resolved and validated up front, so that a typo in
    the last run stops the sweep before hours are spent on the first. With ``seeds``, every
    setting once per seed (train.seed and sample.seed both the seed), seed after seed."""
    check_folders(spec)
    runs = []
    errors = []
    baseline_name(spec)  # checked before anything runs
    seeds: tuple[int | None, ...] = spec.seeds if spec.seeds is not None else (None,)
    for t in spec.trainings:
        try:
            configs = {
                seed: resolve(
                    spec.preset,
                    {**spec.base, **t.changes, **({} if seed is None else {"train.seed": seed})},
                )
                for seed in seeds
            }
        except ConfigError as e:
            errors.append(f"run {t.name}: {e}")
            configs = {}
        for s in spec.samplings:
            setting = setting_name(spec, t, s)
            for seed, cfg in configs.items():
                sample, changes = _sample_for(spec, s.changes, cfg, seed)
                training = t.name if seed is None else replicate_folder(t.name, seed)
                name = setting if seed is None else f"{setting} (seed {seed})"
                changes = {**t.changes, **changes}
                runs.append(RunSpec(name, training, s.name, cfg, sample, changes, setting, seed))
    if errors:
        raise SweepError("; ".join(errors))
    if spec.seeds is not None:  # seed after seed: a study stopped early still compares them all
        runs.sort(key=lambda r: spec.seeds.index(r.seed))  # type: ignore[union-attr]
    return runs


def describe_plan(spec: SweepSpec, runs: list[RunSpec]) -> str:
    """What ``--dry-run`` prints: the base and every run's changes."""
    lines = [f"sweep {spec.name} ({spec.source}): {len(runs)} run(s), preset {spec.preset}"]
    if spec.base:
        lines.append("  base: " + ", ".join(f"{k}={v}" for k, v in spec.base.items()))
    s = spec.sample
    lines.append(
        f"  sample: n={s.n} per class, {s.sampler} {s.steps or DEFAULT_SAMPLE_STEPS} steps, "
        f"w={s.guidance:g}; "
        f"evaluate: {_describe_eval(spec.evaluate)}; judge: {_describe_judge(spec.judge)}"
    )
    if spec.seeds is not None:
        lines.append(
            f"  seeds: {', '.join(map(str, spec.seeds))} (train.seed and sample.seed of each "
            f"replicate); baseline: {baseline_name(spec)}"
        )
    for r in runs:
        what = ", ".join(f"{k}={v}" for k, v in r.changes.items()) or "(base)"
        where = f"  -> {r.training}/" if r.seed is not None else ""
        lines.append(f"  {r.name:<32} {what}{where}")
    return "\n".join(lines)


def _describe_eval(e: EvaluateSettings) -> str:
    if not e.enabled:
        return "off"
    n = "all" if e.n is None else e.n
    extra = [x for x, on in (("fid64", e.fid64), ("memorisation", e.memorisation)) if on]
    if e.bootstrap:
        extra.append(f"FID bootstrap {e.bootstrap}")
    return f"n={n} vs {e.split} n={e.n_real or n}" + "".join(
        f" + {x}" for x in (["floor"] if e.floor else []) + extra
    )


def _describe_judge(j: JudgeSettings) -> str:
    if not j.enabled:
        return "off"
    return (j.path or j.kind) + "".join(f" + {k}" for k in j.also)
