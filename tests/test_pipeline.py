"""A study's stages (diffscape.study): finished work is skipped (and said so), a killed or
failed stage is redone alone, the real-vs-real floor is computed once into its own file, results
read back through diffscape.study.results (older files too). Tiny networks, tiny data, a
stand-in for Inception.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import torch
from fixtures_data import colour_dataset
from test_metrics_evaluate import TinyExtractor

import diffscape.judge.score
import diffscape.sample
import diffscape.train
from diffscape.core import layout
from diffscape.settings import presets
from diffscape.settings.sections import (
    DEFAULT_SAMPLE_STEPS,
    EvaluateSettings,
    JudgeSettings,
    SampleSettings,
)
from diffscape.study import results, stages
from diffscape.study.demo import run_demo
from diffscape.study.launch import run_study, train_job
from diffscape.study.narrate import Narrator, Tools
from diffscape.study.shared import ensure_data, ensure_floor, prepare_study
from diffscape.study.spec import RunSpec, Study, StudySpec
from diffscape.study.stages import settings_record

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("data") / "ds", n_train=24, n_test=6)


def tiny_run(steps: int = 4, sampling: str = "ddim-3") -> RunSpec:
    cfg = presets.resolve(
        "tiny",
        {
            "model.channels": [16, 32],
            "model.attention_resolutions": [16],
            "model.conditional": True,
            "train.steps": steps,
            "train.batch_size": 8,
            "train.log_every_steps": 2,
            "train.sample_every_steps": 0,
            "train.warmup_steps": 2,
        },
    )
    return RunSpec("model", "model", sampling, cfg, SampleSettings(n=2, steps=3))


def tiny_spec(out: Path, ds, n: int = 6) -> StudySpec:
    return StudySpec(
        out=out,
        dataset=str(ds.root),
        evaluate=EvaluateSettings(n=n),
        judge=JudgeSettings(kind="svc"),
    )


class SlowExtractor(TinyExtractor):
    """The stand-in, slowed down: the evaluate stage lasts long enough to be killed in."""

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        time.sleep(2.0)
        return super().__call__(images)


def study_and_run(out: Path, ds, tools: Tools) -> list[results.RunResult]:
    spec = tiny_spec(out, ds)
    study = prepare_study(spec, ensure_data(spec, tools), tools, judge_needed=True)
    return run_study(study, [tiny_run()], tools)


def drive(out: str, data: str) -> None:
    """A study in a process of its own (killed by the test below)."""
    from diffscape.data.dataset import load_dataset

    tools = Tools(Narrator(print), progress=False, extractor=SlowExtractor())
    study_and_run(Path(out), load_dataset(data), tools)


class Calls:
    """Counts calls of the stage functions the pipeline uses (train, sample, FID/KID, judge)."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[str] = []
        self._spy(monkeypatch, diffscape.train, "train")
        self._spy(monkeypatch, diffscape.sample, "sample_to_folder")
        self._spy(monkeypatch, stages, "fid_kid")
        self._spy(monkeypatch, diffscape.judge.score, "score")

    def _spy(self, monkeypatch, module, name: str) -> None:
        real = getattr(module, name)

        def spy(*args, **kwargs):
            self.seen.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)


def test_second_run_does_nothing_and_says_so(ds, tmp_path, monkeypatch):
    lines: list[str] = []
    tools = Tools(Narrator(lines.append), progress=False, extractor=TinyExtractor())
    (first,) = study_and_run(tmp_path / "study", ds, tools)
    assert first.ok and first.steps == 4 and first.scores["fid"] > 0
    assert 0 <= first.scores["accuracy"] <= 1 and "accuracy_c0" in first.scores
    result_file = results.result_path(tiny_run().sample_dir(tmp_path / "study"))
    written = result_file.stat().st_mtime_ns

    calls = Calls(monkeypatch)
    lines.clear()
    (second,) = study_and_run(tmp_path / "study", ds, tools)
    assert calls.seen == []  # nothing trained, sampled, scored or judged
    assert second == first and result_file.stat().st_mtime_ns == written
    assert "model: finished before, skipped" in lines
    assert any(x.startswith("floor: ") and "computed before" in x for x in lines), lines


