"""The sweep file (format: ``diffscape.sweep``'s docstring) parsed and checked into a
:class:`SweepSpec`; every value is parsed by the settings engine."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from diffscape.core import layout
from diffscape.core.errors import DiffscapeError
from diffscape.settings.engine import ConfigError, Settings, value_text
from diffscape.settings.presets import split_key
from diffscape.settings.sections import (
    DEFAULT_SAMPLE_STEPS,
    SEED_MAX,
    EvaluateSettings,
    JudgeSettings,
    SampleSettings,
    SlurmSettings,
)

BASE_RUN_NAME = "model"  # the one training run of a sweep without [grid] or [[runs]]


class SweepError(DiffscapeError, ValueError):
    """A bad sweep file; the message names the table and key."""


# ---- the sweep file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One training run or one sampling of the sweep: a name and what it changes."""

    name: str
    changes: dict[str, Any]  # dotted training overrides, or sample settings


@dataclass(frozen=True)
class SweepSpec:
    name: str
    description: str
    preset: str
    dataset: str | None  # absolute, or None: --data or the default synthetic set
    base: dict[str, Any]  # dotted overrides applied to every run
    trainings: tuple[Variant, ...]
    samplings: tuple[Variant, ...]  # changes over ``sample``
    sample: SampleSettings
    evaluate: EvaluateSettings
    judge: JudgeSettings
    source: str  # where the spec was read from
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # as read, paths absolute
    seeds: tuple[int, ...] | None = None  # replicates: train.seed = sample.seed = each; None: one
    baseline: str | None = None  # the setting the others are compared with; None: the first
    slurm: SlurmSettings = field(default_factory=SlurmSettings)  # its jobs, on a Slurm cluster


TOP_KEYS = (
    "name", "description", "preset", "dataset", "base", "grid", "runs", "sample", "evaluate",
    "judge", "seeds", "baseline", "slurm",
)  # fmt: skip
MAX_SEEDS = 100
# Runs of one sweep file (trainings x samplings x seeds), counted before a grid is expanded: a
# 1000 x 1000 grid would otherwise take minutes and hundreds of MB to list, let alone to run.
MAX_RUNS = 1000
# What a sweep folder holds besides its training runs: a run by one of these names would write
# into the shared data, judge or floor, or be overwritten by the sweep's own files.
RESERVED_NAMES = (
    layout.SWEEP_JSON, layout.SWEEP_DATA, layout.SWEEP_JUDGE, layout.SWEEP_FLOOR,
    layout.SWEEP_LOGS, layout.REPORT_HTML, layout.REPORT_JSON, layout.RESULTS_CSV,
    layout.SUMMARY_JSON, layout.LOCK,
)  # fmt: skip


def shipped_sweeps() -> dict[str, str]:
    """{name: description} of the sweep files that come with diffscape."""
    folder = resources.files("diffscape") / "sweeps"
    out = {}
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.endswith(".toml"):
            data = tomllib.loads(p.read_text())
            out[p.name.removesuffix(".toml")] = str(data.get("description", "")).strip()
    return out


def load_sweep(source: str | os.PathLike[str] | dict[str, Any]) -> SweepSpec:
    """A sweep from a TOML file, a shipped name (``schedule-cpu``), the ``sweep.json`` a sweep
    wrote, or plain data as the TOML would parse (paths relative to the current folder)."""
    if isinstance(source, dict):
        return parse_sweep(source, "<dict>", Path.cwd())
    path = Path(source)
    if path.is_file():
        if path.suffix == ".json":
            return parse_sweep(json.loads(path.read_text())["spec"], str(path), path.parent)
        try:
            return parse_sweep(tomllib.loads(path.read_text()), str(path), path.parent)
        except tomllib.TOMLDecodeError as e:
            raise SweepError(f"{path}: not valid TOML: {e}") from None
    shipped = resources.files("diffscape") / "sweeps" / f"{source}.toml"
    if shipped.is_file():
        return parse_sweep(tomllib.loads(shipped.read_text()), f"shipped:{source}", Path.cwd())
    raise SweepError(
        f"no sweep file {source!r}; give a path to a .toml file or one of the shipped sweeps: "
        f"{', '.join(shipped_sweeps())}"
    )


