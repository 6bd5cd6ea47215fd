"""What a study is: the settings its runs share (:class:`StudySpec`), one run (:class:`RunSpec`),
and the prepared study (:class:`Study`: the dataset and judges every run uses)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffscape.core import layout
from diffscape.settings.engine import ConfigError
from diffscape.settings.sections import EvaluateSettings, JudgeSettings, RunConfig, SampleSettings
from diffscape.study import results


@dataclass(frozen=True)
class StudySpec:
    """Settings shared by every run of a study (a sweep, or the demo's one run)."""

    out: Path  # the study's folder
    dataset: str | None = None  # a prepared dataset; None: synthesize landscapes into data_dir
    synth_images: int = 2500  # landscapes to make when no dataset is given (as `data synth`)
    synth_size: int = 32  # their size in pixels
    seed: int = 0  # seeds the synthetic data and the judge
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    judge_cnn: dict[str, Any] = field(default_factory=dict)  # CNNSettings changes (the demo's)
    data_dir: str = layout.SWEEP_DATA  # folder names inside ``out``
    judge_dir: str = layout.SWEEP_JUDGE


@dataclass(frozen=True)
class RunSpec:
    """One run: a training config sampled one way (the study supplies data, evaluation, judge)."""

    name: str  # the row's name in the report
    training: str  # folder <out>/<training>
    sampling: str  # folder <out>/<training>/samples/<sampling>
    config: RunConfig
    sample: SampleSettings
    changes: dict[str, Any] = field(default_factory=dict)  # what differs from the base
    setting: str = ""  # the setting this run replicates (the report's row); "": the name
    seed: int | None = None  # the replicate's train and sample seed; None: not replicated

    def train_dir(self, out: Path) -> Path:
        return Path(out) / self.training

    def sample_dir(self, out: Path) -> Path:
        return Path(out) / self.training / layout.TRAIN_SAMPLES / self.sampling


@dataclass(frozen=True)
class Study:
    """A study's shared pieces, made once (:func:`prepare_study`)."""

    spec: StudySpec
    data: Path  # the dataset folder
    dataset_hash: str  # its content hash: what the runs were trained and scored on
    judge: Path | None  # None: no judging (off, unlabelled data, no conditional run)
    also: dict[str, str] = field(default_factory=dict)  # further judges: kind -> folder

    @property
    def out(self) -> Path:
        return self.spec.out


def train_identity(study: Study, run: RunSpec) -> dict[str, Any]:
    """What a finished training must match to be skipped on a re-run (train.json's settings)."""
    return results.plain({"config": run.config.to_dict(), "dataset": study.dataset_hash})


def judge_identity(path: Path) -> dict[str, Any]:
    """What a judge is (judge.json), not where it lies."""
    info = results.read_json(Path(path) / layout.JUDGE_JSON) or {}
    return {k: info.get(k) for k in ("kind", "classes", "size", "seed", "settings", "accuracy")}


RECORDED = {"evaluate": EvaluateSettings, "sample": SampleSettings, "config": RunConfig}


def upgraded(record: Any) -> Any:
    """A settings record (result.json's, metrics.json's, train.json's) written before settings
    were added (the evaluate command's per_class, seed, batch, ...; sample.guidance_interval;
    train.log_with, threads, processes): they read as their defaults, which are what that run
    used (or, for the speed options threads and processes, compute the same); so a re-run skips
    what it finished."""
    if not isinstance(record, dict):
        return record
    out = dict(record)
    for key, cls in RECORDED.items():
        if isinstance(out.get(key), dict):
            with contextlib.suppress(ConfigError):  # unreadable: compared as it is (a re-run)
                out[key] = results.plain(cls.parse(out[key]).to_dict())
    return out