def test_each_stage_is_skipped_on_its_own(ds, tmp_path, monkeypatch):
    """Another sampling of a trained model: the training is reused, the rest is done."""
    tools = Tools(Narrator(lambda _: None), progress=False, extractor=TinyExtractor())
    study_and_run(tmp_path / "study", ds, tools)
    calls = Calls(monkeypatch)
    spec = tiny_spec(tmp_path / "study", ds)
    study = prepare_study(spec, Path(ds.root), tools, judge_needed=True)
    (r,) = run_study(study, [tiny_run(sampling="other")], tools)
    assert r.ok and calls.seen == ["sample_to_folder", "fid_kid", "score"]


def test_killed_during_evaluate_redoes_only_what_is_missing(ds, tmp_path, monkeypatch):
    out = tmp_path / "study"
    samples = tiny_run().sample_dir(out)
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}  # the tests' helpers, and the diffscape under test
    code = f"import test_pipeline as t; t.drive({str(out)!r}, {str(ds.root)!r})"
    log = (tmp_path / "log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while not (samples / layout.SAMPLES_JSON).is_file():  # sampled: now in the evaluate stage
        assert proc.poll() is None, (tmp_path / "log").read_text()
        assert time.monotonic() < deadline, "the study did not get to its evaluation"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not results.result_path(samples).exists()
    assert not (samples / layout.EVAL_JSON).exists()

    calls = Calls(monkeypatch)
    tools = Tools(Narrator(lambda _: None), progress=False, extractor=TinyExtractor())
    (r,) = study_and_run(out, ds, tools)
    assert r.ok and r.steps == 4
    assert calls.seen == ["fid_kid", "score"]  # trained and sampled before the kill: kept


def test_failed_stage_is_recorded_then_redone_alone(ds, tmp_path, monkeypatch):
    tools = Tools(Narrator(lambda _: None), progress=False, extractor=TinyExtractor())
    real = stages.fid_kid

    def broken(*args, **kwargs):
        if args[4] == "model":  # the run's evaluation; the floor's goes through
            raise RuntimeError("the network fell over")
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "fid_kid", broken)
    (failed,) = study_and_run(tmp_path / "study", ds, tools)
    assert failed.status == "failed" and failed.stage == "evaluate"
    assert "the network fell over" in failed.error and "Traceback" in failed.traceback
    monkeypatch.setattr(stages, "fid_kid", real)

    calls = Calls(monkeypatch)
    (r,) = study_and_run(tmp_path / "study", ds, tools)
    assert r.ok and calls.seen == ["fid_kid", "score"]


def test_floor_is_computed_once_in_its_own_file(ds, tmp_path, monkeypatch):
    out = tmp_path / "study"
    tools = Tools(Narrator(lambda _: None), progress=False, extractor=TinyExtractor())
    calls = Calls(monkeypatch)
    spec = tiny_spec(out, ds, n=4)
    study = prepare_study(spec, Path(ds.root), tools, judge_needed=False)
    assert calls.seen == ["fid_kid"]
    path = out / layout.SWEEP_FLOOR / layout.FLOOR_JSON
    assert results.floor_path(out) == path and path.is_file()
    floor = results.read_floor(out)
    # the test split (n=4, as many as the runs generate) against the reference split
    assert floor["fid"] is not None and (floor["n_real"], floor["n_fake"]) == (4, 4)
    assert floor["fake"]["kind"] == "dataset" and floor["real"]["split"] == "test"

    again = ensure_floor(study, tools)
    assert calls.seen == ["fid_kid"] and again == floor  # read back, not computed
    prepare_study(tiny_spec(out, ds, n=5), Path(ds.root), tools, judge_needed=False)
    assert calls.seen == ["fid_kid", "fid_kid"]  # other sizes: another floor
    assert results.read_floor(out)["n_real"] == 5
    assert results.read_floor(tmp_path / "nothing") is None


def test_results_read_back_older_and_damaged_files(tmp_path):
    old = {  # a result.json as the runner wrote it before diffscape.study.results
        "name": "a", "training": "a", "sampling": "ddim-3-w1", "changes": {}, "sample": {},
        "status": "ok", "steps": 8, "n_samples": 6, "fid": 12.5, "kid": {"mean": 0.1},
        "n_fake": 6, "n_real": 6, "seconds": {"train": 1.0}, "settings": {}, "finished_at": "x",
        "something_new": [1, 2],
    }  # fmt: skip
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / layout.RESULT_JSON).write_text(json.dumps(old))
    r = results.read_result(tmp_path / "old")
    assert r.ok and r.steps == 8 and r.scores == {}  # its scores: fields of old, not read
    (tmp_path / "bad").mkdir()
    for text in ("{", "[1, 2]", '{"status": "ok"}', ""):  # damaged, not an object, no name
        (tmp_path / "bad" / layout.RESULT_JSON).write_text(text)
        assert results.read_result(tmp_path / "bad") is None
    wrong = {**old, "scores": [12.5], "steps": True}  # wrong types fall back to the defaults
    (tmp_path / "bad" / layout.RESULT_JSON).write_text(json.dumps(wrong))
    r = results.read_result(tmp_path / "bad")
    assert r.scores == {} and r.steps is None and r.n_samples == 6
    # written through the module: atomic, and read back equal
    results.write_result(tmp_path / "new", r)
    assert results.read_result(tmp_path / "new") == r
    assert [p.name for p in (tmp_path / "new").iterdir()] == [layout.RESULT_JSON]


