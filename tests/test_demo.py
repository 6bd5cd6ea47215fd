"""The demo: a shortened run in CI (completes, writes the report); the full one marked slow."""

import json

import pytest

from diffscape.demo import DemoSettings, run_demo

SHORT = DemoSettings(
    minutes=0.05,
    synth_images=400,
    samples_per_class=3,
    sampler_steps=5,
    eval_fake=10,
    eval_real=10,
    judge_epochs=2,
    min_steps=5,
)


def test_short_demo_completes_and_writes_report(tmp_path):
    lines = []
    summary = run_demo(tmp_path / "demo", SHORT, say=lines.append, progress=False)
    out = tmp_path / "demo"
    assert (out / "report.html").is_file() and (out / "report.html").stat().st_size > 10_000
    assert (out / "run" / "samples-final" / "grid.png").is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["steps"] >= SHORT.min_steps
    assert 0.0 <= saved["judge_sample_accuracy"] <= 1.0
    assert set(saved["judge_per_class"]) == {"Coast", "Desert", "Forest", "Glacier", "Mountain"}
    assert saved["kid"]["mean"] == pytest.approx(summary["kid"]["mean"])
    assert saved["floor"]["fid"] is not None
    # one line per stage with its estimate, and a summary that says where the report is
    assert sum(1 for x in lines if x.startswith("[")) == 7
    assert str(out / "report.html") in lines[-1]


@pytest.mark.slow
def test_full_demo_meets_its_targets(tmp_path):
    """Issue targets on 2 CPU cores: <= 10 min; judge accuracy >= 90% overall, >= 80% per class."""
    summary = run_demo(tmp_path / "demo", DemoSettings(), progress=False)
    assert summary["wall_seconds"] <= 600
    assert summary["judge_sample_accuracy"] >= 0.90
    assert all(v["accuracy"] >= 0.80 for v in summary["judge_per_class"].values())
