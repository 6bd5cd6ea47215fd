"""The report's settings table (one row per setting: mean ± 95 % interval over its seeds) and the
verdict cells (each setting against the baseline), also added to the per-run table of a sweep
without seeds."""

from __future__ import annotations

import math

from diffscape.core.stats import BETTER, NO_DIFFERENCE, NO_INTERVAL, WORSE, Comparison, Estimate
from diffscape.metrics.registry import Metric, Records
from diffscape.report.html import cell, esc, small
from diffscape.report.rows import Collection
from diffscape.report.table import records
from diffscape.report.verdicts import Setting

VERDICT_CLASS = {BETTER: "v-better", WORSE: "v-worse", NO_DIFFERENCE: "v-none", NO_INTERVAL: "v-na"}
VERDICT_SHORT = {
    BETTER: "better",
    WORSE: "worse",
    NO_DIFFERENCE: "no difference found",
    NO_INTERVAL: "no interval",
}


def _plus_minus(m: Metric, e: Estimate) -> str:
    return "" if e.half_width is None else f" ± {m.text(e.half_width)}"


def column_tip(m: Metric) -> str:
    return f"{m.about}; {'higher' if m.higher_is_better else 'lower'} is better"


def n_note(m: Metric, recs: Records) -> str:
    """The sizes a run's number was measured on: "n 250 / 250" (generated / real), "n 90"."""
    sizes = m.sizes_of(recs)
    return "n " + " / ".join(map(str, sizes)) if sizes else ""


def estimate_cell(m: Metric, e: Estimate | None, note: str = "") -> str:
    """``mean ± half-width`` of the 95 % interval, with how many seeds under it."""
    if e is None:
        return cell("–", None, "num")
    k = f"{e.k} seed{'s' if e.k != 1 else ''}"
    why = (
        "seeds"
        if e.between is not None and (e.within is None or e.between >= e.within)
        else ("within-run noise" if e.within is not None else "no interval")
    )
    tip = f"mean of {k}; 95% interval from {why}"
    if e.low is not None:
        tip += f": [{m.text(e.low)}, {m.text(e.high)}]"
    text = m.text(e.mean) + _plus_minus(m, e) + small(f"{k}{' · ' + note if note else ''}")
    return cell(text, e.mean, "num", f' title="{esc(tip)}"')


def verdict_cell(m: Metric, s: Setting | None) -> str:
    """The setting's verdict on ``m`` against the baseline, coloured; the difference and its
    interval under it."""
    if s is None:
        return cell("–", None, "num verdict")
    if s.is_baseline:
        return cell('<span class="muted">baseline</span>', "", "verdict v-base")
    c: Comparison | None = s.comparisons.get(m.key)
    if c is None:
        return cell("–", None, "verdict")
    diff = ("+" if c.diff >= 0 else "−") + m.text(abs(c.diff))
    under = f"Δ {diff}"
    if c.low is not None:
        under += f" [{_signed(m, c.low)}, {_signed(m, c.high)}]"
    lines = small(under)
    if c.verdict == NO_DIFFERENCE:
        lines = small("at this n and these seeds") + lines
    better = "lower" if not m.higher_is_better else "higher"
    df = "" if math.isinf(c.df) else f", df {c.df:.1f}"
    tip = f"{m.label}: {c.verdict} than the baseline ({better} is better); {under}{df}"
    order = {BETTER: 0, NO_DIFFERENCE: 1, WORSE: 2}.get(c.verdict, 3)
    text = f"{esc(VERDICT_SHORT[c.verdict])}{lines}"
    return cell(text, order, f"verdict {VERDICT_CLASS[c.verdict]}", f' title="{esc(tip)}"')


def _signed(m: Metric, value: float | None) -> str:
    if value is None:
        return "?"
    return ("+" if value >= 0 else "−") + m.text(abs(value))


def _header(name: str, kind: str, tip: str, desc_first: bool = False) -> str:
    first = " data-desc-first" if desc_first else ""
    return f'<th data-type="{kind}"{first} title="{esc(tip)}" scope="col">{esc(name)}</th>'


def verdict_headers(metrics: list[Metric]) -> str:
    return "".join(
        _header(f"{m.label} vs baseline", "num", f"{m.label} against the baseline: better, worse "
                "or no difference found (95% interval of the difference excludes 0 or not)")
        for m in metrics if m.headline
    )  # fmt: skip


def settings_table(coll: Collection, sets: list[Setting], metrics: list[Metric]) -> str:
    """One row per setting: every number's mean ± 95 % interval over its seeds, then the
    verdicts against the baseline."""
    head = _header("Setting", "text", "the setting; its runs (one per seed) are listed below")
    head += _header("Changes from base", "text", "settings that differ from the base config")
    last = last_headline(metrics)
    for m in metrics:
        tip = f"{column_tip(m)}; mean ± 95% interval half-width over seeds"
        head += _header(m.label, "num", tip, m.higher_is_better)
        if m is last:  # the verdicts right after the numbers they judge
            head += verdict_headers(metrics)
    body = [_setting_row(s, metrics) for s in sets]
    return (
        '<div class="table-wrap"><table id="settings" class="sortable">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _setting_row(s: Setting, metrics: list[Metric]) -> str:
    first = s.rows[0]
    badge = ' <span class="badge base">baseline</span>' if s.is_baseline else ""
    seeds = [r.seed for r in s.rows if r.seed is not None]
    runs = f"{s.k} of {len(s.rows)} runs" + (
        f" · seeds {', '.join(map(str, seeds))}" if seeds else ""
    )
    cells = [cell(f"{esc(s.name)}{badge}{small(runs)}", s.name, "name")]
    changes = "".join(
        f'<code class="chip">{esc(k)}={esc(v)}</code> ' for k, v in first.changes.items()
    )
    cells.append(cell(changes or '<span class="muted">base</span>', "", "changes"))
    recs = records(first)
    for m in metrics:
        cells.append(estimate_cell(m, s.estimates.get(m.key), n_note(m, recs)))
        if m is last_headline(metrics):
            cells += [verdict_cell(v, s) for v in metrics if v.headline]
    return f"<tr>{''.join(cells)}</tr>"


def last_headline(metrics: list[Metric]) -> Metric | None:
    return next((m for m in reversed(metrics) if m.headline), None)


def within_tip(m: Metric, recs: Records) -> str:
    """The 95 % interval of one run's number from its own sampling noise, when known."""
    within = m.variance(recs)
    return "" if within is None else f"± {m.text(1.96 * math.sqrt(within))} (95%, this run alone)"
