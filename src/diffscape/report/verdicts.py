"""The report's settings: runs grouped by the setting they replicate, every number's mean and 95 %
interval over the seeds, and each setting against the baseline (:mod:`diffscape.core.stats`).

Each number comes with its within-run variance where the run recorded one: FID's bootstrap, KID's
std over subsets, a binomial variance for shares of images (judge accuracy over n judged,
precision over n generated, recall over n real, the near-copy share over n generated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffscape.core import stats
from diffscape.core.stats import Comparison, Estimate
from diffscape.report.rows import Collection, Row
from diffscape.report.table import class_names, train_stats

Value = tuple[float | None, float | None]  # (the run's number, its within-run variance)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    read: Callable[[Row], Value]
    percent: bool = False  # a share, shown as a percentage
    verdict: bool = False  # a headline metric: a verdict column of its own


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fid(r: Row) -> Value:
    m = r.metrics or {}
    return _num(m.get("fid")), stats.fid_var(m)


def _kid(r: Row) -> Value:
    m = r.metrics or {}
    kid = m.get("kid") or {}
    n = min([x for x in (m.get("n_fake"), m.get("n_real")) if isinstance(x, int)], default=None)
    return _num(kid.get("mean")), stats.kid_var(kid, n)


def _share(p: Any, n: Any) -> Value:
    value = _num(p)
    return value, stats.binomial_var(value, n if isinstance(n, int) else None)


def _accuracy(r: Row) -> Value:
    a = r.accuracy or {}
    return _share(a.get("accuracy"), a.get("n"))


def _judge(kind: str) -> Callable[[Row], Value]:
    def read(r: Row) -> Value:
        a = r.judges.get(kind) or {}
        return _share(a.get("accuracy"), a.get("n"))

    return read


def _class_accuracy(c: str) -> Callable[[Row], Value]:
    def read(r: Row) -> Value:
        per = ((r.accuracy or {}).get("per_class") or {}).get(c) or {}
        return _share(per.get("accuracy"), per.get("n"))

    return read


def _precision(r: Row) -> Value:
    m = r.metrics or {}
    return _share(m.get("precision"), m.get("n_fake"))


def _recall(r: Row) -> Value:
    m = r.metrics or {}
    return _share(m.get("recall"), m.get("n_real"))


def _fid64(r: Row) -> Value:
    return _num((r.metrics or {}).get("fid64")), None


def _memorisation(r: Row) -> Value:
    mem = (r.metrics or {}).get("memorisation") or {}
    return _share(mem.get("share"), mem.get("n_fake"))


def _train_time(r: Row) -> Value:
    return _num(train_stats(r.log).get("train_seconds")), None


HEADLINE = (
    Metric("fid", "FID", False, _fid, verdict=True),
    Metric("kid", "KID", False, _kid, verdict=True),
    Metric("accuracy", "Accuracy", True, _accuracy, percent=True, verdict=True),
)
EXTRA = (
    Metric("precision", "Precision", True, _precision, percent=True),
    Metric("recall", "Recall", True, _recall, percent=True),
    Metric("fid64", "FID-64", False, _fid64),
    Metric("memorisation", "Near-copies", False, _memorisation, percent=True),
)


def metrics_for(rows: list[Row]) -> list[Metric]:
    """The report's numbers for these rows: the headline ones, the further judges', per class
    accuracy, then precision/recall, fid64 and the near-copy share where any run has them,
    then training time."""
    kinds = sorted({k for r in rows for k in r.judges})
    out = list(HEADLINE)
    out += [Metric(f"judge_{k}", f"{k.upper()} judge", True, _judge(k), True) for k in kinds]
    out += [
        Metric(f"class_{c}", c, True, _class_accuracy(c), percent=True) for c in class_names(rows)
    ]
    out += [m for m in EXTRA if any(m.read(r)[0] is not None for r in rows)]
    out.append(Metric("train_seconds", "Train time", False, _train_time))
    return out


@dataclass(frozen=True)
class Setting:
    """One setting: its runs (one per seed), every number's estimate, and the comparisons
    with the baseline (none for the baseline itself)."""

    name: str
    rows: list[Row]
    estimates: dict[str, Estimate | None]
    comparisons: dict[str, Comparison | None] = field(default_factory=dict)
    is_baseline: bool = False

    @property
    def k(self) -> int:
        return sum(r.status in ("ok", "unknown") for r in self.rows)


def settings(coll: Collection, metrics: list[Metric] | None = None) -> list[Setting]:
    """The collection's runs grouped by setting (in order of first appearance), each setting's
    estimates, and each against the baseline (``coll.baseline`` or the first setting)."""
    metrics = metrics if metrics is not None else metrics_for(coll.rows)
    groups: dict[str, list[Row]] = {}
    for r in coll.rows:
        groups.setdefault(r.group, []).append(r)
    est = {}
    for name, rows in groups.items():
        done = [r for r in rows if r.status in ("ok", "unknown")]
        est[name] = {}
        for m in metrics:
            values = [m.read(r) for r in done]
            est[name][m.key] = stats.estimate([v for v, _ in values], [w for _, w in values])
    baseline = coll.baseline if coll.baseline in groups else next(iter(groups), None)
    out = []
    for name, rows in groups.items():
        comps = {
            m.key: stats.compare(est[name][m.key], est[baseline][m.key], m.higher_is_better)
            for m in metrics
            if name != baseline
        }
        out.append(Setting(name, rows, est[name], comps, name == baseline))
    return out
