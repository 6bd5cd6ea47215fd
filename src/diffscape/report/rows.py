"""Finding runs on disk and reading what they hold into one :class:`Row` per (model, sampling).

What is looked for, per run folder (a training run, as ``diffscape train`` writes it):

- ``config.json``: the run's settings (the table shows them as a diff from the base);
- ``metrics.jsonl``: the training log (loss curves, training time, img/s);
- sample folders: ``samples/<name>/`` (or any folder below the run, checkpoints aside) holding
  ``samples.json`` (as ``diffscape sample`` writes) or ``result.json``, with ``grid.png``;
- ``metrics.json`` (``diffscape evaluate``: FID, KID, per class, n) and ``accuracy.json``
  (``diffscape judge score``: accuracy overall and per class, n), in the sample folder; for a
  run with one sample folder also in the run folder or anywhere below it (checkpoints aside);
- ``result.json`` (sweeps: status ``ok``/``failed``, the error and its traceback, timings).

A sweep folder adds ``sweep.json`` (the base config and the planned runs, so that runs not done
yet show as such) and ``_floor/metrics.json`` (real vs real). A ``metrics.json`` that compares
two dataset splits (``fake.kind == "dataset"``) is taken as the floor, not as a run's scores,
and so is a ``"floor"`` entry (fid, kid, n_fake, n_real) inside a run's metrics.json.
Without a sample folder, a run still shows its training log and its latest training grid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffscape.errors import DiffscapeError

SKIP_DIRS = {"checkpoints", "tensorboard", ".ipynb_checkpoints"}
DERIVED_FIELDS = {"model.num_classes", "preset"}  # set by the dataset or bookkeeping, not choices
SAMPLE_KEYS = ("sampler", "steps", "guidance", "eta", "seed")


@dataclass(frozen=True)
class Row:
    """One row of the report: a trained model sampled one way (or just a training run)."""

    name: str
    status: str  # ok | failed | not run | incomplete | unknown (no result.json, outputs found)
    train_dir: Path | None
    sample_dir: Path | None
    config: dict[str, Any] | None  # config.json
    log: list[dict[str, Any]]  # metrics.jsonl records
    sampling: dict[str, Any] | None  # samples.json (or the sweep's sample settings)
    metrics: dict[str, Any] | None  # metrics.json
    accuracy: dict[str, Any] | None  # accuracy.json
    result: dict[str, Any] | None  # result.json
    grid: Path | None  # grid.png (or the latest training grid)
    grid_caption: str = ""
    changes: dict[str, Any] = field(default_factory=dict)  # filled in by :func:`collect`

    @property
    def error(self) -> str | None:
        return None if self.result is None else self.result.get("error")

    @property
    def traceback(self) -> str | None:
        return None if self.result is None else self.result.get("traceback")


@dataclass(frozen=True)
class Collection:
    title: str
    description: str
    rows: list[Row]
    floor: dict[str, Any] | None  # real-vs-real metrics.json
    base: dict[str, Any] | None  # the base config, flattened to dotted keys
    sources: list[Path]
    notes: list[str]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


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


def flatten(config: dict[str, Any] | None) -> dict[str, Any]:
    """Nested config -> {"section.name": value}."""
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            for k, v in value.items():
                out[f"{key}.{k}"] = v
        else:
            out[key] = value
    return out


def is_floor(metrics: dict[str, Any]) -> bool:
    return metrics.get("fake", {}).get("kind") == "dataset"


def _latest_training_grid(train_dir: Path) -> Path | None:
    grids = sorted((train_dir / "samples").glob("step-*.png"))
    return grids[-1] if grids else None


def _sample_dirs(run_dir: Path) -> list[Path]:
    """Folders below a run that hold a sampling (samples.json or result.json), depth <= 3."""
    found = []

    def walk(d: Path, depth: int) -> None:
        for child in sorted(p for p in d.iterdir() if p.is_dir()):
            if child.name in SKIP_DIRS or child.name.startswith("."):
                continue
            if (child / "samples.json").is_file() or (child / "result.json").is_file():
                found.append(child)
            elif depth < 3:
                walk(child, depth + 1)

    walk(run_dir, 1)
    return found


def _find_all(run_dir: Path, name: str) -> list[dict[str, Any]]:
    """Every ``name`` below a run (depth <= 3, checkpoints aside), parsed."""
    out = []

    def walk(d: Path, depth: int) -> None:
        data = read_json(d / name)
        if data is not None:
            out.append(data)
        if depth < 3:
            for child in sorted(p for p in d.iterdir() if p.is_dir()):
                if child.name not in SKIP_DIRS and not child.name.startswith("."):
                    walk(child, depth + 1)

    walk(run_dir, 0)
    return out


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        (path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir()
    )


def rows_from_run(run_dir: Path, floors: list[dict[str, Any]]) -> list[Row]:
    """The rows of one training run folder: one per sample folder (or one for the training)."""
    config = read_json(run_dir / "config.json")
    log = read_log(run_dir / "metrics.jsonl")
    sample_dirs = _sample_dirs(run_dir)
    found_metrics = _find_all(run_dir, "metrics.json")
    for m in found_metrics:
        if is_floor(m):
            floors.append(m)
    scores = [m for m in found_metrics if not is_floor(m)]
    top_metrics = read_json(run_dir / "metrics.json")
    top_accuracy = read_json(run_dir / "accuracy.json")
    if len(sample_dirs) <= 1:  # one sampling: its scores may lie anywhere in the run folder
        top_metrics = (
            top_metrics if top_metrics is not None else (scores[0] if len(scores) == 1 else None)
        )
        accs = _find_all(run_dir, "accuracy.json")
        top_accuracy = top_accuracy or (accs[0] if len(accs) == 1 else None)
    if top_metrics is not None and is_floor(top_metrics):
        top_metrics = None
    if not sample_dirs:
        grid = _latest_training_grid(run_dir)
        return [
            Row(
                name=run_dir.name,
                status="unknown",
                train_dir=run_dir,
                sample_dir=None,
                config=config,
                log=log,
                sampling=None,
                metrics=top_metrics,
                accuracy=top_accuracy,
                result=None,
                grid=grid,
                grid_caption=f"training grid ({grid.stem})" if grid else "",
            )
        ]
    rows = []
    for d in sample_dirs:
        only = len(sample_dirs) == 1
        metrics = read_json(d / "metrics.json")
        if metrics is not None and is_floor(metrics):
            floors.append(metrics)
            metrics = None
        result = read_json(d / "result.json")
        sampling = read_json(d / "samples.json") or (result or {}).get("sample")
        name = (result or {}).get("name") or (run_dir.name if only else f"{run_dir.name}/{d.name}")
        rows.append(
            Row(
                name=name,
                status=(result or {}).get("status", "unknown"),
                train_dir=run_dir,
                sample_dir=d,
                config=config,
                log=log,
                sampling=sampling,
                metrics=metrics if metrics is not None else (top_metrics if only else None),
                accuracy=read_json(d / "accuracy.json") or (top_accuracy if only else None),
                result=result,
                grid=d / "grid.png" if (d / "grid.png").is_file() else None,
                grid_caption="samples (grid.png)",
            )
        )
    return rows


def rows_from_sweep(root: Path, sweep: dict[str, Any], floors: list[dict[str, Any]]) -> list[Row]:
    """The planned rows of a sweep, in its order; runs not done yet still get a row."""
    rows = []
    per_training: dict[Path, list[Row]] = {}
    for run in sweep.get("runs", []):
        train_dir = root / run["training"]
        sample_dir = root / run["sample_dir"]
        if train_dir not in per_training:
            per_training[train_dir] = rows_from_run(train_dir, floors) if train_dir.is_dir() else []
        found = [r for r in per_training[train_dir] if r.sample_dir == sample_dir]
        if found and found[0].result is not None:
            rows.append(_renamed(found[0], run["name"]))
            continue
        status = "incomplete" if (train_dir / "checkpoints").is_dir() else "not run"
        rows.append(
            Row(
                name=run["name"],
                status=status,
                train_dir=train_dir if train_dir.is_dir() else None,
                sample_dir=None,
                config=read_json(train_dir / "config.json"),
                log=read_log(train_dir / "metrics.jsonl"),
                sampling=None,
                metrics=None,
                accuracy=None,
                result={"changes": run.get("changes", {})},
                grid=_latest_training_grid(train_dir) if train_dir.is_dir() else None,
                grid_caption="latest training grid",
            )
        )
    return rows


def _renamed(row: Row, name: str) -> Row:
    from dataclasses import replace

    return replace(row, name=name)


def _as_paths(runs: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(runs, str | Path):
        return [Path(runs)]
    return [Path(p) for p in runs]


def collect(runs: str | Path | Iterable[str | Path]) -> Collection:
    """Every row found in sweep folders, run folders, or folders of run folders."""
    paths = _as_paths(runs)
    rows: list[Row] = []
    floors: list[dict[str, Any]] = []
    title, description, base = "", "", None
    notes: list[str] = []
    for p in paths:
        if not p.is_dir():
            raise DiffscapeError(f"{p} is not a folder; give a sweep folder or a run folder")
        sweep = read_json(p / "sweep.json")
        floor = read_json(p / "_floor" / "metrics.json")
        if floor is not None:
            floors.append(floor)
        if sweep is not None:
            rows += rows_from_sweep(p, sweep, floors)
            title = title or f"Sweep: {sweep.get('name', p.name)}"
            description = description or sweep.get("description", "")
            base = base or flatten(sweep.get("base_config"))
        elif is_run_dir(p):
            rows += rows_from_run(p, floors)
        else:
            children = [c for c in sorted(p.iterdir()) if c.is_dir() and is_run_dir(c)]
            if not children:
                raise DiffscapeError(
                    f"{p} holds no runs: expected a sweep folder (sweep.json), a run folder "
                    "(config.json + metrics.jsonl) or a folder of run folders"
                )
            for c in children:
                rows += rows_from_run(c, floors)
    if not title:
        # The folder and its parent: "demo/run" says more than "run".
        names = ", ".join("/".join(p.resolve().parts[-2:]) for p in paths)
        title = f"Run: {names}" if len(rows) == 1 else f"Runs: {names}"
    # A run's own floor (the demo stores it in its metrics.json under "floor").
    floors += [
        r.metrics["floor"] for r in rows if r.metrics and isinstance(r.metrics.get("floor"), dict)
    ]
    if base is None:
        base, why = infer_base(rows)
        if why:
            notes.append(why)
    rows = [_with_changes(r, base, rows) for r in rows]
    return Collection(
        title=title,
        description=description,
        rows=rows,
        floor=floors[0] if floors else None,
        base=base,
        sources=paths,
        notes=notes,
    )


def infer_base(rows: list[Row]) -> tuple[dict[str, Any] | None, str]:
    """Without a sweep's base: the settings every run shares (several runs), or the run's
    preset (one run)."""
    configs = [flatten(r.config) for r in rows if r.config]
    if not configs:
        return None, ""
    distinct = {json.dumps(c, sort_keys=True) for c in configs}
    if len(distinct) > 1:
        keys = set().union(*configs)
        shared = {
            k: configs[0].get(k)
            for k in keys
            if all(c.get(k) == configs[0].get(k) for c in configs)
        }
        return shared, "changes are shown against the settings all runs share (no sweep.json)"
    preset = configs[0].get("preset")
    try:
        from diffscape.config import from_dict, load_preset

        preset_config = json.loads(from_dict(load_preset(str(preset))).to_json())  # lists
        return flatten(preset_config), (f"changes are shown against the {preset!r} preset")
    except Exception:  # an old or custom preset: show no diff rather than fail the report
        return None, "no base config to compare with: changes are not shown"


def _with_changes(row: Row, base: dict[str, Any] | None, rows: list[Row]) -> Row:
    """What the sweep set for this run (even where it equals the base, e.g. the grid's silu),
    then whatever else differs from the base, then the sampling settings that vary."""
    from dataclasses import replace

    changes: dict[str, Any] = {
        k: v
        for k, v in ((row.result or {}).get("changes") or {}).items()
        if not k.startswith("sample.")
    }
    if base is not None and row.config:
        for k, v in flatten(row.config).items():
            # A key missing from an inferred base is one the runs disagree on.
            if k not in DERIVED_FIELDS and k not in changes and (k not in base or base[k] != v):
                changes[k] = v
    for key in varying_sample_keys(rows):
        value = (row.sampling or {}).get(key)
        if value is not None:
            changes[f"sample.{key}"] = value
    return replace(row, changes=changes)


def varying_sample_keys(rows: list[Row]) -> list[str]:
    samplings = [r.sampling for r in rows if r.sampling]
    return [k for k in SAMPLE_KEYS if len({json.dumps(s.get(k)) for s in samplings}) > 1]


def natural_key(text: str) -> list[Any]:
    """Sort "w10" after "w2"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
