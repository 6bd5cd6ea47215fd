"""The metric registry: one entry per metric, one name each (older names still read), families
per class and per further judge derived from it; and a metric added in that one place, its
computation included, reaches every output: metrics.json and evaluate's summary, result.json,
results.csv, the verdicts and the page."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import colour_dataset
from test_metrics_evaluate import TinyExtractor
from test_pipeline import tiny_run, tiny_spec

from diffscape.core import layout
from diffscape.metrics import registry
from diffscape.metrics.evaluate import format_summary
from diffscape.metrics.registry import METRICS, Metric
from diffscape.report import build_report, collect
from diffscape.report.verdicts import settings
from diffscape.settings.sections import SampleSettings
from diffscape.study import results
from diffscape.study.launch import run_study
from diffscape.study.narrate import Narrator, Tools
from diffscape.study.shared import prepare_study

BY_KEY = {m.key: m for m in METRICS}


def test_every_metric_has_one_name_and_says_what_it_is():
    keys = [m.key for m in METRICS]
    old = [".".join(p) for m in METRICS for p in m.old]
    assert len(set(keys)) == len(keys) and len({m.label for m in METRICS}) == len(METRICS)
    assert not set(keys) & set(old)  # an old name is never another metric's name
    for m in METRICS:
        assert m.about and m.path and m.source in (registry.EVALUATE, registry.JUDGE)
        assert m.text(None) == "–"
    assert [m.key for m in METRICS if m.headline] == ["fid", "kid", "accuracy"]


def test_values_read_from_records_old_names_too():
    evaluate = {
        "fid": 12.5, "n_fake": 40, "n_real": 50, "kid": {"mean": 0.01, "std": 0.002,
        "subset_size": 20}, "fid64": 3.0, "fid64_n": [150, 120], "memorisation": {"share": 0.1,
        "n_fake": 40}, "per_class": {"a": {"fid": 20.0, "fid_64": 5.0, "n_fake": 20}},
    }  # fmt: skip
    judge = {"accuracy": 0.75, "n": 40, "per_class": {"a": {"accuracy": 0.5, "n": 20}}}
    recs = registry.records(evaluate, judge, {"svc": {"accuracy": 0.6, "n": 40}})
    got = registry.values(recs)
    assert got["fid"] == 12.5 and got["kid"] == 0.01 and got["memorisation"] == 0.1
    assert got["fid64"] == 3.0 and got["fid64_a"] == 5.0  # fid_64: what older versions wrote
    assert got["accuracy_a"] == 0.5 and got["accuracy_svc_judge"] == 0.6
    assert got["precision"] is None and "precision_a" not in got  # no per-class values: none
    fid64, kid, acc = BY_KEY["fid64"], BY_KEY["kid"], BY_KEY["accuracy"]
    assert fid64.sizes_of(recs) == (120, 150)  # generated / real, as FID's
    assert kid.shown(recs) == "0.0100 ± 0.0020" and acc.text(0.75) == "75.0%"
    assert kid.variance(recs) == pytest.approx(0.002**2 * 20 / 40)  # subsets of 20 of 40
    assert acc.variance(recs) == pytest.approx(0.75 * 0.25 / 40)  # binomial over n judged
    assert BY_KEY["fid"].variance(recs) is None  # no bootstrap
    assert BY_KEY["fid"].value({**recs, "evaluate": {"fid": True}}) is None  # not a number


def test_families_per_class_and_further_judge():
    acc = BY_KEY["accuracy"]
    coast, svc = acc.of_class("Coast"), acc.of_judge("svc")
    assert (coast.key, coast.label, coast.scope) == (
        "accuracy_Coast",
        "Coast",
        ("per_class", "Coast"),
    )
    assert (svc.key, svc.label, svc.source) == (
        "accuracy_svc_judge",
        "Accuracy (SVC judge)",
        "judge:svc",
    )
    per_class = {"b": {"accuracy": 1.0}, "a": {"accuracy": 0.0}, "c": {}}
    runs = [registry.records({"fid": 1.0}, {"accuracy": 0.5, "per_class": per_class})]
    page = [m.key for m in registry.metrics_for(runs)]
    assert page == ["fid", "kid", "accuracy", "accuracy_b", "accuracy_a"]  # with values, in order
    every = [m.key for m in registry.metrics_for(runs, every_class=True)]
    assert every[:3] == ["fid", "kid", "accuracy"] and "precision" in every


def test_new_maths_is_named_in_scores_and_called_on_feature_sets(monkeypatch):
    from diffscape.metrics import scores

    def spread(real, fake) -> int:
        return len(real["64"]) - len(fake["64"])

    monkeypatch.setattr(scores, "spread", spread, raising=False)  # as if written there
    metric = Metric(
        "spread", "Spread", False, "a test", ("spread",), compute=registry.from_scores("spread")
    )
    monkeypatch.setattr(registry, "METRICS", (*registry.METRICS, metric))
    assert registry.computed({"64": [1, 2, 3]}, {"64": [1]}) == {"spread": 2}


# ---- a metric added in one place --------------------------------------------------------------


def mean_shift(real, fake) -> float:
    """New maths: how far apart the two sides' mean Inception features are."""
    return float(np.linalg.norm(real["2048"].mean(axis=0) - fake["2048"].mean(axis=0)))


