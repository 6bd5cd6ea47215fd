"""Every number a run is judged by, declared once: :data:`METRICS` (docs/architecture.md says
what iterates it and how to add a metric).

A run's records by source (:func:`records`): ``"evaluate"``, evaluate()'s result (metrics.json;
floor.json alike); ``"judge"``, the judge's accuracy.json; ``"judge:<kind>"``, a further judge's;
the report adds ``"train"``. Per class (``per_class[c]`` holds the same layout) and per further
judge, each metric's versions are derived (:meth:`Metric.of_class`, :meth:`Metric.of_judge`).
Torch-free: the report imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from diffscape.core import stats
from diffscape.core.timefmt import duration

Record = Mapping[str, Any]
Records = Mapping[str, Record | None]  # source -> record
Path = tuple[str, ...]  # keys into nested records: ("kid", "mean")
Features = Mapping[str, Any]  # Inception layer ("2048", "64", "logits_unbiased") -> (n, d) array
Compute = Callable[[Features, Features], Any]  # (real, generated) -> what evaluate() records
EVALUATE, JUDGE = "evaluate", "judge"


def dig(record: Any, path: Sequence[str]) -> Any:
    """``record[path[0]][path[1]]...`` (a digit indexes a list); None where a level is missing."""
    for key in path:
        if isinstance(record, list) and key.isdigit() and int(key) < len(record):
            record = record[int(key)]
        elif isinstance(record, Mapping):
            record = record.get(key)
        else:
            return None
    return record


def number(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (booleans included)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# ---- within-run noise: how sure one run is of its own number --------------------------------


Noise = Callable[["Metric", Records], "float | None"]  # (metric, a run's records) -> variance


def bootstrap(m: Metric, recs: Records) -> float | None:
    """FID's bootstrap: its std, else the width of its interval (``evaluate.bootstrap``)."""
    return stats.fid_var(m.record(recs) or {})


def subsets(m: Metric, recs: Records) -> float | None:
    """KID's spread over random subsets, scaled from the subset size to the n it was run on."""
    sizes = m.sizes_of(recs)
    return stats.kid_var(dig(m.record(recs), m.path[:-1]), min(sizes) if sizes else None)


def binomial(m: Metric, recs: Records) -> float | None:
    """A share of independent images: p(1 - p) / n over the metric's first size."""
    sizes = m.sizes_of(recs)
    return stats.binomial_var(m.value(recs), sizes[0] if sizes else None)


# ---- the metric ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One number of a run: declared once, read by everything that shows or records it."""

    key: str  # its one name: result.json's scores, results.csv's column, the verdicts
    label: str  # the page's column header
    higher_is_better: bool
    about: str  # the column's tooltip: what it measures
    path: Path  # where its value sits in its record
    source: str = EVALUATE  # the record it is read from (module docstring)
    sizes: tuple[Path, ...] = ()  # where the numbers of images it was measured on sit
    noise: Noise | None = None  # within-run variance, for intervals and verdicts; None: unknown
    spread: Path = ()  # a spread its record holds, shown after the value ("± std")
    fmt: str = ".2f"  # format spec; "%": a share shown as a percentage; "duration": seconds
    headline: bool = False  # a verdict column in the per-run table, and a fact on each card
    by_class: bool = False  # a column per class on the page (results.csv has every class)
    old: tuple[Path, ...] = ()  # where older versions wrote the value (read, never written)
    scope: Path = ()  # within the record: ("per_class", c) for a class's version
    # New maths: evaluate() calls it on every pair of feature sets (all images, each class) and
    # records what it returns under path[0]. None: evaluate() computes the value itself.
    compute: Compute | None = None

    def record(self, records: Records) -> Record | None:
        rec = dig(records.get(self.source), self.scope)
        return rec if isinstance(rec, Mapping) else None

    def value(self, records: Records) -> float | None:
        rec = self.record(records)
        found = (number(dig(rec, path)) for path in (self.path, *self.old))
        return next((v for v in found if v is not None), None)

    def variance(self, records: Records) -> float | None:
        """The run's own sampling variance of its value; None when unknown."""
        if self.noise is None or self.value(records) is None:
            return None
        return self.noise(self, records)

    def sizes_of(self, records: Records) -> tuple[int, ...]:
        found = [dig(self.record(records), path) for path in self.sizes]
        return tuple(n for n in found if isinstance(n, int) and not isinstance(n, bool))

    def shown(self, records: Records) -> str:
        """The run's value as the page writes it, with the spread its record holds."""
        value = self.value(records)
        spread = number(dig(self.record(records), self.spread)) if self.spread else None
        if value is None or spread is None:
            return self.text(value)
        return f"{self.text(value)} ± {self.text(spread)}"

    def text(self, value: float | None) -> str:
        """The value as the page writes it ("–" when missing)."""
        if value is None:
            return "–"
        if self.fmt == "duration":
            return duration(value)
        if self.fmt == "%":
            return f"{100 * value:.1f}%"
        return format(value, self.fmt)

    def of_class(self, name: str) -> Metric:
        """This metric on the samples of one class (the record's ``per_class[name]``)."""
        return replace(
            self, key=f"{self.key}_{name}", label=name, about=f"{self.label}, class {name}",
            scope=("per_class", name), headline=False, by_class=False,
        )  # fmt: skip

    def of_judge(self, kind: str) -> Metric:
        """This judge metric from a further judge (``accuracy-<kind>.json``)."""
        return replace(
            self, key=f"{self.key}_{kind}_judge", label=f"{self.label} ({kind.upper()} judge)",
            about=f"{self.about} (the further {kind} judge)", source=f"{JUDGE}:{kind}",
            headline=False, by_class=False,
        )  # fmt: skip


