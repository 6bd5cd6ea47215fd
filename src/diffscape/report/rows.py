"""Finding runs on disk and reading what they hold into one :class:`Row` per (model, sampling).

Everything is found by the names and predicates of :mod:`diffscape.core.layout`, nothing by
searching:

- a sweep folder (``sweep.json``) lists its rows: training folder, sampling folder, name, changes;
  rows not done yet still show. A demo folder (``demo.json``) holds one run in ``run/``.
- the real-vs-real floor of a sweep or demo (:func:`diffscape.study.results.read_floor` knows
  where); a run folder takes the floor of the study it lies in.
- a run folder (``run.json``) gives ``config.json`` (the
  settings, shown as a diff from the base), ``metrics.jsonl`` (loss curves, time, img/s) and its
  samplings: the samples folders (``samples.json``) or sweep rows (``result.json``) directly in
  it or in its ``samples/`` folder. Each holds ``grid.png``, ``metrics.json`` (``diffscape
  evaluate``), ``accuracy.json`` (``diffscape judge score``) and, in sweeps, ``result.json``
  (status ``ok``/``failed``, the error and its traceback, timings).
- scores kept for the whole run: ``RUN/metrics.json`` and ``RUN/accuracy.json`` (the demo), or,
  for a run with one sampling, one folder below (``judge score --out RUN/eval``).
- a folder of run folders: each run in it.

Without a samples folder, a run still shows its training log and its latest training grid.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffscape.core import layout
from diffscape.core.atomic import read_json
from diffscape.core.errors import DiffscapeError
from diffscape.metrics import registry
from diffscape.study.results import RunResult, read_floor, read_result

DERIVED_FIELDS = {"model.num_classes", "preset"}  # set by the dataset or bookkeeping, not choices
SAMPLE_KEYS = ("sampler", "steps", "guidance", "guidance_interval", "eta", "seed")


@dataclass(frozen=True)
class Row:
    """One row of the report: a trained model sampled one way (or just a training run)."""

    name: str
    status: str  # ok | failed | not run | incomplete | unknown (no result.json, outputs found)
    train_dir: Path | None
    sample_dir: Path | None = None
    config: dict[str, Any] | None = None  # config.json
    log: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records
    sampling: dict[str, Any] | None = None  # samples.json (or the sweep's sample settings)
    metrics: dict[str, Any] | None = None  # metrics.json
    accuracy: dict[str, Any] | None = None  # accuracy.json
    result: RunResult | None = None  # result.json (sweep rows)
    grid: Path | None = None  # grid.png (or the latest training grid)
    grid_caption: str = ""
    changes: dict[str, Any] = field(default_factory=dict)  # filled in by :func:`collect`
    setting: str = ""  # the setting this run replicates (sweep.json); "": its name
    seed: int | None = None  # the replicate's seed; None: not replicated
    judges: dict[str, Any] = field(default_factory=dict)  # further judges: accuracy-<kind>.json
    pairs: Path | None = None  # closest-pairs.png (memorisation)

    @property
    def group(self) -> str:
        """The setting's name: the row of the settings table this run counts toward."""
        return self.setting or self.name

    @property
    def records(self) -> dict[str, Any]:
        """Its records by source, as the metric registry reads them, the training log's numbers
        included (source ``"train"``)."""
        recs = registry.records(self.metrics, self.accuracy, self.judges)
        return {**recs, "train": train_stats(self.log)}

    @property
    def error(self) -> str | None:
        return None if self.result is None else self.result.error

    @property
    def traceback(self) -> str | None:
        return None if self.result is None else self.result.traceback


@dataclass
class Collection:
    """What :func:`collect` found in the folders it was given."""

    sources: list[Path]
    rows: list[Row] = field(default_factory=list)
    floor: dict[str, Any] | None = None  # the first real-vs-real floor found (floor.json)
    title: str = ""
    description: str = ""
    base: dict[str, Any] | None = None  # the base config, flattened to dotted keys
    notes: list[str] = field(default_factory=list)
    baseline: str | None = None  # the setting the others are compared with; None: the first
    seeds: list[int] | None = None  # a replicated sweep's seeds


