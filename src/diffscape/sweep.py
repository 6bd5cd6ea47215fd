"""Hyperparameter studies: a sweep file -> one folder per training run, each trained, sampled,
evaluated (FID/KID) and judged (per-class accuracy); then ``diffscape report`` reads them all.

A sweep file (TOML; shipped ones in ``diffscape/sweeps/``, by name)::

    name = "schedule"                 # optional, for the report's title
    description = "..."               # optional, shown in the report
    preset = "tiny"                   # the preset every run starts from
    dataset = "data/synth"            # optional, relative to this file; --data wins; neither:
                                      #   the default synthetic set is made in RUNS/_data
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
    [sample.grid]                     # sampling-only variation, on the same trained model(s):
    guidance = [0, 1, 2, 3, 5]        #   a cartesian product ...
    # [[sample.runs]]                 #   ... or a list of settings, e.g. {sampler="ddpm"}

    [evaluate]                        # FID/KID against a real split (enabled = false: skip)
    n = 250                           # generated images used (default: all of them)
    n_real = 250                      # real images (default: n)
    [judge]                           # kind = "cnn" | "svc", trained once into RUNS/_judge,
    kind = "svc"                      #   or path = "judges/x"; enabled = false: skip

Output folder::

    RUNS/sweep.json                   the sweep as planned (the report's base config, run list)
    RUNS/_data/  RUNS/_judge/         shared: default dataset, judge (made once)
    RUNS/_floor/metrics.json          real vs real: the held-out test split against the same
                                      reference split, the best FID/KID these n allow
    RUNS/<run>/                       a training run (config.json, metrics.jsonl, checkpoints/)
    RUNS/<run>/samples/<variant>/     one sampling of it: <class>/<i>.png, grid.png,
                                      samples.json, metrics.json, accuracy.json, result.json

``result.json`` is written last, so a re-run skips what is finished (status ok, same settings),
retries what failed, and resumes interrupted training (``train`` continues from its latest
checkpoint). A failure (in training, sampling, evaluation or judging) is recorded in
result.json with its traceback and the sweep goes on with the next run.

Runs go one after another on one device. With several GPUs visible, each training run (with its
samplings) goes to a subprocess of its own, one per GPU (``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import traceback
import typing
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from diffscape.config import SECTIONS, ConfigError, RunConfig, from_dict, load_preset
from diffscape.errors import DiffscapeError

RESULT_JSON = "result.json"
SWEEP_JSON = "sweep.json"
DATA_DIR = "_data"
JUDGE_DIR = "_judge"
FLOOR_DIR = "_floor"
DEFAULT_SYNTH_N = 2500  # images of the default synthetic set (as `diffscape data synth`)
BASE_RUN_NAME = "model"  # the one training run of a sweep without [grid] or [[runs]]


class SweepError(DiffscapeError, ValueError):
    """A bad sweep file; the message names the table and key."""


# ---- the sweep file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSettings:
    n: int = 50  # images per class (per_class for conditional models; in total otherwise)
    sampler: Literal["ddpm", "ddim", "dpm"] = "ddim"  # diffusers scheduler
    steps: int = 50  # sampler steps; ddpm ignores it and takes all T
    guidance: float = 1.0  # classifier-free guidance w: 0 uncond, 1 cond, >1 guided
    eta: float = 0.0  # DDIM noise (0 = deterministic)
    seed: int = 0  # image i of class c depends only on (seed, c, i)


@dataclass(frozen=True)
class EvaluateSettings:
    enabled: bool = True  # FID/KID of every sampling (Inception: a few images/s on a CPU)
    n: int | None = None  # generated images used; None: all that were made
    n_real: int | None = None  # real images; None: same as n (the whole split when n is None)
    split: str = "train"  # the real split generated images are compared with
    floor: bool = True  # also score the test split against it once: the real-vs-real floor


@dataclass(frozen=True)
class JudgeSettings:
    enabled: bool = True  # per-class accuracy of conditional samples
    kind: Literal["cnn", "svc"] = "cnn"  # judge trained once per sweep into RUNS/_judge
    path: str | None = None  # an already trained judge folder instead (relative to the file)


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


TOP_KEYS = (
    "name", "description", "preset", "dataset", "base", "grid", "runs", "sample", "evaluate",
    "judge",
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
        text = path.read_text()
        if path.suffix == ".json":
            return parse_sweep(json.loads(text)["spec"], str(path), path.parent)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SweepError(f"{path}: not valid TOML: {e}") from None
        return parse_sweep(data, str(path), path.parent)
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
    raw = copy.deepcopy(data)
    dataset = data.get("dataset")
    if dataset is not None:
        dataset = str((root / str(dataset)).resolve())
        raw["dataset"] = dataset
    base = flatten_overrides(_table(data, "base", source), f"{source} [base]")
    if "grid" in data:
        trainings = grid_variants(
            flatten_overrides(_table(data, "grid", source), f"{source} [grid]"),
            f"{source} [grid]",
        )
    elif "runs" in data:
        trainings = listed_runs(data["runs"], source)
    else:
        trainings = (Variant(BASE_RUN_NAME, {}),)

    sample_table = dict(_table(data, "sample", source))
    sample_grid = _table(sample_table, "grid", f"{source} [sample]")
    sample_runs = sample_table.pop("runs", None)
    sample_table.pop("grid", None)
    if sample_grid and sample_runs is not None:
        raise SweepError(f"{source}: give either [sample.grid] or [[sample.runs]], not both")
    sample = settings(SampleSettings, sample_table, f"{source} [sample]")
    samplings = sampling_variants(sample, sample_grid, sample_runs, f"{source} [sample]")

    judge_table = dict(_table(data, "judge", source))
    if judge_table.get("path") is not None:
        judge_table["path"] = str((root / str(judge_table["path"])).resolve())
        raw.setdefault("judge", {})["path"] = judge_table["path"]
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
        judge=settings(JudgeSettings, judge_table, f"{source} [judge]"),
        source=source,
        raw=raw,
    )
    return spec


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
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name or "." in name:
            raise SweepError(
                f"{where}: {key!r} is not a setting; use section.name with a section of "
                f"{', '.join(SECTIONS)} (e.g. train.lr)"
            )
    return out


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "-".join(_value_text(v) for v in value)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


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
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"{where}: two runs would share the name {', '.join(dupes)}; name them")
    return tuple(variants)


def grid_variants(axes: dict[str, Any], where: str) -> tuple[Variant, ...]:
    """The cartesian product of the axes, in the order they are written."""
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: {key} must be a non-empty list of values")
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    return _unique([Variant(changes_name(c), c) for c in combos], where)


def listed_runs(runs: Any, source: str) -> tuple[Variant, ...]:
    if not isinstance(runs, list) or not runs:
        raise SweepError(f"{source}: [[runs]] must be a list of tables")
    out = []
    for i, entry in enumerate(runs):
        where = f"{source} [[runs]] #{i + 1}"
        if not isinstance(entry, dict):
            raise SweepError(f"{where}: each run must be a table")
        entry = dict(entry)
        name = entry.pop("name", None)
        changes = flatten_overrides(entry, where)
        out.append(Variant(safe_name(str(name)) if name else changes_name(changes), changes))
    return _unique(out, f"{source} [[runs]]")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """A TOML value -> the field's type (int/float/str/bool/Literal/optional), or raise."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        if value not in args:
            raise SweepError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if type(None) in args:  # X | None
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise SweepError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def settings(cls: type, table: dict[str, Any], where: str) -> Any:
    """A settings dataclass from a TOML table; unknown keys and wrong types name the key."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise SweepError(f"{where}: unknown key {', '.join(unknown)}; known: {', '.join(hints)}")
    for key, value in table.items():
        if isinstance(value, list) and cls is SampleSettings:
            raise SweepError(
                f"{where}: {key} is a list; to vary it put it under [sample.grid], "
                f"e.g. [sample.grid] {key} = {value}"
            )
    values = {k: _coerce(v, hints[k], f"{where} {k}") for k, v in table.items()}
    out = cls(**values)
    if isinstance(out, SampleSettings):
        check_sample(out, where)
    if isinstance(out, EvaluateSettings):
        for name in ("n", "n_real"):
            v = getattr(out, name)
            if v is not None and v < 2:
                raise SweepError(f"{where} {name}: FID/KID need at least 2 images")
    return out


def check_sample(s: SampleSettings, where: str) -> None:
    if s.n < 1:
        raise SweepError(f"{where} n: at least 1 image per class")
    if s.steps < 1:
        raise SweepError(f"{where} steps: at least 1 sampler step")
    if s.guidance < 0:
        raise SweepError(f"{where} guidance: must be >= 0")


def sampling_name(s: SampleSettings, extra: Iterable[str] = ()) -> str:
    """``ddim-50-w1``: sampler, steps (ddpm takes all T), guidance, then anything else set."""
    parts = [s.sampler] + ([] if s.sampler == "ddpm" else [str(s.steps)])
    parts.append(f"w{s.guidance:g}")
    for key in extra:
        parts.append(f"{key}{_value_text(getattr(s, key))}")
    return safe_name("-".join(parts))


def sampling_variants(
    sample: SampleSettings, grid: dict[str, Any], runs: Any, where: str
) -> tuple[Variant, ...]:
    """The samplings of every trained model: one (``[sample]`` as is), a grid over it, or a list
    of changes to it. A variant's changes are the sample settings that differ between them."""
    known = [f.name for f in fields(SampleSettings)]
    if grid:
        for key, values in grid.items():
            if key not in known:
                raise SweepError(f"{where}.grid: unknown key {key}; known: {', '.join(known)}")
            if not isinstance(values, list) or not values:
                raise SweepError(f"{where}.grid: {key} must be a non-empty list")
        changes = [dict(zip(grid, vs, strict=True)) for vs in itertools.product(*grid.values())]
    elif runs is not None:
        if not isinstance(runs, list) or not runs:
            raise SweepError(f"{where}: [[sample.runs]] must be a list of tables")
        if not all(isinstance(r, dict) for r in runs):
            raise SweepError(f"{where}: each [[sample.runs]] entry must be a table")
        changes = [dict(r) for r in runs]
    else:
        changes = [{}]
    made = []
    for i, c in enumerate(changes):
        s = settings(SampleSettings, {**asdict(sample), **c}, f"{where} variant #{i + 1}")
        made.append(s)
    # Name by the standard triple plus whatever else differs between the variants.
    varying = [k for k in ("eta", "seed", "n") if len({getattr(s, k) for s in made}) > 1]
    varying += [k for k in ("eta", "seed") if k not in varying and getattr(made[0], k)]
    out = [
        Variant(sampling_name(s, varying), {k: getattr(s, k) for k in _varying_keys(made)})
        for s in made
    ]
    return _unique(out, f"{where} (samplings)")