@pytest.fixture
def shift(monkeypatch) -> Metric:
    """A new metric, registered with its computation: the one place a metric is added."""
    metric = Metric(
        key="mean_shift", label="Mean shift", higher_is_better=False,
        about="distance between the mean features of real and generated images",
        path=("mean_shift",), sizes=registry.GENERATED_REAL, compute=mean_shift, headline=True,
    )  # fmt: skip
    monkeypatch.setattr(registry, "METRICS", (*registry.METRICS, metric))
    return metric


def test_a_metric_added_in_one_place_reaches_every_output(shift, tmp_path):
    ds = colour_dataset(tmp_path / "ds", n_train=24, n_test=6)
    out = tmp_path / "study"
    tools = Tools(Narrator(lambda _: None), progress=False, extractor=TinyExtractor())
    study = prepare_study(tiny_spec(out, ds), Path(ds.root), tools, judge_needed=True)
    first = tiny_run()
    guided = SampleSettings(n=2, steps=3, guidance=2.0)
    second = replace(first, name="w2", sampling="ddim-3-w2", sample=guided)
    done = run_study(study, [first, second], tools)  # each read back from its result.json

    for run, result in zip((first, second), done, strict=True):
        metrics = results.read_json(run.sample_dir(out) / layout.EVAL_JSON)  # from evaluate()
        assert result.scores["mean_shift"] == metrics["mean_shift"] > 0
        assert result.scores["mean_shift_c0"] == metrics["per_class"]["c0"]["mean_shift"]
        assert "\nMean shift " in format_summary(metrics)  # what `diffscape evaluate` prints
    assert results.read_floor(out)["mean_shift"] >= 0  # the real-vs-real floor too
    page = build_report(out, tmp_path / "report" / "report.html").read_text()
    with (tmp_path / "report" / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["mean_shift"]) for r in rows] == [r.scores["mean_shift"] for r in done]
    assert all(r["mean_shift_c0"] for r in rows)  # per class, as every metric
    sets = {s.name: s for s in settings(collect(out))}
    assert sets["model"].estimates["mean_shift"].mean == done[0].scores["mean_shift"]
    assert sets["w2"].comparisons["mean_shift"] is not None  # a verdict against "model"
    assert 'title="distance between the mean features' in page
    assert ">Mean shift</th>" in page and ">Mean shift vs baseline</th>" in page
    row = collect(out).rows[0]
    assert f"Mean shift {shift.shown(row.records)} (n 6 / 6)" in page  # the sample card