def read_log(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records, skipping lines that do not parse (a run killed mid-write)."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
    return out


def train_stats(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Training time, speed, steps and last loss from metrics.jsonl.

    ``seconds`` counts from the start of each ``train`` call, so a resumed run's log restarts
    it: the time is the sum over those segments. ``img/s`` is the median of the logged windows
    (robust to the slow first window and to pauses)."""
    recs = [r for r in log if not r.get("skipped")]
    if not recs:
        return dict.fromkeys(("train_seconds", "images_per_second", "train_steps", "final_loss"))
    total, segment, prev = 0.0, 0.0, -1.0
    for r in recs:
        s = r.get("seconds")
        if s is None:
            continue
        if s < prev:  # a new train() call: resumed
            total += segment
        segment, prev = s, s
    total += segment
    rates = [r["images_per_second"] for r in recs if r.get("images_per_second")]
    return {
        "train_seconds": total or None,
        "images_per_second": statistics.median(rates) if rates else None,
        "train_steps": recs[-1].get("step"),
        "final_loss": recs[-1].get("loss"),
    }


def flatten(config: dict[str, Any] | None) -> dict[str, Any]:
    """Nested config -> {"section.name": value}."""
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            out |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            out[key] = value
    return out


def _latest_training_grid(train_dir: Path) -> Path | None:
    grids = sorted((train_dir / layout.TRAIN_SAMPLES).glob(layout.TRAIN_GRID_PNG))
    return grids[-1] if grids else None


def sample_dirs(run_dir: Path) -> list[Path]:
    """A run's samplings: folders directly in the run or in its ``samples/`` folder that are
    samples folders (samples.json) or sweep rows (result.json)."""
    found = []
    for parent in (run_dir, run_dir / layout.TRAIN_SAMPLES):
        if parent.is_dir():
            for d in sorted(parent.iterdir()):
                if layout.is_samples_dir(d) or (d / layout.RESULT_JSON).is_file():
                    found.append(d)
    return found


def _run_level(run_dir: Path, name: str, samplings: list[Path]) -> dict[str, Any] | None:
    """A result file kept for the whole run: ``RUN/name`` (the demo's metrics.json and
    accuracy.json), or for a run with at most one sampling ``RUN/<folder>/name`` one level
    below (``judge score --out RUN/eval``), when exactly one such folder holds it."""
    top = read_json(run_dir / name)
    if top is not None or len(samplings) > 1:
        return top
    skip = {layout.CHECKPOINTS, layout.TENSORBOARD, layout.TRAIN_SAMPLES}
    folders = [
        d
        for d in sorted(run_dir.iterdir())
        if d.is_dir() and d.name not in skip and d not in samplings and d.name[0] != "."
    ]
    below = [data for d in folders if (data := read_json(d / name)) is not None]
    return below[0] if len(below) == 1 else None


def _sampling_row(run: Row, d: Path, only: bool) -> Row:
    """One sampling of ``run``; the scores kept for the whole run count as its own when it is the
    run's only sampling."""
    result = read_result(d)
    metrics = read_json(d / layout.EVAL_JSON)
    grid, pairs = d / layout.GRID_PNG, d / layout.PAIRS_PNG
    return replace(
        run,
        name=(result.name if result else "") or (run.name if only else f"{run.name}/{d.name}"),
        status=result.status if result else "unknown",
        sample_dir=d,
        sampling=read_json(d / layout.SAMPLES_JSON) or (result.sample if result else None),
        metrics=run.metrics if metrics is None and only else metrics,
        accuracy=read_json(d / layout.ACCURACY_JSON) or (run.accuracy if only else None),
        result=result,
        grid=grid if grid.is_file() else None,
        grid_caption="samples (grid.png)",
        judges=further_judges(d),
        pairs=pairs if pairs.is_file() else None,
    )


def further_judges(d: Path) -> dict[str, Any]:
    """{kind: accuracy record} of a sampling's further judges (``accuracy-<kind>.json``)."""
    found = {k: read_json(d / layout.ACCURACY_ALSO_JSON.format(kind=k)) for k in ("svc", "cnn")}
    return {k: v for k, v in found.items() if v and isinstance(v.get("accuracy"), int | float)}


def rows_from_run(run_dir: Path) -> list[Row]:
    """The rows of one training run folder: one per sampling (or one for the training)."""
    samplings = sample_dirs(run_dir)
    grid = _latest_training_grid(run_dir)
    run = Row(
        name=run_dir.name,
        status="unknown",
        train_dir=run_dir,
        config=read_json(run_dir / layout.CONFIG_JSON),
        log=read_log(run_dir / layout.METRICS_JSONL),
        metrics=_run_level(run_dir, layout.EVAL_JSON, samplings),
        accuracy=_run_level(run_dir, layout.ACCURACY_JSON, samplings),
        grid=grid,
        grid_caption=f"training grid ({grid.stem})" if grid else "",
    )
    only = len(samplings) == 1
    return [_sampling_row(run, d, only) for d in samplings] or [run]


def _planned_paths(root: Path, run: dict[str, Any]) -> tuple[Path, Path]:
    """(training folder, sampling folder) of a sweep.json row, each a path inside the sweep."""
    training = layout.safe_component(run.get("training"), "sweep.json training folder")
    parts = Path(str(run.get("sample_dir", ""))).parts
    for part in parts:
        layout.safe_component(part, "sweep.json sample folder")
    return root / training, root.joinpath(*parts)


def rows_from_sweep(root: Path, sweep: dict[str, Any]) -> list[Row]:
    """The planned rows of a sweep (``sweep.json``), in its order; runs not done yet still get
    a row."""
    rows = []
    per_training: dict[Path, list[Row]] = {}
    for run in sweep.get("runs", []):
        train_dir, sample_dir = _planned_paths(root, run)
        if train_dir not in per_training:
            per_training[train_dir] = rows_from_run(train_dir) if train_dir.is_dir() else []
        found = [r for r in per_training[train_dir] if r.sample_dir == sample_dir]
        row = found[0] if found and found[0].result is not None else _planned_row(run, train_dir)
        seed = run.get("seed")
        rows.append(
            replace(
                row,
                name=run["name"],
                setting=str(run.get("setting") or ""),
                seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            )  # fmt: skip
        )
    return rows


def _planned_row(run: dict[str, Any], train_dir: Path) -> Row:
    """A sweep row without its result.json: not started, or interrupted."""
    return Row(
        name=run["name"],
        status="incomplete" if (train_dir / layout.CHECKPOINTS).is_dir() else "not run",
        train_dir=train_dir if train_dir.is_dir() else None,
        config=read_json(train_dir / layout.CONFIG_JSON),
        log=read_log(train_dir / layout.METRICS_JSONL),
        result=RunResult(name=run["name"], status="missing", changes=run.get("changes") or {}),
        grid=_latest_training_grid(train_dir),
        grid_caption="latest training grid",
    )


def _study_floor(study: Path, found: Collection) -> None:
    """The real-vs-real floor of a sweep or demo folder (results.read_floor knows where)."""
    floor = read_floor(study)
    if floor is not None and found.floor is None:
        found.floor = floor


def _collect_one(p: Path, found: Collection) -> None:
    """Rows and floors of one folder: a sweep, a demo, a run, or a folder of runs."""
    if not p.is_dir():
        raise DiffscapeError(f"{p} is not a folder; give a sweep folder or a run folder")
    _study_floor(p, found)
    if layout.is_sweep_dir(p):
        sweep = read_json(p / layout.SWEEP_JSON) or {}
        found.rows += rows_from_sweep(p, sweep)
        found.title = found.title or f"Sweep: {sweep.get('name', p.name)}"
        found.description = found.description or sweep.get("description", "")
        found.base = found.base or flatten(sweep.get("base_config"))
        if isinstance(sweep.get("baseline"), str):
            found.baseline = found.baseline or sweep["baseline"]
        seeds = sweep.get("seeds")
        if isinstance(seeds, list) and seeds and found.seeds is None:
            found.seeds = [s for s in seeds if isinstance(s, int)]
    elif layout.is_run_dir(p):
        _study_floor(p.parent, found)  # a run of a demo or sweep: the study's floor
        found.rows += rows_from_run(p)
    elif layout.is_demo_dir(p) and layout.is_run_dir(p / layout.DEMO_RUN):
        found.rows += rows_from_run(p / layout.DEMO_RUN)
    else:
        children = [c for c in sorted(p.iterdir()) if c.is_dir() and layout.is_run_dir(c)]
        if not children:
            raise DiffscapeError(
                f"{p} holds no runs: expected a sweep folder (sweep.json), a run folder "
                "(run.json) or a folder of run folders"
            )
        for c in children:
            found.rows += rows_from_run(c)


def collect(runs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> Collection:
    """Every row found in sweep folders, demo folders, run folders, or folders of run folders."""
    paths = [Path(runs)] if isinstance(runs, str | os.PathLike) else [Path(p) for p in runs]
    found = Collection(sources=paths)
    for p in paths:
        _collect_one(p, found)
    if not found.title:
        # The folder and its parent: "demo/run" says more than "run".
        names = ", ".join("/".join(p.resolve().parts[-2:]) for p in paths)
        found.title = f"Run: {names}" if len(found.rows) == 1 else f"Runs: {names}"
    if found.base is None:
        found.base, why = infer_base(found.rows)
        found.notes += [why] if why else []
    found.rows = [_with_changes(r, found.base, found.rows) for r in found.rows]
    return found


def infer_base(rows: list[Row]) -> tuple[dict[str, Any] | None, str]:
    """Without a sweep's base: the settings every run shares (several runs), or the run's
    preset (one run)."""
    configs = [flatten(r.config) for r in rows if r.config]
    if not configs:
        return None, ""
    distinct = {json.dumps(c, sort_keys=True) for c in configs}
    if len(distinct) > 1:
        shared = {k: v for k, v in configs[0].items() if all(c.get(k) == v for c in configs)}
        return shared, "changes are shown against the settings all runs share (no sweep.json)"
    preset = configs[0].get("preset")
    try:
        from diffscape.settings.presets import from_dict, load_preset

        preset_config = json.loads(from_dict(load_preset(str(preset))).to_json())  # lists
        return flatten(preset_config), (f"changes are shown against the {preset!r} preset")
    except Exception:  # an old or custom preset: show no diff rather than fail the report
        return None, "no base config to compare with: changes are not shown"


def _with_changes(row: Row, base: dict[str, Any] | None, rows: list[Row]) -> Row:
    """What the sweep set for this run (even where it equals the base, e.g. the grid's silu),
    then whatever else differs from the base, then the sampling settings that vary."""
    changes: dict[str, Any] = {
        k: v
        for k, v in (row.result.changes if row.result else {}).items()
        if not k.startswith("sample.")
    }
    if base is not None and row.config:
        for k, v in flatten(row.config).items():
            # A key missing from an inferred base is one the runs disagree on.
            if k not in DERIVED_FIELDS and k not in changes and (k not in base or base[k] != v):
                changes[k] = v
    if row.seed is not None:  # a replicate's seeds are not a change of its setting
        changes.pop("train.seed", None)
    for key in varying_sample_keys(rows):
        if row.seed is not None and key == "seed":
            continue
        value = (row.sampling or {}).get(key)
        if value is not None:
            changes[f"sample.{key}"] = value
    return replace(row, changes=changes)


def varying_sample_keys(rows: list[Row]) -> list[str]:
    samplings = [r.sampling for r in rows if r.sampling]
    return [k for k in SAMPLE_KEYS if len({json.dumps(s.get(k)) for s in samplings}) > 1]
