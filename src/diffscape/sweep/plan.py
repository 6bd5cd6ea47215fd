"""A sweep's plan: every (training, sampling) pair, its config resolved and checked up front."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from diffscape.config import ConfigError, RunConfig, parse_section, resolve
from diffscape.pipeline import RunSpec
from diffscape.sweep.spec import (
    EvaluateSettings,
    JudgeSettings,
    SweepError,
    SweepSpec,
)

# ---- the plan: (training, sampling) pairs --------------------------------------------------------


# One row of the report: a training run sampled one way. The pipeline's run type, so that a
# planned sweep runs as it is.
PlannedRun = RunSpec


def resolve_config(preset: str, overrides: dict[str, Any]) -> RunConfig:
    """defaults <- preset <- dotted overrides, validated (errors name the field):
    :func:`diffscape.config.resolve` with a sweep's ``{"train.lr": 1e-4}`` mapping."""
    return resolve(preset, overrides)


def plan(spec: SweepSpec) -> list[PlannedRun]:
    """Every run of the sweep, its config resolved and validated up front, so that a typo in
    the last run stops the sweep before hours are spent on the first."""
    runs = []
    errors = []
    for t in spec.trainings:
        try:
            cfg = resolve_config(spec.preset, {**spec.base, **t.changes})
        except ConfigError as e:
            errors.append(f"run {t.name}: {e}")
            continue
        for s in spec.samplings:
            sample = parse_section("sample", {**asdict(spec.sample), **s.changes})
            changes = {f"sample.{k}": v for k, v in s.changes.items()}
            if sample.sampler == "ddpm":  # ancestral sampling takes every one of the T steps
                sample = replace(sample, steps=cfg.diffusion.timesteps)
                if "sample.steps" in changes:
                    changes["sample.steps"] = sample.steps
            if len(spec.samplings) == 1:
                name = t.name
            elif len(spec.trainings) == 1:
                name = s.name
            else:
                name = f"{t.name}/{s.name}"
            changes = {**t.changes, **changes}
            runs.append(RunSpec(name, t.name, s.name, cfg, sample, changes))
    if errors:
        raise SweepError("; ".join(errors))
    return runs


def base_config(spec: SweepSpec) -> RunConfig:
    return resolve_config(spec.preset, spec.base)


def describe_plan(spec: SweepSpec, runs: list[PlannedRun]) -> str:
    """What ``--dry-run`` prints: the base and every run's changes."""
    lines = [f"sweep {spec.name} ({spec.source}): {len(runs)} run(s), preset {spec.preset}"]
    if spec.base:
        lines.append("  base: " + ", ".join(f"{k}={v}" for k, v in spec.base.items()))
    s = spec.sample
    lines.append(
        f"  sample: n={s.n} per class, {s.sampler} {s.steps} steps, w={s.guidance:g}; "
        f"evaluate: {_describe_eval(spec.evaluate)}; judge: {_describe_judge(spec.judge)}"
    )
    for r in runs:
        what = ", ".join(f"{k}={v}" for k, v in r.changes.items()) or "(base)"
        lines.append(f"  {r.name:<32} {what}")
    return "\n".join(lines)


def _describe_eval(e: EvaluateSettings) -> str:
    if not e.enabled:
        return "off"
    n = "all" if e.n is None else e.n
    return f"n={n} vs {e.split} n={e.n_real or n}" + (" + floor" if e.floor else "")


def _describe_judge(j: JudgeSettings) -> str:
    return "off" if not j.enabled else (j.path or j.kind)