def _varying_keys(made: list[SampleSettings]) -> list[str]:
    return [f.name for f in fields(SampleSettings) if len({getattr(s, f.name) for s in made}) > 1]


# ---- the plan: (training, sampling) pairs --------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    """One row of the report: a training run sampled one way."""

    name: str  # the row's name in the report
    training: str  # folder RUNS/<training>
    sampling: str  # folder RUNS/<training>/samples/<sampling>
    changes: dict[str, Any]  # dotted overrides beyond [base], plus sample.* that vary
    config: RunConfig
    sample: SampleSettings

    def train_dir(self, out: Path) -> Path:
        return Path(out) / self.training

    def sample_dir(self, out: Path) -> Path:
        return Path(out) / self.training / "samples" / self.sampling


def resolve_config(preset: str, overrides: dict[str, Any]) -> RunConfig:
    """defaults <- preset <- dotted overrides, validated (errors name the field)."""
    data = copy.deepcopy(load_preset(preset))
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = value
    return from_dict(data)


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
            sample = SampleSettings(**{**asdict(spec.sample), **s.changes})
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
            runs.append(PlannedRun(name, t.name, s.name, changes, cfg, sample))
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


# ---- running -------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), for comparing with what was written."""
    return json.loads(json.dumps(value))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so that a result.json is either whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class _Context:
    spec: SweepSpec
    out: Path
    data: Path
    judge: Path | None
    progress: bool
    # Built once per sweep process and reused by every run: the Inception network takes
    # seconds to build (about 10 s on a busy 2-core CPU), longer than scoring a few images.
    tools: dict[str, Any] = field(default_factory=dict, compare=False)

    def extractor(self) -> Any:
        if "extractor" not in self.tools:
            from diffscape.metrics.features import InceptionExtractor
            from diffscape.metrics.weights import resolve_inception_weights
            from diffscape.sample import default_device

            weights = resolve_inception_weights(None)
            log(
                f"Inception weights: {weights.path} (sha256 {weights.sha256[:12]}, {weights.source})"
            )
            self.tools["extractor"] = InceptionExtractor(weights, default_device())
        return self.tools["extractor"]

    def settings_record(self, run: PlannedRun) -> dict[str, Any]:
        """What a finished run must match to be skipped on a re-run."""
        return _plain(
            {
                "config": run.config.to_dict(),
                "sample": asdict(run.sample),
                "evaluate": asdict(self.spec.evaluate),
                # What was used, not where it lies: moving RUNS must not redo every run.
                "judge": None if self.judge is None else _judge_identity(self.judge),
                "dataset": _dataset_identity(self.data),
            }
        )