GENERATED_REAL = (("n_fake",), ("n_real",))  # "n 250 / 250": generated / real images

METRICS: tuple[Metric, ...] = (
    Metric(
        key="fid", label="FID", higher_is_better=False,
        about="Fréchet Inception Distance (2048-d features); biased upward at small n",
        path=("fid",), sizes=GENERATED_REAL, noise=bootstrap, headline=True,
    ),
    Metric(
        key="kid", label="KID", higher_is_better=False,
        about="Kernel Inception Distance, mean over subsets (unbiased at any n)",
        path=("kid", "mean"), spread=("kid", "std"), sizes=GENERATED_REAL, noise=subsets,
        fmt=".4f", headline=True,
    ),
    Metric(
        key="accuracy", label="Accuracy", higher_is_better=True, source=JUDGE,
        about="how often a judge trained on real images sees the class that was asked for",
        path=("accuracy",), sizes=(("n",),), noise=binomial, fmt="%", headline=True,
        by_class=True,
    ),
    Metric(
        key="precision", label="Precision", higher_is_better=True,
        about="share of generated images inside the real images' manifold (Kynkäänniemi et "
        "al. 2019, k=3): sharpness/fidelity",
        path=("precision",), sizes=(("n_fake",),), noise=binomial, fmt="%",
    ),
    Metric(
        key="recall", label="Recall", higher_is_better=True,
        about="share of real images inside the generated images' manifold: variety",
        path=("recall",), sizes=(("n_real",),), noise=binomial, fmt="%",
    ),
    Metric(
        key="fid64", label="FID-64", higher_is_better=False,
        about="FID on 64-d Inception features; with evaluate.fid64 on, of 150 vs 150 images "
        "(the seed report's yardstick)",
        path=("fid64",), old=(("fid_64",),), sizes=(("fid64_n", "1"), ("fid64_n", "0")),
    ),
    Metric(
        key="memorisation", label="Near-copies", higher_is_better=False,
        about="share of generated images that are near-copies of a training image",
        path=("memorisation", "share"), sizes=(("memorisation", "n_fake"),), noise=binomial,
        fmt="%",
    ),
)  # fmt: skip


def from_scores(name: str) -> Compute:
    """``diffscape.metrics.scores.<name>(real, fake)`` as a metric's ``compute``, imported when
    first called (this module stays torch-free)."""

    def compute(real: Features, fake: Features) -> Any:
        from diffscape.metrics import scores

        return getattr(scores, name)(real, fake)

    return compute


def computed(real: Features, fake: Features) -> dict[str, Any]:
    """What the registered computations make of one pair of feature sets, by record key."""
    return {m.path[0]: m.compute(real, fake) for m in METRICS if m.compute is not None}


# ---- a run's records, and the metrics a set of runs has ------------------------------------


def records(
    evaluate: Record | None = None, judge: Record | None = None, judges: Mapping | None = None
) -> dict[str, Record | None]:
    """A run's records by source: evaluate's result, the judge's, each further judge's."""
    further = {f"{JUDGE}:{kind}": rec for kind, rec in (judges or {}).items()}
    return {EVALUATE: evaluate, JUDGE: judge, **further}


def class_names(runs: Iterable[Records]) -> list[str]:
    """Classes as first seen: in the judges' records, then in evaluate's."""
    seen: dict[str, None] = {}
    for recs in runs:
        for source in sorted(recs, key=lambda s: not s.startswith(JUDGE)):
            per_class = dig(recs[source], ("per_class",))
            if isinstance(per_class, Mapping):
                seen.update(dict.fromkeys(str(c) for c in per_class))
    return list(seen)


def judge_kinds(runs: Iterable[Records]) -> list[str]:
    """The further judges (``judge:<kind>`` records) any run has."""
    return sorted({s.split(":", 1)[1] for r in runs for s, rec in r.items() if ":" in s and rec})


def metrics_for(runs: Sequence[Records], *, every_class: bool = False) -> list[Metric]:
    """The metrics these runs have, each followed by its further judges' and classes' versions.

    A headline metric is always there; any other only where a run has a value. Per class: the
    ``by_class`` metrics (the page), or every metric with per-class values (``every_class``:
    result.json and results.csv)."""
    runs = list(runs)
    kinds, classes = judge_kinds(runs), class_names(runs)
    out = []
    for m in METRICS:
        family = [m] + ([m.of_judge(k) for k in kinds] if m.source == JUDGE else [])
        if every_class or m.by_class:
            family += [m.of_class(c) for c in classes]
        out += [
            x
            for x in family
            if (x.headline or (every_class and x is m)) or any(x.value(r) is not None for r in runs)
        ]
    return out


def values(recs: Records) -> dict[str, float | None]:
    """Every metric of one run by key (classes and further judges included): result.json's
    ``scores``."""
    return {m.key: m.value(recs) for m in metrics_for([recs], every_class=True)}
