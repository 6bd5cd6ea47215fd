"""The report's settings: runs grouped by the setting they replicate, every number's mean and 95 %
interval over the seeds, and each setting against the baseline (:mod:`diffscape.core.stats`).
Each run's own sampling variance is its metric's ``noise`` (:mod:`diffscape.metrics.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffscape.core import stats
from diffscape.core.stats import Comparison, Estimate
from diffscape.metrics import registry
from diffscape.metrics.registry import Metric
from diffscape.report.rows import Collection, Row

TRAIN_TIME = Metric(
    "train_seconds", "Train time", False, "wall time of training, summed over resumes "
    "(metrics.jsonl)", ("train_seconds",), source="train", fmt="duration",
)  # fmt: skip


def metrics_for(rows: list[Row]) -> list[Metric]:
    """The report's numbers for these rows: the registry's metrics the rows have (each with its
    further judges and, for accuracy, its classes; :func:`diffscape.metrics.registry.metrics_for`),
    then training time."""
    return [*registry.metrics_for([r.records for r in rows]), TRAIN_TIME]


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
        recs = [r.records for r in rows if r.status in ("ok", "unknown")]
        est[name] = {
            m.key: stats.estimate([m.value(x) for x in recs], [m.variance(x) for x in recs])
            for m in metrics
        }
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
