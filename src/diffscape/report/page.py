"""The report as one self-contained HTML page, so that it opens from disk with no server and no
network: this module gives ``templates/page.html`` its data (docs/architecture.md): the tables'
cells, plots as inline SVG, sample grids as base64 data URIs."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from diffscape import __version__
from diffscape.core import layout
from diffscape.core.stats import BETTER, NO_DIFFERENCE, NO_INTERVAL, WORSE, Estimate
from diffscape.core.timefmt import duration
from diffscape.metrics import registry
from diffscape.metrics.registry import Metric, Records
from diffscape.report.plots import Plot
from diffscape.report.rows import Collection, Row
from diffscape.report.verdicts import TRAIN_TIME, Setting, metrics_for, settings

STATUS_TEXT = {
    "ok": "finished",
    "failed": "failed",
    "not run": "not run yet",
    "incomplete": "interrupted",
    "unknown": "",
}
VERDICT_CLASS = {BETTER: "v-better", WORSE: "v-worse", NO_DIFFERENCE: "v-none", NO_INTERVAL: "v-na"}
VERDICT_SHORT = {
    BETTER: "better",
    WORSE: "worse",
    NO_DIFFERENCE: "no difference found",
    NO_INTERVAL: "no interval",
}
VERDICT_TIP = (
    "against the baseline: better, worse, or no difference found (the 95% interval of the "
    "difference, from the run's own sampling noise with one seed, excludes 0 or not)"
)
SETTING_VERDICT_TIP = (
    "{label} against the baseline: better, worse or no difference found (95% interval of the "
    "difference excludes 0 or not)"
)


@dataclass(frozen=True)
class Cell:
    """A table cell as the template's ``td`` macro draws it: its text (a link to ``href``), a
    badge, chips, a muted word, small notes (its n, the step it was read at) and an error under
    it. ``sort`` is the value the page's script sorts the column by; a number column's missing
    value sorts last either way."""

    text: str = ""
    sort: float | str | None = None
    cls: str = ""
    tip: str = ""
    notes: tuple[str, ...] = ()
    style: str = ""
    href: str = ""
    badge: tuple[str, str] | None = None  # (class, text)
    chips: tuple[str, ...] = ()
    muted: str = ""
    error: str = ""
    span: int = 0


# Columns: (header, type, tooltip, sorts descending first). "num" columns sort numerically.
Column = tuple[str, str, str, bool]
RUN_COLUMNS: list[Column] = [
    ("Run", "text", "run name (click to see its samples)", False),
    ("Changes from base", "text", "settings that differ from the base config", False),
    ("Sampling", "text", "sampler, steps, guidance w", False),
]
TRAINING_COLUMNS: list[Column] = [
    (TRAIN_TIME.label, "num", TRAIN_TIME.about, False),
    ("img/s", "num", "training images per second (median over log windows)", True),
    ("Loss", "num", "last logged training loss", False),
]
SETTING_COLUMNS: list[Column] = [
    ("Setting", "text", "the setting; its runs (one per seed) are listed below", False),
    ("Changes from base", "text", "settings that differ from the base config", False),
]


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _rounded(value: Any) -> Any:
    """``value`` as a person reads it: a computed float (more than 6 significant digits, such
    as a time budget of 4.933329535049999 minutes) to 3 of them; a float as typed (0.9999, 2e-4)
    as it is, since rounding it would change the setting shown. Lists element by element."""
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and float(f"{value:.6g}") != value:
        return float(f"{value:.3g}")
    return value


def _value(value: Any) -> str:
    """A setting's value in a chip: ``[1, 2]``, ``true``, ``4.93``."""
    value = _rounded(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_value, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _signed(m: Metric, value: float | None) -> str:
    if value is None:
        return "?"
    return ("+" if value >= 0 else "−") + m.text(abs(value))


def n_note(m: Metric, recs: Records) -> str:
    """The sizes a run's number was measured on: "n 250 / 250" (generated / real), "n 90"."""
    sizes = m.sizes_of(recs)
    return "n " + " / ".join(f"{n:,}" for n in sizes) if sizes else ""


def _with_verdicts(metrics: list[Metric], items: list[Any], verdicts: list[Any]) -> list[Any]:
    """``items`` (one per metric) with ``verdicts`` right after the last headline metric's, next
    to the numbers they judge."""
    last = next((m for m in reversed(metrics) if m.headline), None)
    if not verdicts or last is None:
        return items
    at = metrics.index(last) + 1
    return items[:at] + verdicts + items[at:]


def metric_columns(
    metrics: list[Metric], verdicts: list[Metric], verdict_tip: str, tip: str = ""
) -> list[Column]:
    """A column per metric (``tip`` added to its tooltip), and after the headline metrics a
    column per verdict (``verdict_tip`` names its metric with ``{label}``)."""
    cols = [
        (m.label, "num", f"{m.about}; {'higher' if m.higher_is_better else 'lower'} is better"
         + tip, m.higher_is_better)
        for m in metrics
    ]  # fmt: skip
    judged = [
        (f"{v.label} vs baseline", "num", verdict_tip.format(label=v.label), False)
        for v in verdicts
    ]
    return _with_verdicts(metrics, cols, judged)


def estimate_cell(m: Metric, e: Estimate | None, note: str = "") -> Cell:
    """``mean ± half-width`` of the 95 % interval, with how many seeds under it."""
    if e is None:
        return Cell("–", cls="num")
    k = f"{e.k} seed{'s' if e.k != 1 else ''}"
    why = (
        "seeds"
        if e.between is not None and (e.within is None or e.between >= e.within)
        else ("within-run noise" if e.within is not None else "no interval")
    )
    tip = f"mean of {k}; 95% interval from {why}"
    if e.low is not None:
        tip += f": [{m.text(e.low)}, {m.text(e.high)}]"
    plus_minus = "" if e.half_width is None else f" ± {m.text(e.half_width)}"
    notes = (f"{k}{' · ' + note if note else ''}",)
    return Cell(m.text(e.mean) + plus_minus, e.mean, "num", tip, notes)


def verdict_cell(m: Metric, s: Setting | None) -> Cell:
    """The setting's verdict on ``m`` against the baseline, coloured; the difference and its
    interval under it."""
    if s is None:
        return Cell("–", cls="num verdict")
    if s.is_baseline:
        return Cell(sort="", cls="verdict v-base", muted="baseline")
    c = s.comparisons.get(m.key)
    if c is None:
        return Cell("–", cls="verdict")
    under = f"Δ {_signed(m, c.diff)}"
    if c.low is not None:
        under += f" [{_signed(m, c.low)}, {_signed(m, c.high)}]"
    notes = ("at this n and these seeds", under) if c.verdict == NO_DIFFERENCE else (under,)
    better = "lower" if not m.higher_is_better else "higher"
    df = "" if math.isinf(c.df) else f", df {c.df:.1f}"
    tip = f"{m.label}: {c.verdict} than the baseline ({better} is better); {under}{df}"
    order = {BETTER: 0, NO_DIFFERENCE: 1, WORSE: 2}.get(c.verdict, 3)
    return Cell(VERDICT_SHORT[c.verdict], order, f"verdict {VERDICT_CLASS[c.verdict]}", tip, notes)


def settings_table(sets: list[Setting], metrics: list[Metric]) -> dict[str, Any]:
    """One row per setting: every number's mean ± 95 % interval over its seeds, then the
    verdicts against the baseline."""
    verdicts = [m for m in metrics if m.headline]
    tip = "; mean ± 95% interval half-width over seeds"
    head = SETTING_COLUMNS + metric_columns(metrics, verdicts, SETTING_VERDICT_TIP, tip)
    body = []
    for s in sets:
        first, recs = s.rows[0], s.rows[0].records
        seeds = [r.seed for r in s.rows if r.seed is not None]
        runs = f"{s.k} of {len(s.rows)} runs" + (
            f" · seeds {', '.join(map(str, seeds))}" if seeds else ""
        )
        chips = tuple(f"{k}={_value(v)}" for k, v in first.changes.items())
        numbers = [estimate_cell(m, s.estimates.get(m.key), n_note(m, recs)) for m in metrics]
        cells = [
            Cell(s.name, s.name, "name", notes=(runs,),
                 badge=("base", "baseline") if s.is_baseline else None),
            Cell(sort="", cls="changes", chips=chips, muted="" if chips else "base"),
            *_with_verdicts(metrics, numbers, [verdict_cell(v, s) for v in verdicts]),
        ]  # fmt: skip
        body.append(("", cells))
    return {"id": "settings", "head": head, "rows": body}


def metric_cell(m: Metric, recs: Records, best: float | None) -> Cell:
    """One run's number, its n under it, its own 95 % interval in the tooltip; a class's
    column is compact (its n and the class's other scores in the tooltip, shaded by value)."""
    value = m.value(recs)
    note = n_note(m, recs) if value is not None else ""
    if m.scope:
        c = m.scope[-1]
        others = [o.of_class(c) for o in registry.METRICS]
        values = [(o, o.value(recs)) for o in others if o.key != m.key]
        facts = [note] + [f"{o.label} {o.text(v)}" for o, v in values if v is not None]
        tip = f"{c}: " + ", ".join(f for f in facts if f)
        # A light green whose depth follows an accuracy in [0, 1].
        depth = None if m.fmt != "%" or value is None else 97 - 27 * value
        heat = "" if depth is None else f"background:hsl(135 45% {depth:.0f}%)"
        return Cell(m.text(value), value, "num cls", tip, style=heat)
    within = m.variance(recs) if value is not None else None
    tip = "" if within is None else f"± {m.text(1.96 * math.sqrt(within))} (95%, this run alone)"
    best_cls = " best" if value is not None and value == best else ""
    return Cell(m.shown(recs), value, "num" + best_cls, tip, (note,) if note else ())


def _run_cells(i: int, row: Row, recs: Records) -> list[Cell]:
    """The run's name (a link to its samples), changes and sampling, then its training."""
    status = STATUS_TEXT.get(row.status, row.status)
    stage = row.result.stage if row.result else None
    error = f"{f'in {stage}: ' if stage else ''}{row.error}" if row.error else ""
    chips = tuple(f"{k}={_value(v)}" for k, v in row.changes.items())
    s = row.sampling or {}
    sampler, steps, guidance, n = (s.get(k) for k in ("sampler", "steps", "guidance", "n"))
    sampling, images = "–", ()
    if sampler:
        sampling = f"{sampler} {steps}" + ("" if guidance is None else f" · w={guidance:g}")
        if s.get("guidance_interval"):
            sampling += " in σ ({:g}, {:g}]".format(*s["guidance_interval"])
        images = (f"{n:,} images",) if n else ()
    t = recs["train"]
    secs, speed, loss = t.get("train_seconds"), t.get("images_per_second"), t.get("final_loss")
    step = (f"step {t['train_steps']:,}",) if t.get("train_steps") else ()
    badge = (row.status.replace(" ", "-"), status) if status else None
    return [
        Cell(row.name, row.name, "name", href=f"#run-{i}", badge=badge, error=error),
        Cell(sort="; ".join(chips), cls="changes", chips=chips, muted="" if chips else "base"),
        Cell(sampling, f"{sampler or ''} {steps or 0:05d}", "sampling", notes=images),
        Cell(duration(secs), secs, "num"),
        Cell(_fmt(speed, ",.0f"), speed, "num"),
        Cell(_fmt(loss, ".4f"), loss, "num", notes=step),
    ]


def results_table(
    coll: Collection, metrics: list[Metric], verdicts: list[Metric], sets: list[Setting]
) -> dict[str, Any]:
    """The per-run table: a column per metric (and each setting's verdict on the ``verdicts``
    metrics), the training's numbers, and the real data's row under it (each metric of real
    images in place of samples: the real-vs-real floor; the judge's accuracy on real test
    images)."""
    recs = [r.records for r in coll.rows]
    ok = [x for x, r in zip(recs, coll.rows, strict=True) if r.status in ("ok", "unknown")]
    best = {}  # each metric's best value among two or more finished runs
    for m in metrics:
        present = [v for x in ok if (v := m.value(x)) is not None]
        best[m.key] = (max if m.higher_is_better else min)(present) if len(present) > 1 else None
    of = {r.group: s for s in sets for r in s.rows}
    body = []
    for i, (row, x) in enumerate(zip(coll.rows, recs, strict=True)):
        numbers = [metric_cell(m, x, best[m.key]) for m in metrics]
        run = _run_cells(i, row, x)
        judged = [verdict_cell(v, of.get(row.group)) for v in verdicts]
        cells = run[:3] + _with_verdicts(metrics, numbers, judged) + run[3:]
        body.append((row.status.replace(" ", "-"), cells))
    real = next(
        (r.accuracy.get("real") for r in coll.rows if r.accuracy and r.accuracy.get("real")), None
    )
    foot = None
    if coll.floor is not None or real is not None:
        floor = registry.records(coll.floor, real)
        numbers = [metric_cell(m, floor, None) for m in metrics]
        foot = _with_verdicts(metrics, numbers, [Cell(span=len(verdicts))] if verdicts else [])
        foot.append(Cell(span=len(TRAINING_COLUMNS)))
    head = RUN_COLUMNS + metric_columns(metrics, verdicts, VERDICT_TIP) + TRAINING_COLUMNS
    return {"id": "runs", "head": head, "rows": body, "foot": foot}


def tables(coll: Collection) -> dict[str, Any]:
    """The results: for a sweep with seeds, the settings table (mean ± 95 % interval over the
    seeds, verdicts against the baseline) above the per-run table; otherwise the per-run table,
    with a verdict per headline metric when there are settings to compare."""
    metrics = metrics_for(coll.rows)
    sets = settings(coll, metrics)
    replicated = coll.seeds is not None or any(len(s.rows) > 1 for s in sets)
    verdicts = [m for m in metrics if m.headline] if len(sets) > 1 and not replicated else []
    runs = results_table(coll, [m for m in metrics if m is not TRAIN_TIME], verdicts, sets)
    if not replicated:
        return {"runs": runs}
    baseline = next((s.name for s in sets if s.is_baseline), "")
    return {"runs": runs, "settings": settings_table(sets, metrics), "baseline": baseline}


# About how wide (CSS px) a sample grid or closest-pairs sheet is shown: a small one is
# upscaled by a whole factor (its pixels stay square; the page draws them pixelated), so that
# 32-px samples are big enough to see; a phone's width or a narrower card shrinks it.
FIGURE_PX = 640


def _figure(path: Path, alt: str, caption: str) -> dict[str, Any]:
    data = Path(path).read_bytes()
    png = data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    k = max(1, round(FIGURE_PX / w)) if png and w else 1
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return {"src": src, "size": (k * w, k * h) if png else None, "alt": alt, "caption": caption}


def _card(row: Row) -> dict[str, Any]:
    """What the page shows of one run under its samples: the headline metrics (the registry's),
    its grid and closest pairs."""
    recs, facts = row.records, []
    for m in registry.METRICS:
        if m.headline and m.value(recs) is not None:
            note = n_note(m, recs)
            facts.append(f"{m.label} {m.shown(recs)}" + (f" ({note})" if note else ""))
    figures = []
    if row.grid is not None and row.grid.is_file():
        figures.append(_figure(row.grid, f"sample grid of {row.name}", row.grid_caption))
        if row.pairs is not None:
            share = ((row.metrics or {}).get("memorisation") or {}).get("share")
            note = "" if share is None else f"; {100 * share:.1f}% near-copies"
            caption = f"closest to the training set: generated | training{note}"
            figures.append(_figure(row.pairs, f"closest pairs of {row.name}", caption))
    return {
        "name": row.name,
        "status": row.status.replace(" ", "-"),
        "changes": ", ".join(f"{k}={_value(v)}" for k, v in row.changes.items()) or "base",
        "facts": facts,
        "figures": figures,
        "why": STATUS_TEXT.get(row.status) or "no grid.png found",
        "error": row.error,
        "traceback": row.traceback,
    }


def _notes(coll: Collection) -> list[str]:
    notes = list(coll.notes)
    for r in coll.rows:
        notes += (r.metrics or {}).get("warnings") or []
        if r.accuracy and r.accuracy.get("warning"):
            notes.append(f"{r.name}: {r.accuracy['warning']}")
    return list(dict.fromkeys(notes))


# The page's template and the files it includes, found in the installed package.
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("diffscape.report"),
    autoescape=True,
    keep_trailing_newline=True,
)


def render(coll: Collection, plots: list[Plot]) -> str:
    n = len(coll.rows)
    done = sum(r.status in ("ok", "unknown") for r in coll.rows)
    failed = sum(r.status == "failed" for r in coll.rows)
    ref = next((r.metrics["real"] for r in coll.rows if r.metrics and r.metrics.get("real")), None)
    return _TEMPLATES.get_template("page.html").render(
        title=coll.title,
        description=coll.description,
        n=n, done=done, failed=failed, unfinished=n - done - failed, ref=ref,
        written=f"{datetime.now():%Y-%m-%d %H:%M}",
        version=__version__,
        csv_name=layout.RESULTS_CSV,
        tables=tables(coll),
        notes=_notes(coll),
        base="\n".join(f"{k} = {json.dumps(_rounded(v))}" for k, v in sorted(coll.base.items())),
        plots=plots,
        cards=[_card(r) for r in coll.rows],
        sources=", ".join(str(p) for p in coll.sources),
    )  # fmt: skip