def test_a_job_pickles_as_submitit_sends_it(ds, tmp_path):
    spec = tiny_spec(tmp_path, ds)
    study = Study(spec, Path(ds.root), "hash", tmp_path / "judge")
    runs = [tiny_run(), tiny_run(sampling="other")]
    job = cloudpickle.loads(cloudpickle.dumps((train_job, study, runs)))
    assert job == (train_job, study, runs)


def test_library_never_defaults_to_the_current_folder():
    assert inspect.signature(run_demo).parameters["out"].default is inspect.Parameter.empty


def test_second_judge_fid64_memorisation_and_pairs_png(ds, tmp_path):
    """[judge] also = ["svc"]: a second judge trained once per study beside the main one, its
    accuracy on every run in accuracy-svc.json and in the result; the evaluate settings reach
    evaluate(); closest-pairs.png is drawn beside metrics.json when memorisation ran."""
    out = tmp_path / "study"
    spec = StudySpec(
        out=out, dataset=str(ds.root), evaluate=EvaluateSettings(n=6, fid64=True),
        judge=JudgeSettings(kind="cnn", also=("svc", "cnn")),
        judge_cnn={"widths": (8,), "max_epochs": 1, "convs_per_block": 1},
    )  # fmt: skip
    tools = Tools(Narrator(lambda _: None), progress=False, extractor=TinyExtractor())
    study = prepare_study(spec, Path(ds.root), tools, judge_needed=True)
    assert study.also == {"svc": str(out / "_judge-svc")}  # cnn is the main judge already
    assert layout.is_judge_dir(out / "_judge-svc") and layout.is_judge_dir(out / "_judge")
    run = tiny_run()
    (r,) = run_study(study, [run], tools)
    assert r.ok and r.setting == "model" and r.seed is None
    folder = run.sample_dir(out)
    svc = json.loads((folder / "accuracy-svc.json").read_text())
    assert svc["judge_kind"] == "svc" and r.scores["accuracy_svc_judge"] == svc["accuracy"]
    assert json.loads((folder / layout.ACCURACY_JSON).read_text())["judge_kind"] == "cnn"
    metrics = results.read_json(folder / layout.EVAL_JSON)
    assert metrics["settings"]["evaluate"]["fid64"] is True
    assert metrics["memorisation"] is not None  # the stand-in's features serve it too
    assert (folder / layout.PAIRS_PNG).is_file()
    assert r.scores["memorisation"] == metrics["memorisation"]["share"]
    assert settings_record(study, run)["also"]["svc"]["kind"] == "svc"


def test_a_sampling_without_steps_runs_and_is_skipped_when_done(ds, tmp_path, monkeypatch):
    """[sample] without steps (the sampler's default): sampled once, recorded with the steps it
    ran, recognised as done the next time."""
    lines: list[str] = []
    tools = Tools(Narrator(lines.append), progress=False, extractor=TinyExtractor())
    base = tiny_run()
    run = RunSpec(base.name, base.training, "ddim-default", base.config, SampleSettings(n=2))
    spec = tiny_spec(tmp_path / "study", ds)
    study = prepare_study(spec, ensure_data(spec, tools), tools, judge_needed=True)
    (first,) = run_study(study, [run], tools)
    assert first.ok, first.error
    timesteps = run.config.diffusion.timesteps
    record = results.read_json(run.sample_dir(study.out) / layout.SAMPLES_JSON)
    assert record["steps"] == min(DEFAULT_SAMPLE_STEPS, timesteps)
    assert any(f"ddim {record['steps']} steps" in line for line in lines), lines
    results.result_path(run.sample_dir(study.out)).unlink()  # the row is redone, not its stages
    calls = Calls(monkeypatch)
    (second,) = run_study(study, [run], tools)
    assert second.ok and "sample_to_folder" not in calls.seen