def _dataset_identity(path: Path) -> str:
    from diffscape.data.dataset import load_dataset

    return load_dataset(path).content_hash


def _judge_identity(path: Path) -> dict[str, Any]:
    info = json.loads((Path(path) / "judge.json").read_text())
    return {k: info.get(k) for k in ("kind", "classes", "size", "seed", "settings", "accuracy")}


def is_finished(ctx: _Context, run: PlannedRun) -> bool:
    r = read_result(run.sample_dir(ctx.out) / RESULT_JSON)
    if r is None or r.get("status") != "ok":
        return False
    return r.get("settings") == ctx.settings_record(run)


def run_sweep(
    sweep: str | os.PathLike[str] | dict[str, Any] | SweepSpec,
    out_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    only: Iterable[str] | None = None,
    gpus: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) a sweep into ``out_dir``; returns every run's result.json record.

    ``data`` overrides the file's dataset. ``only`` restricts the sweep to some training runs
    (by folder name) or rows (by name). ``gpus`` overrides ``torch.cuda.device_count()`` for
    deciding whether to run one subprocess per GPU.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    out = Path(out_dir)
    runs = all_runs = plan(spec)
    if only is not None:
        wanted = set(only)
        unknown = wanted - {r.training for r in runs} - {r.name for r in runs}
        if unknown:
            raise SweepError(
                f"--only {', '.join(sorted(unknown))}: no such run; the runs are "
                f"{', '.join(dict.fromkeys(r.training for r in runs))}"
            )
        runs = [r for r in runs if r.training in wanted or r.name in wanted]
    out.mkdir(parents=True, exist_ok=True)
    dataset = ensure_data(spec, data, out, progress)
    if only is None or not (out / SWEEP_JSON).is_file():  # workers (--only) leave it be
        write_json_atomic(out / SWEEP_JSON, sweep_record(spec, all_runs, dataset))
    judge = ensure_judge(spec, runs, dataset, out, progress)
    ctx = _Context(spec, out, dataset, judge, progress)
    if only is None:  # workers leave the floor to the sweep that started them
        ensure_floor(ctx)

    groups: dict[str, list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault(r.training, []).append(r)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    todo = [name for name, rs in groups.items() if not all(is_finished(ctx, r) for r in rs)]
    for i, name in enumerate(groups):
        if name not in todo:
            log(f"[{i + 1}/{len(groups)}] {name}: finished before, skipped")
    if gpus > 1 and len(todo) > 1 and only is None:
        run_parallel(ctx, {name: groups[name] for name in todo}, gpus)
    else:
        for name in todo:
            log(f"[{list(groups).index(name) + 1}/{len(groups)}] {name}")
            run_training(ctx, groups[name])
    return [read_result(r.sample_dir(out) / RESULT_JSON) or _missing(r) for r in runs]


def _missing(run: PlannedRun) -> dict[str, Any]:
    return {"status": "missing", "name": run.name, "training": run.training}


def sweep_record(spec: SweepSpec, runs: list[PlannedRun], dataset: Path) -> dict[str, Any]:
    """sweep.json: the spec as read, the base config and the planned rows (for the report)."""
    return _plain(
        {
            "name": spec.name,
            "description": spec.description,
            "source": spec.source,
            "dataset": str(dataset),
            "spec": {**spec.raw, "dataset": str(dataset)},
            "base_config": base_config(spec).to_dict(),
            "base_sample": asdict(spec.sample),
            "runs": [
                {
                    "name": r.name,
                    "training": r.training,
                    "sampling": r.sampling,
                    "changes": r.changes,
                    "sample_dir": str(Path(r.training) / "samples" / r.sampling),
                }
                for r in runs
            ],
        }
    )


def ensure_data(
    spec: SweepSpec, data: str | os.PathLike[str] | None, out: Path, progress: bool
) -> Path:
    """--data, else the file's dataset, else the default synthetic set made once in RUNS/_data."""
    from diffscape.data.dataset import load_dataset

    chosen = data if data is not None else spec.dataset
    if chosen is not None:
        return load_dataset(chosen).root.resolve()
    path = out / DATA_DIR
    if not (path / "manifest.json").is_file():
        from diffscape.data.synth import synthesize

        size = base_config(spec).model.image_size
        log(f"no dataset given: synthesizing {DEFAULT_SYNTH_N} landscapes at {size} px into {path}")
        synthesize(DEFAULT_SYNTH_N, size, path, seed=0, progress=progress)
    return load_dataset(path).root.resolve()


def ensure_judge(
    spec: SweepSpec, runs: list[PlannedRun], dataset: Path, out: Path, progress: bool
) -> Path | None:
    """The judge folder: [judge] path, or one trained once into RUNS/_judge. None when judging
    is off or nothing to judge (no conditional model, unlabelled data)."""
    j = spec.judge
    if not j.enabled or not any(r.config.model.conditional for r in runs):
        return None
    from diffscape.data.dataset import load_dataset

    if not load_dataset(dataset).labelled:
        log("no judge: the dataset has no classes")
        return None
    if j.path is not None:
        if not (Path(j.path) / "judge.json").is_file():
            raise SweepError(f"[judge] path {j.path} is not a judge folder (no judge.json)")
        return Path(j.path)
    path = out / JUDGE_DIR
    if not (path / "judge.json").is_file():
        from diffscape.judge import train_judge

        log(f"training the {j.kind} judge once for the whole sweep into {path}")
        train_judge(dataset, j.kind, path, progress=progress, log=log)
    return path


def ensure_floor(ctx: _Context) -> None:
    """Real vs real at the sweep's n: what FID/KID read when the "generated" images are real
    ones. Optional: a failure here is reported and the sweep goes on."""
    e, dataset, progress = ctx.spec.evaluate, ctx.data, ctx.progress
    path = ctx.out / FLOOR_DIR / "metrics.json"
    if not (e.enabled and e.floor) or path.is_file():
        return
    from diffscape.data.dataset import load_dataset

    ds = load_dataset(dataset)
    if "test" not in ds.splits or e.split == "test":
        log("no real-vs-real floor: the dataset has no test split apart from the reference")
        return
    from diffscape.metrics.evaluate import evaluate, write_json

    n_test = ds.count("test") if e.n is None else min(e.n, ds.count("test"))
    n_ref = e.n_real or e.n
    log(f"real-vs-real floor: {n_test} test images against {e.split} (n={n_ref or 'all'})")
    try:
        # The reference split goes on the "fake" side: its seeded subset is then the same one
        # the runs draw for their real side, so its Inception features come from the cache.
        extractor = ctx.extractor()
        metrics = evaluate(
            (ds, "test"),
            (ds, e.split),
            n=n_ref or ds.count(e.split),
            n_real=n_test,
            extractor=extractor,
            out=None,
            fake_name=f"{ds.root}:{e.split}",
            progress=progress,
            print_summary=False,
            say=log,
        )
        metrics["weights"] = extractor.weights.to_json()
        write_json(path, metrics)
    except Exception as err:  # optional: the runs are still worth doing
        log(f"real-vs-real floor failed ({type(err).__name__}: {err}); going on without it")


def run_training(ctx: _Context, runs: list[PlannedRun]) -> None:
    """Train one model (or resume it), then sample, evaluate and judge each of its samplings
    not finished yet. Failures are recorded per row; signals and Ctrl-C stop the sweep."""
    from diffscape.train import TrainingInterrupted, train

    todo = [r for r in runs if not is_finished(ctx, r)]
    if not todo:
        return
    first = todo[0]
    t0 = time.perf_counter()
    try:
        result = train(first.config, ctx.data, first.train_dir(ctx.out), progress=ctx.progress)
    except (TrainingInterrupted, KeyboardInterrupt):
        raise
    except Exception as e:
        for r in todo:
            record_failure(ctx, r, "train", e)
        return
    trained = {"steps": result.steps, "seconds": round(time.perf_counter() - t0, 1)}
    for r in todo:
        try:
            evaluate_run(ctx, r, trained)
        except KeyboardInterrupt:
            raise
        except _StageError as e:
            record_failure(ctx, r, e.stage, e.__cause__ or e)
        except Exception as e:  # outside the stages: clearing the folder, writing results
            record_failure(ctx, r, "result", e)


class _StageError(Exception):
    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def record_failure(ctx: _Context, run: PlannedRun, stage: str, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"
    log(f"{run.name}: FAILED in {stage}: {message}")
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    write_json_atomic(
        run.sample_dir(ctx.out) / RESULT_JSON,
        {
            **_identity(run),
            "status": "failed",
            "stage": stage,
            "error": message,
            "traceback": tb,
            "settings": ctx.settings_record(run),
            "finished_at": _now(),
        },
    )


def _identity(run: PlannedRun) -> dict[str, Any]:
    return _plain(
        {
            "name": run.name,
            "training": run.training,
            "sampling": run.sampling,
            "changes": run.changes,
            "sample": asdict(run.sample),
        }
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _stage(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise _StageError(name) from e


def evaluate_run(ctx: _Context, run: PlannedRun, trained: dict[str, Any]) -> dict[str, Any]:
    """Sample -> evaluate -> judge one row, then write its result.json (last)."""
    from diffscape.sample import sample_to_folder

    s, out_dir = run.sample, run.sample_dir(ctx.out)
    conditional = run.config.model.conditional
    if out_dir.exists():  # a partial earlier attempt: no stale images may enter the scores
        shutil.rmtree(out_dir)
    seconds: dict[str, float] = {"train": trained["seconds"]}
    t0 = time.perf_counter()
    log(
        f"{run.name}: sampling {s.n}{' per class' if conditional else ''} ({s.sampler}, w={s.guidance:g})"
    )
    record = _stage(
        "sample",
        lambda: sample_to_folder(
            run.train_dir(ctx.out), out_dir, n=s.n, per_class=conditional, sampler=s.sampler,
            steps=s.steps, eta=s.eta, guidance=s.guidance if conditional else None,
            seed=s.seed, progress=ctx.progress,
        ),
    )  # fmt: skip
    seconds["sample"] = round(time.perf_counter() - t0, 1)
    summary: dict[str, Any] = {"n_samples": record["n"]}
    e = ctx.spec.evaluate
    if e.enabled:
        t0 = time.perf_counter()
        metrics = _stage("evaluate", lambda: _evaluate(ctx, run, out_dir, record["n"]))
        seconds["evaluate"] = round(time.perf_counter() - t0, 1)
        summary |= {
            "fid": metrics.get("fid"),
            "kid": metrics.get("kid"),
            "n_fake": metrics.get("n_fake"),
            "n_real": metrics.get("n_real"),
        }
    if ctx.judge is not None and conditional:
        from diffscape.judge import score

        t0 = time.perf_counter()
        acc = _stage("judge", lambda: score(ctx.judge, out_dir))
        seconds["judge"] = round(time.perf_counter() - t0, 1)
        summary |= {"accuracy": acc["accuracy"], "n_judged": acc["n"]}
    result = {
        **_identity(run),
        "status": "ok",
        "steps": trained["steps"],
        **summary,
        "seconds": seconds,
        "settings": ctx.settings_record(run),
        "finished_at": _now(),
    }
    write_json_atomic(out_dir / RESULT_JSON, result)
    fid = summary.get("fid")
    acc_text = f", accuracy {100 * summary['accuracy']:.1f}%" if "accuracy" in summary else ""
    log(f"{run.name}: done" + (f", FID {fid:.2f}" if fid is not None else "") + acc_text)
    return result


def _evaluate(ctx: _Context, run: PlannedRun, samples: Path, made: int) -> dict[str, Any]:
    from diffscape.data.dataset import load_dataset
    from diffscape.imagefolder import load_sample_folder
    from diffscape.metrics.evaluate import evaluate, write_json

    e = ctx.spec.evaluate
    ds = load_dataset(ctx.data)
    n = made if e.n is None else min(e.n, made)
    n_real = e.n_real or e.n
    extractor = ctx.extractor()
    metrics = evaluate(
        (ds, e.split),
        load_sample_folder(samples),
        n=n,
        n_real=None if n_real is None else min(n_real, ds.count(e.split)),
        extractor=extractor,
        out=None,
        fake_name=run.name,
        progress=ctx.progress,
        print_summary=False,
        say=log,
    )
    # evaluate() records the weights only when it loads them itself; this one was shared.
    metrics["weights"] = extractor.weights.to_json()
    write_json(samples / "metrics.json", metrics)
    return metrics


def run_parallel(ctx: _Context, groups: dict[str, list[PlannedRun]], gpus: int) -> None:
    """One subprocess per GPU, each running one training run (and its samplings) with
    ``CUDA_VISIBLE_DEVICES`` set to its GPU; output goes to RUNS/<run>/sweep.log."""
    pending = list(groups)
    running: dict[int, tuple[subprocess.Popen, str]] = {}
    log(f"{gpus} GPUs: running {len(pending)} trainings, one per GPU")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # -> the workers get SIGTERM below, save and stop

    # SIGTERM would end this process at once and leave the workers training unattended.
    installed, old = False, None
    with contextlib.suppress(ValueError):  # not the main thread: no handler
        old = signal.signal(signal.SIGTERM, stop)
        installed = True
    try:
        while pending or running:
            for gpu in range(gpus):
                if gpu not in running and pending:
                    name = pending.pop(0)
                    running[gpu] = (_start_worker(ctx, name, gpu), name)
                    log(f"{name}: started on GPU {gpu} (log: {ctx.out / name / 'sweep.log'})")
            time.sleep(1.0)
            for gpu, (proc, name) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[gpu]
                log(f"{name}: worker on GPU {gpu} exited with code {proc.returncode}")
                for r in groups[name]:
                    if read_result(r.sample_dir(ctx.out) / RESULT_JSON) is None:
                        err = DiffscapeError(
                            f"worker exited with code {proc.returncode} before finishing; "
                            f"see {ctx.out / name / 'sweep.log'}"
                        )
                        record_failure(ctx, r, "worker", err)
    except BaseException:
        for proc, _ in running.values():
            proc.terminate()  # SIGTERM: training saves a checkpoint and stops
        for proc, _ in running.values():
            proc.wait()
        raise
    finally:
        if installed:
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def _start_worker(ctx: _Context, name: str, gpu: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "diffscape", "sweep", str(ctx.out / SWEEP_JSON),
        "--out", str(ctx.out), "--data", str(ctx.data), "--only", name,
        "--no-progress", "--no-report",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    (ctx.out / name).mkdir(parents=True, exist_ok=True)
    with open(ctx.out / name / "sweep.log", "ab") as logfile:
        return subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
