"""Old-writes / new-reads: two sweeps written by diffscape at fee4ff8, before the metric registry
(tests/data/old-sweeps, JSON records only), read by today's report into the numbers that
version's report made of them (expected/: its results.csv, every setting's estimates and
verdicts)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from diffscape.report import build_report, collect
from diffscape.report.verdicts import settings
from diffscape.study import results

DATA = Path(__file__).resolve().parent / "data" / "old-sweeps"
RENAMED = {"kid_mean": "kid", "memorisation_share": "memorisation"}  # one name per metric now
DROPPED = ("kid_std", "kid_subset_size", "n_judged_")  # results.csv: one value per metric


def new_key(old: str) -> str:
    """A verdict key of fee4ff8's report as it is called now."""
    if old.startswith("class_"):
        return "accuracy_" + old.removeprefix("class_")
    if old.startswith("judge_"):
        return f"accuracy_{old.removeprefix('judge_')}_judge"
    return old


def same(new: str, old: str) -> bool:
    try:
        return float(new) == pytest.approx(float(old), rel=1e-12)
    except ValueError:
        return new == old


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["replicated", "plain"])
def test_old_sweeps_report_the_same_numbers(tmp_path, name):
    page = build_report(DATA / name, tmp_path / "report.html").read_text()
    old = read_csv(DATA / "expected" / f"{name}-results.csv")
    new = read_csv(tmp_path / "results.csv")
    assert [r["name"] for r in new] == [r["name"] for r in old]
    coll = collect(DATA / name)
    for o, n, row in zip(old, new, coll.rows, strict=True):
        for column, value in o.items():
            if column.startswith(DROPPED):
                continue
            if column == "fid64" and value == "" and row.metrics:
                # fid64 off: that report left FID-64 out; metrics.json held it as fid_64
                assert float(n["fid64"]) == row.metrics["fid_64"]
                continue
            assert same(n[RENAMED.get(column, column)], value), (o["name"], column)
    for number in ("237.52", "0.2419", "66.7%"):
        assert number in page


@pytest.mark.parametrize("name", ["replicated", "plain"])
def test_old_sweeps_give_the_same_estimates_and_verdicts(name):
    expected = json.loads((DATA / "expected" / f"{name}-verdicts.json").read_text())
    found = {s.name: s for s in settings(collect(DATA / name))}
    assert list(found) == list(expected)
    for setting, old in expected.items():
        s = found[setting]
        more = set()
        if name == "plain":  # FID-64, read from fid_64 now, is a number more than before
            assert "fid64" not in old
            assert (s.estimates["fid64"] is None) == (old["fid"] is None)
            more = {"fid64"}
        assert {new_key(k) for k in old} | more == set(s.estimates)
        for key, want in old.items():
            got, comparison = s.estimates[new_key(key)], s.comparisons.get(new_key(key))
            if want is None:
                assert got is None
                continue
            assert got.mean == pytest.approx(want["mean"], rel=1e-12)
            half = want["half_width"]
            assert got.half_width == (half if half is None else pytest.approx(half, rel=1e-12))
            assert (comparison.verdict if comparison else None) == want["verdict"]


def test_old_result_json_reads_its_status_and_error():
    ok = results.read_result(DATA / "replicated" / "silu-seed0" / "samples" / "ddim-3-w1")
    failed = results.read_result(DATA / "plain" / "wrong-size" / "samples" / "ddim-3-w1")
    assert ok.ok and ok.name == "silu (seed 0)" and ok.seed == 0 and ok.steps == 6
    assert failed.status == "failed" and failed.stage == "train"
    assert "model.image_size is 16" in failed.error
