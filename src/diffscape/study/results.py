"""What a study records; the one the report reads back field by field is typed here
(:class:`RunResult`), the others are plain JSON:

    <study>/<training>/train.json                       a finished train stage
    <study>/<training>/samples/<sampling>/metrics.json  FID/KID (evaluate's record + its settings)
    <study>/<training>/samples/<sampling>/result.json   RunResult: one row's outcome, written last
    <study>/_floor/floor.json                           real vs real, once per study
    <sweep>/sweep.json, <demo>/demo.json                the folders' markers

Every write is atomic (:func:`diffscape.core.atomic.write_json`). Reading is tolerant: a missing,
unreadable or damaged file reads as None (its stage is simply done again); in result.json unknown
keys are ignored and missing ones take their defaults, so files written by older versions read.
"""

from __future__ import annotations

import functools
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter, ValidationError

from diffscape.core import layout
from diffscape.core.atomic import plain, read_json, write_json  # noqa: F401 (plain: re-exported)

Status = Literal["ok", "failed", "missing"]
T = TypeVar("T")


def now() -> str:
    """The time a record is written, in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One row of a study: a training run sampled one way, and what came of it."""

    name: str  # the row's name in the report
    status: Status  # ok | failed (stage, error, traceback say where and why) | missing
    training: str = ""  # folder <study>/<training>
    sampling: str = ""  # folder <study>/<training>/samples/<sampling>
    changes: dict[str, Any] = field(default_factory=dict)  # dotted settings beyond the base
    sample: dict[str, Any] = field(default_factory=dict)  # the sample settings
    steps: int | None = None  # optimizer steps the model was trained for
    n_samples: int | None = None  # images generated
    # Every metric of the run by its key (diffscape.metrics.registry.values: per class and per
    # further judge too); files from before the registry held fid, kid, accuracy ... as fields
    # of their own, which read back as no scores (the report reads metrics.json, not these).
    scores: dict[str, float | None] = field(default_factory=dict)
    setting: str = ""  # the setting this run replicates; "": its name
    seed: int | None = None  # the replicate's seed; None: not replicated
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    settings: dict[str, Any] = field(default_factory=dict)  # what a re-run must match to skip
    stage: str | None = None  # failed: the stage that failed
    error: str | None = None  # failed: one line
    traceback: str | None = None  # failed: the whole traceback
    finished_at: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---- reading and writing -------------------------------------------------------------------------


@functools.cache
def _adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the field's type (strictly: no true for a number, no "1" for 1)."""
    try:
        _adapter(hint).validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


def from_record(cls: type[T], data: dict[str, Any] | None) -> T | None:
    """``cls`` from a record read from disk: unknown keys are ignored, a missing key or a value
    of the wrong type takes the field's default; None when a field without default is unusable."""
    if data is None:
        return None
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: data[f.name]
        for f in fields(cls)  # type: ignore[arg-type]
        if f.name in data and _fits(data[f.name], hints[f.name])
    }
    try:
        return cls(**kwargs)
    except TypeError:  # a required field is missing or unusable
        return None


def result_path(sample_dir: str | os.PathLike[str]) -> Path:
    return Path(sample_dir) / layout.RESULT_JSON


def write_result(sample_dir: str | os.PathLike[str], result: RunResult) -> Path:
    return write_json(result_path(sample_dir), asdict(result))


def read_result(sample_dir: str | os.PathLike[str]) -> RunResult | None:
    """A row's result.json (from this version or older ones), or None."""
    return from_record(RunResult, read_json(result_path(sample_dir)))


def floor_path(study_dir: str | os.PathLike[str]) -> Path:
    """THE place of a study's real-vs-real floor (sweeps and the demo alike)."""
    return Path(study_dir) / layout.SWEEP_FLOOR / layout.FLOOR_JSON


def read_floor(study_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The floor of a sweep or demo folder: evaluate's record of real against real images (what
    the scores read for a perfect model at the study's sizes) and its ``settings``; or None."""
    return read_json(floor_path(study_dir))