def parse_sweep(data: dict[str, Any], source: str, root: Path) -> SweepSpec:
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SweepError(
            f"{source}: unknown key {', '.join(unknown)}; known: {', '.join(TOP_KEYS)}"
        )
    if "grid" in data and "runs" in data:
        raise SweepError(f"{source}: give either [grid] or [[runs]], not both")
    check_size(data, source)
    raw = copy.deepcopy(data)
    dataset = data.get("dataset")
    if dataset is not None:
        dataset = raw["dataset"] = str((root / str(dataset)).resolve())
    base = flatten_overrides(_table(data, "base", source), f"{source} [base]")
    if "grid" in data:
        where = f"{source} [grid]"
        axes = flatten_overrides(_table(data, "grid", source), where)
        trainings = _unique([Variant(changes_name(c), c) for c in _product(axes, where)], where)
    elif "runs" in data:
        trainings = listed_runs(data["runs"], source)
    else:
        trainings = (Variant(BASE_RUN_NAME, {}),)

    sample, samplings = sampling_variants(_table(data, "sample", source), source)
    judge = _table(raw, "judge", source)
    if judge.get("path") is not None:
        judge["path"] = str((root / str(judge["path"])).resolve())
    spec = SweepSpec(
        name=str(data.get("name") or Path(source).stem.removeprefix("shipped:")),
        description=str(data.get("description", "")).strip(),
        preset=str(data.get("preset", "tiny")),
        dataset=dataset,
        base=base,
        trainings=trainings,
        samplings=samplings,
        sample=sample,
        evaluate=settings(
            EvaluateSettings, _table(data, "evaluate", source), f"{source} [evaluate]"
        ),
        judge=settings(JudgeSettings, judge, f"{source} [judge]"),
        source=source,
        raw=raw,
        seeds=parse_seeds(data.get("seeds"), source),
        baseline=None if data.get("baseline") is None else str(data["baseline"]),
        slurm=settings(SlurmSettings, _table(data, "slurm", source), f"{source} [slurm]"),
    )
    if spec.seeds is not None:
        _check_no_seed_settings(spec)
    return spec


def check_size(data: dict[str, Any], source: str) -> None:
    """Refuse a sweep of more than :data:`MAX_RUNS` runs from the lengths of its lists alone,
    before anything is expanded (a value that is not a list is refused when it is expanded)."""
    grid = data.get("grid") if isinstance(data.get("grid"), dict) else {}
    sample = data.get("sample") if isinstance(data.get("sample"), dict) else {}
    sample_grid = sample.get("grid") if isinstance(sample.get("grid"), dict) else {}
    lists = {
        **flatten_overrides(grid, f"{source} [grid]"),
        "[[runs]]": data.get("runs"),
        **{f"sample.{k}": v for k, v in sample_grid.items()},
        "[[sample.runs]]": sample.get("runs"),
        "seeds": data.get("seeds"),
    }
    factors = [(len(v), k) for k, v in lists.items() if isinstance(v, list)]
    total = math.prod(n for n, _ in factors)
    if total > MAX_RUNS:
        parts = " x ".join(f"{n} {what}" for n, what in factors)
        raise SweepError(
            f"{source}: the sweep expands to {total} runs ({parts}); the limit is {MAX_RUNS}: "
            "split it into several sweep files"
        )


def folder_problem(name: str) -> str | None:
    """Why a training run called ``name`` cannot have a folder of its own in the sweep folder
    (checked on the name after :func:`safe_name`), or None."""
    # Compared regardless of case: "Report.HTML" is report.html on macOS and Windows.
    reserved = next((n for n in RESERVED_NAMES if n.casefold() == name.casefold()), None)
    if reserved is not None:
        return f"it names the sweep folder's own {reserved}"
    if name.startswith(("_", ".")):
        return (
            "names starting with '_' or '.' are kept for the sweep folder's own "
            f"({layout.SWEEP_DATA}, {layout.SWEEP_JUDGE}, {layout.SWEEP_FLOOR})"
        )
    size = len(name.encode("utf-8"))
    if size > layout.MAX_NAME_BYTES:
        return f"its folder name is {size} bytes long; at most {layout.MAX_NAME_BYTES} bytes"
    return None


def parse_seeds(value: Any, source: str) -> tuple[int, ...] | None:
    """``seeds = [0, 1, 2]``: distinct integers, each a training and a sampling seed."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_SEEDS
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    ):
        raise SweepError(
            f"{source}: seeds must be a list of 1 to {MAX_SEEDS} integers, e.g. [0, 1, 2]"
        )
    if len(set(value)) != len(value) or any(not 0 <= s <= SEED_MAX for s in value):
        raise SweepError(f"{source}: seeds {value}: each once, each from 0 to {SEED_MAX}")
    return tuple(value)


def _check_no_seed_settings(spec: SweepSpec) -> None:
    """With ``seeds``, each replicate's seeds come from that list: setting them elsewhere too
    would be silently overridden."""
    keys = set(spec.base) | {k for t in spec.trainings for k in t.changes}
    where = ["train.seed"] if "train.seed" in keys else []
    if any("seed" in s.changes for s in spec.samplings) or spec.sample.seed != 0:
        where.append("sample.seed")
    if where:
        raise SweepError(
            f"{spec.source}: seeds = {list(spec.seeds or ())} sets {' and '.join(where)} of every "
            "replicate; remove it from the other tables"
        )


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SweepError(f"{where}: {key} must be a table, e.g. [{key}]")
    return value


def flatten_overrides(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Nested tables and dotted keys alike -> {"section.name": value}, checked against the
    config's sections (the values are checked when the run's config is resolved)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", table)
    for key in out:
        try:
            split_key(key)
        except ConfigError as e:
            raise SweepError(f"{where}: {e}") from None
    return out


def _value_text(value: Any) -> str:
    """A value in a run's name: lists joined by ``-``, integers as they are (not ``10_000``)."""
    if isinstance(value, list | tuple):
        return "-".join(_value_text(v) for v in value)
    return value_text(value) if isinstance(value, bool | float) else str(value)


