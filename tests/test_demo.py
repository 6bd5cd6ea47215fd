"""The demo: a shortened run in CI (completes, writes the report); the full one marked slow."""

import json
from pathlib import Path

import pytest

from diffscape.core import layout
from diffscape.core.errors import DiffscapeError
from diffscape.settings.sections import DemoSettings, EvaluateSettings, SampleSettings
from diffscape.study.demo import STAGES, run_demo

SHORT = DemoSettings(
    minutes=0.05,
    max_steps=12,  # the budget ends training; the cap keeps it short wherever it does not
    synth_images=400,
    sample=SampleSettings(n=3, sampler="dpm", steps=5),
    evaluate=EvaluateSettings(split="test", n=10, n_real=10),
    judge_epochs=2,
)


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFSCAPE_CACHE", str(tmp_path / "cache"))


def test_short_demo_completes_and_writes_report(tmp_path, monkeypatch):
    lines = []
    summary = run_demo(tmp_path / "demo", SHORT, say=lines.append, progress=False)
    out = tmp_path / "demo"
    assert (out / "report.html").is_file() and (out / "report.html").stat().st_size > 10_000
    assert Path(summary["paths"]["grid"]).is_file()
    assert Path(summary["paths"]["grid"]).is_relative_to(out / "run")
    assert layout.is_demo_dir(out) and (out / layout.DEMO_JSON).is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert 1 <= saved["steps"] <= SHORT.max_steps
    assert 0.0 <= saved["judge_sample_accuracy"] <= 1.0
    assert set(saved["judge_per_class"]) == {"Coast", "Desert", "Forest", "Glacier", "Mountain"}
    assert saved["kid"]["mean"] == pytest.approx(summary["kid"]["mean"])
    assert saved["floor"]["fid"] is not None
    # the floor has its own file; the run's metrics.json holds the run's scores only
    assert (out / "_floor" / "floor.json").is_file()
    run_metrics = json.loads((out / "run/samples/final/metrics.json").read_text())
    assert "floor" not in run_metrics and run_metrics["fake"]["kind"] != "dataset"
    # one line per stage with its estimate, and a summary that says where the report is
    assert sum(1 for x in lines if x.startswith("[")) == STAGES == 8
    assert str(out / "report.html") in lines[-1]

    # run again: nothing is redone, and each stage says so; the training budget computed the
    # first time is kept (a new one, here forced to differ, would make the training stale)
    monkeypatch.setattr("diffscape.study.demo.training_minutes", lambda *_: 0.75)
    again = []
    second = run_demo(out, SHORT, say=again.append, progress=False)
    stage_lines = [x for x in again if x.startswith("[")]
    assert len(stage_lines) == STAGES
    assert all("before" in x or "using" in x for x in stage_lines[:-1]), stage_lines
    assert second["steps"] == summary["steps"] and second["fid"] == summary["fid"]


def test_demo_refuses_a_foreign_folder_and_no_budget(tmp_path):
    (tmp_path / "thesis.txt").write_text("keep me")
    with pytest.raises(layout.OutError, match="not empty"):
        run_demo(tmp_path, SHORT, say=lambda _: None, progress=False)
    assert (tmp_path / "thesis.txt").read_text() == "keep me"
    with pytest.raises(DiffscapeError, match=r"demo\.minutes: 0 is out of range"):
        run_demo(tmp_path / "new", DemoSettings(minutes=0), say=lambda _: None)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_full_demo_meets_its_targets(tmp_path):
    """Issue targets on 2 CPU cores: <= 10 min; judge accuracy >= 90% overall, >= 80% per class."""
    summary = run_demo(tmp_path / "demo", DemoSettings(), progress=False)
    assert summary["wall_seconds"] <= 600
    assert summary["judge_sample_accuracy"] >= 0.90
    assert all(v["accuracy"] >= 0.80 for v in summary["judge_per_class"].values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"minutes": float("nan")}, r"demo\.minutes"),
        ({"minutes": -1}, r"demo\.minutes"),
        ({"sample": {"seed": -1}}, r"demo\.sample\.seed"),
        ({"evaluate": {"n": 1}}, r"demo\.evaluate\.n"),
        ({"max_steps": 0}, r"demo\.max_steps"),
        ({"preset": "nosuch"}, "unknown preset"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(DiffscapeError, match=message):
        run_demo(tmp_path / "demo", SHORT.with_changes(**change), say=lambda _: None)
    assert not (tmp_path / "demo").exists()


def test_training_gets_what_the_budget_leaves():
    from diffscape.study.demo import (
        MIN_TRAIN_MINUTES,
        after_training_seconds,
        inception_rate,
        training_minutes,
    )

    s = DemoSettings(minutes=9.0)
    after = after_training_seconds(s, classes=5, inception_rate=3.5)
    # 200 samples at 3.5 img/s dominate (memorisation's 200 training images are the floor's,
    # cached); sampling 200 x 20 steps at ~250/s, guided; + report, judge
    assert 200 / 3.5 < after < 200 / 3.5 + 120
    no_copies = s.with_changes(evaluate={"memorisation": False})
    assert after_training_seconds(no_copies, 5, 3.5) == pytest.approx(after)
    # a memorisation subset the floor did not embed counts; so does one without a floor
    other = s.with_changes(evaluate={"memorisation_n": 300})
    assert after_training_seconds(other, 5, 3.5) == pytest.approx(after + 300 / 3.5)
    # without a floor, the real side is embedded by the evaluation too
    no_floor = s.with_changes(evaluate={"floor": False})
    assert after_training_seconds(no_floor, 5, 3.5) == pytest.approx(after + 400 / 3.5)
    assert training_minutes(s, elapsed=120.0, after=after) == pytest.approx(
        (540 - 120 - after) / 60
    )
    # a budget the other stages already use up: the minimum, not a negative deadline
    assert training_minutes(DemoSettings(minutes=1.0), 120.0, after) == MIN_TRAIN_MINUTES
    # Inception speed measured by the floor stage when it ran; the default when it was cached
    floor = {"fid": 1.0, "kid": None, "n_fake": 200, "n_real": 200}
    assert inception_rate({"floor": 40.0}, floor) == pytest.approx(10.0)
    assert inception_rate({"floor": 0.0}, floor) == 3.5
    assert inception_rate({}, None) == 3.5
    # a faster Inception leaves more to training
    assert after_training_seconds(s, 5, 10.0) < after