def safe_name(text: str) -> str:
    """Letters, digits and ``._=-`` only, so that a name is a folder on any system."""
    name = re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-.")
    return name or "run"


def changes_name(changes: dict[str, Any]) -> str:
    """``{"model.activation": "gelu", "train.lr": 1e-4}`` -> ``activation=gelu_lr=0.0001``;
    the section is kept only where two keys share a name."""
    if not changes:
        return "base"
    short = [k.partition(".")[2] for k in changes]
    parts = [
        f"{s if short.count(s) == 1 else k}={_value_text(v)}"
        for (k, v), s in zip(changes.items(), short, strict=True)
    ]
    return safe_name("_".join(parts))


def _unique(variants: list[Variant], where: str) -> tuple[Variant, ...]:
    """The variants, if no two share a folder: names are compared after :func:`safe_name` and
    regardless of case (one folder on macOS and Windows)."""
    folders: dict[str, list[str]] = {}
    for v in variants:
        folders.setdefault(v.name.casefold(), []).append(v.name)
    dupes = [" and ".join(names) for names in folders.values() if len(names) > 1]
    if dupes:
        raise SweepError(f"{where}: two runs would share the name {', '.join(dupes)}; name them")
    return tuple(variants)


def _product(axes: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The cartesian product of the axes, in the order they are written."""
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: {key} must be a non-empty list of values")
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def _tables(runs: Any, where: str, what: str) -> list[dict[str, Any]]:
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise SweepError(f"{where}: {what} must be a list of tables")
    return runs


def listed_runs(runs: Any, source: str) -> tuple[Variant, ...]:
    out = []
    for i, entry in enumerate(_tables(runs, source, "[[runs]]")):
        entry = dict(entry)
        name = entry.pop("name", None)
        changes = flatten_overrides(entry, f"{source} [[runs]] #{i + 1}")
        out.append(Variant(safe_name(str(name)) if name else changes_name(changes), changes))
    return _unique(out, f"{source} [[runs]]")


def settings(cls: type[Settings], table: dict[str, Any], where: str) -> Any:
    """Settings (``SampleSettings``, ``EvaluateSettings``, ``JudgeSettings``) from a TOML table,
    parsed by the settings engine; its errors become a SweepError saying where. A list refused
    as a sample setting (not ``guidance_interval = [lo, hi]``) is one meant to vary."""
    try:
        return cls.parse(table)
    except ConfigError as e:
        key = e.path[0] if e.path else ""
        if cls is SampleSettings and isinstance(table.get(key), list):
            raise SweepError(
                f"{where}: {key} is a list; to vary it put it under [sample.grid], "
                f"e.g. [sample.grid] {key} = {table[key]}"
            ) from None
        raise SweepError(f"{where}: {e}") from None


def sampling_name(s: SampleSettings, extra: list[str]) -> str:
    """``ddim-50-w1``: sampler, steps (ddpm takes all T), guidance, then anything else set."""
    steps = DEFAULT_SAMPLE_STEPS if s.steps is None else s.steps  # as before steps could be none
    parts = [s.sampler] + ([] if s.sampler == "ddpm" else [str(steps)]) + [f"w{s.guidance:g}"]
    parts += [f"{key}{_value_text(getattr(s, key))}" for key in extra]
    return safe_name("-".join(parts))


def sampling_variants(
    table: dict[str, Any], source: str
) -> tuple[SampleSettings, tuple[Variant, ...]]:
    """``[sample]`` and the samplings of every trained model: one (``[sample]`` as is), a grid
    over it, or a list of changes to it. A variant's changes are the sample settings that
    differ between them."""
    where = f"{source} [sample]"
    table = dict(table)
    grid = _table(table, "grid", where)
    runs = table.pop("runs", None)
    table.pop("grid", None)
    if grid and runs is not None:
        raise SweepError(f"{source}: give either [sample.grid] or [[sample.runs]], not both")
    sample = settings(SampleSettings, table, where)
    known = list(SampleSettings.model_fields)
    unknown = [key for key in grid if key not in known]
    if unknown:
        raise SweepError(f"{where}.grid: unknown key {unknown[0]}; known: {', '.join(known)}")
    if grid:
        changes = _product(grid, f"{where}.grid")
    elif runs is not None:
        changes = [dict(r) for r in _tables(runs, where, "[[sample.runs]]")]
    else:
        changes = [{}]
    made = [
        settings(SampleSettings, {**sample.to_dict(), **c}, f"{where} variant #{i + 1}")
        for i, c in enumerate(changes)
    ]
    # Name by the standard triple plus whatever else differs between the variants.
    varying = [k for k in ("eta", "seed", "n") if len({getattr(s, k) for s in made}) > 1]
    varying += [k for k in ("eta", "seed") if k not in varying and getattr(made[0], k)]
    # what differs between the variants or from [sample] (a key every variant sets alike too)
    differ = [k for k in known if len({getattr(s, k) for s in [sample, *made]}) > 1]
    out = [Variant(sampling_name(s, varying), {k: getattr(s, k) for k in differ}) for s in made]
    return sample, _unique(out, f"{where} (samplings)")
