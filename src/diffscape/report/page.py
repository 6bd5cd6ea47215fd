"""The report as one self-contained HTML page: inline CSS, a few lines of inline JS (sortable
tables), plots as inline SVG and sample grids as base64 data URIs, so that it opens from disk
with no server and no network."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from diffscape import __version__
from diffscape.core.timefmt import duration
from diffscape.metrics import registry
from diffscape.metrics.registry import Metric, Records
from diffscape.report.html import cell, esc, small
from diffscape.report.plots import Plot
from diffscape.report.rows import Collection, Row
from diffscape.report.settings_html import (
    column_tip,
    last_headline,
    n_note,
    settings_table,
    verdict_cell,
    within_tip,
)
from diffscape.report.table import records
from diffscape.report.verdicts import TRAIN_TIME, Setting, metrics_for, settings

STATUS_TEXT = {
    "ok": "finished",
    "failed": "failed",
    "not run": "not run yet",
    "incomplete": "interrupted",
    "unknown": "",
}


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _heat(v: float | None) -> str:
    """A light green whose depth follows an accuracy in [0, 1]."""
    if v is None:
        return ""
    return f' style="background:hsl(135 45% {97 - 27 * v:.0f}%)"'


# Columns: (header, type, tooltip, sorts descending first). "num" columns sort numerically.
Column = tuple[str, str, str, bool]
RUN_COLUMNS: list[Column] = [
    ("Run", "text", "run name (click to see its samples)", False),
    ("Changes from base", "text", "settings that differ from the base config", False),
    ("Sampling", "text", "sampler, steps, guidance w", False),
]
TRAINING_COLUMNS: list[Column] = [
    ("Train time", "num", "wall time of training, summed over resumes (metrics.jsonl)", False),
    ("img/s", "num", "training images per second (median over log windows)", True),
    ("Loss", "num", "last logged training loss", False),
]


def _best(values: list[float | None], higher: bool) -> float | None:
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    return max(present) if higher else min(present)


def _metric_columns(metrics: list[Metric], verdicts: list[Metric]) -> list[Column]:
    """A column per metric; the verdicts right after the last headline metric."""
    cols = []
    for m in metrics:
        cols.append((m.label, "num", column_tip(m), m.higher_is_better))
        if verdicts and m is last_headline(metrics):
            cols += [(f"{v.label} vs baseline", "num", VERDICT_TIP, False) for v in verdicts]
    return cols


def results_table(
    coll: Collection, metrics: list[Metric], verdicts: list[Metric], sets: list[Setting]
) -> str:
    """The per-run table: a column per metric (and each setting's verdict on the ``verdicts``
    metrics), the training's numbers, and the real data's row under it."""
    recs = [records(r) for r in coll.rows]
    ok = [x for x, r in zip(recs, coll.rows, strict=True) if r.status in ("ok", "unknown")]
    best = {m.key: _best([m.value(x) for x in ok], m.higher_is_better) for m in metrics}
    cols = RUN_COLUMNS + _metric_columns(metrics, verdicts) + TRAINING_COLUMNS
    head = "".join(
        f'<th data-type="{t}"{" data-desc-first" if hi else ""} title="{esc(tip)}" scope="col">'
        f"{esc(name)}</th>"
        for name, t, tip, hi in cols
    )
    of = {r.group: s for s in sets for r in s.rows}
    body = []
    for i, (row, x) in enumerate(zip(coll.rows, recs, strict=True)):
        cells = [_metric_cell(m, x, best[m.key]) for m in metrics]
        _insert_verdicts(cells, metrics, [verdict_cell(v, of.get(row.group)) for v in verdicts])
        body.append(_row_html(i, row, x, cells))
    foot = _floor_row(coll, metrics, verdicts)
    return (
        '<div class="table-wrap"><table id="runs" class="sortable">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>{foot}</table></div>"
    )


def _insert_verdicts(cells: list[str], metrics: list[Metric], verdicts: list[str]) -> None:
    """The verdict cells right after the last headline metric's."""
    if verdicts:
        at = metrics.index(last_headline(metrics)) + 1
        cells[at:at] = verdicts


def _metric_cell(m: Metric, recs: Records, best: float | None) -> str:
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
        heat = _heat(value) if m.fmt == "%" else ""
        return cell(m.text(value), value, "num cls", heat + f' title="{esc(tip)}"')
    text = m.shown(recs) + (small(note) if note else "")
    tip = within_tip(m, recs) if value is not None else ""
    classes = "num" + (" best" if value is not None and value == best else "")
    return cell(text, value, classes, f' title="{esc(tip)}"' if tip else "")


def _row_html(i: int, row: Row, recs: Records, metric_cells: list[str]) -> str:
    status = STATUS_TEXT.get(row.status, row.status)
    badge = f' <span class="badge {esc(row.status.replace(" ", "-"))}">{esc(status)}</span>'
    name = f'<a href="#run-{i}">{esc(row.name)}</a>' + (badge if status else "")
    if row.error:
        stage = row.result.stage if row.result else None
        where = f"in {stage}: " if stage else ""
        name += f'<div class="error">{esc(where + row.error)}</div>'
    changes = (
        "".join(
            f'<code class="chip">{esc(k)}={esc(_value(v))}</code> ' for k, v in row.changes.items()
        )
        or '<span class="muted">base</span>'
    )
    s = row.sampling or {}
    sampler, steps, guidance, n = (s.get(k) for k in ("sampler", "steps", "guidance", "n"))
    sampling = "–"
    if sampler:
        w = "" if guidance is None else f" · w={guidance:g}"
        sampling = f"{esc(sampler)} {esc(steps)}{w}" + (small(f"{n} images") if n else "")
    cells = [
        cell(name, row.name, "name"),
        cell(changes, "; ".join(f"{k}={v}" for k, v in row.changes.items()), "changes"),
        cell(sampling, f"{sampler or ''} {steps or 0:05d}", "sampling"),
        *metric_cells,
    ]
    t = recs["train"]
    secs, speed, loss = t.get("train_seconds"), t.get("images_per_second"), t.get("final_loss")
    cells.append(cell(duration(secs), secs, "num"))
    cells.append(cell(_fmt(speed, ".0f"), speed, "num"))
    steps_note = small(f"step {t['train_steps']}") if t.get("train_steps") else ""
    cells.append(cell(_fmt(loss, ".4f") + steps_note, loss, "num"))
    cls = f' class="{esc(row.status.replace(" ", "-"))}"'
    return f"<tr{cls}>{''.join(cells)}</tr>"


def tables(coll: Collection) -> str:
    """The results: for a sweep with seeds, the settings table (mean ± 95 % interval over the
    seeds, verdicts against the baseline) above the per-run table; otherwise the per-run table,
    with a verdict per headline metric when there are settings to compare."""
    metrics = metrics_for(coll.rows)
    sets = settings(coll, metrics)
    replicated = coll.seeds is not None or any(len(s.rows) > 1 for s in sets)
    verdicts = [m for m in metrics if m.headline] if len(sets) > 1 and not replicated else []
    runs = results_table(coll, [m for m in metrics if m is not TRAIN_TIME], verdicts, sets)
    if not replicated:
        return runs
    baseline = next((s.name for s in sets if s.is_baseline), "")
    return (
        f'<p class="hint">{esc(SETTINGS_HINT.format(baseline=baseline))}</p>'
        + settings_table(coll, sets, metrics)
        + f'<details class="runs"><summary>Every run ({len(coll.rows)}, one per setting and '
        f"seed)</summary>{runs}</details>"
    )


VERDICT_TIP = (
    "against the baseline: better, worse, or no difference found (the 95% interval of the "
    "difference, from the run's own sampling noise with one seed, excludes 0 or not)"
)
SETTINGS_HINT = (
    "One row per setting: the mean over its seeds ± the half-width of a 95% interval that "
    "counts seed-to-seed variation and each run's own sampling noise (KID subsets, FID "
    "bootstrap, binomial noise of accuracies). Verdicts compare each setting with the "
    "baseline ({baseline}): better or worse when the 95% interval of the difference excludes 0, "
    "else no difference found at this n and these seeds."
)


def _floor_row(coll: Collection, metrics: list[Metric], verdicts: list[Metric]) -> str:
    """The real-data reference under the table (not sorted): each metric of real images in
    place of samples (the real-vs-real floor; the judge's accuracy on real test images)."""
    real = next(
        (r.accuracy.get("real") for r in coll.rows if r.accuracy and r.accuracy.get("real")), None
    )
    if coll.floor is None and real is None:
        return ""
    recs = registry.records(coll.floor, real)
    cells = [_metric_cell(m, recs, None) for m in metrics]
    _insert_verdicts(cells, metrics, [f'<td colspan="{len(verdicts)}"></td>'] if verdicts else [])
    return (
        '<tfoot><tr class="floor"><th scope="row">Real data<span class="n">the floor / ceiling'
        '</span></th><td colspan="2" class="muted">real images in place of samples</td>'
        f'{"".join(cells)}<td colspan="{len(TRAINING_COLUMNS)}"></td></tr></tfoot>'
    )


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _png_size(path: Path) -> tuple[int, int] | None:
    data = Path(path).read_bytes()[:24]
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _figure(path: Path, alt: str, caption: str) -> str:
    size = _png_size(path)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return (
        f'<div class="img"><img src="{_data_uri(path)}"{dims} alt="{esc(alt)}" loading="lazy">'
        f'<div class="caption">{esc(caption)}</div></div>'
    )


def sample_cards(coll: Collection) -> str:
    headline = [m for m in registry.METRICS if m.headline]
    cards = []
    for i, row in enumerate(coll.rows):
        recs, facts = records(row), []
        for m in headline:
            value, note = m.value(recs), n_note(m, recs)
            if value is not None:
                facts.append(f"{m.label} {m.shown(recs)}" + (f" ({note})" if note else ""))
        changes = ", ".join(f"{k}={_value(v)}" for k, v in row.changes.items()) or "base"
        parts = [
            f'<figure class="card {esc(row.status.replace(" ", "-"))}" id="run-{i}">',
            f"<figcaption><strong>{esc(row.name)}</strong>"
            f'<div class="muted">{esc(changes)}</div>'
            + (f"<div>{esc(' · '.join(facts))}</div>" if facts else ""),
        ]
        parts.append("</figcaption>")
        if row.grid is not None and row.grid.is_file():
            parts.append('<div class="imgs">')
            parts.append(_figure(row.grid, f"sample grid of {row.name}", row.grid_caption))
            if row.pairs is not None:
                mem = (row.metrics or {}).get("memorisation") or {}
                share = mem.get("share")
                note = "" if share is None else f"; {100 * share:.1f}% near-copies"
                parts.append(
                    _figure(row.pairs, f"closest pairs of {row.name}",
                            f"closest to the training set: generated | training{note}")
                )  # fmt: skip
            parts.append("</div>")
        else:
            why = STATUS_TEXT.get(row.status) or "no grid.png found"
            parts.append(f'<div class="nogrid">no samples ({esc(why)})</div>')
        if row.error:
            parts.append(f'<div class="error">{esc(row.error)}</div>')
        if row.traceback:
            parts.append(
                f"<details><summary>traceback</summary><pre>{esc(row.traceback)}</pre></details>"
            )
        parts.append("</figure>")
        cards.append("".join(parts))
    return f'<div class="cards">{"".join(cards)}</div>'


def plots_section(plots: list[Plot]) -> str:
    drawn = [p for p in plots if p.svg]
    missing = [p for p in plots if not p.svg]
    out = ['<div class="plots">']
    for p in drawn:
        out.append(
            f'<figure class="plot-card{" wide" if p.wide else ""}" id="plot-{esc(p.key)}">'
            f"<h3>{esc(p.title)}</h3>{p.svg}"
            f'<figcaption class="muted">{esc(p.note)}</figcaption></figure>'
        )
    out.append("</div>")
    if missing:
        items = "".join(f"<li><strong>{esc(p.title)}</strong>: {esc(p.note)}</li>" for p in missing)
        out.append(f'<div class="not-drawn"><h3>Not drawn</h3><ul>{items}</ul></div>')
    return "".join(out)


def notes_box(coll: Collection) -> str:
    notes = list(coll.notes)
    for r in coll.rows:
        for w in (r.metrics or {}).get("warnings") or []:
            notes.append(w)
        if r.accuracy and r.accuracy.get("warning"):
            notes.append(f"{r.name}: {r.accuracy['warning']}")
    notes = list(dict.fromkeys(notes))
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<div class="notes"><h3>Notes</h3><ul>{items}</ul></div>'


def base_box(coll: Collection) -> str:
    if not coll.base:
        return ""
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sorted(coll.base.items()))
    return f"<details><summary>Base configuration</summary><pre>{esc(lines)}</pre></details>"


def render(coll: Collection, plots: list[Plot], csv_name: str | None) -> str:
    n = len(coll.rows)
    done = sum(r.status in ("ok", "unknown") for r in coll.rows)
    failed = sum(r.status == "failed" for r in coll.rows)
    ref = next((r.metrics["real"] for r in coll.rows if r.metrics and r.metrics.get("real")), None)
    meta = [f"{n} run{'s' if n != 1 else ''}", f"{done} finished"]
    if failed:
        meta.append(f'<span class="bad">{failed} failed</span>')
    if n - done - failed:
        meta.append(f"{n - done - failed} not finished")
    if ref:
        meta.append(f"scored against {esc(ref.get('dataset'))}:{esc(ref.get('split'))}")
    meta.append(f"written {datetime.now():%Y-%m-%d %H:%M} by diffscape {esc(__version__)}")
    csv_link = f' · <a href="{esc(csv_name)}">results.csv</a>' if csv_name else ""
    description = f'<p class="desc">{esc(coll.description)}</p>' if coll.description else ""
    return PAGE.format(
        title=esc(coll.title),
        description=description,
        meta=" · ".join(meta) + csv_link,
        table=tables(coll),
        notes=notes_box(coll),
        base=base_box(coll),
        plots=plots_section(plots),
        cards=sample_cards(coll),
        sources=esc(", ".join(str(p) for p in coll.sources)),
        css=CSS,
        js=JS,
    )


CSS = """
:root { --fg:#1d2129; --muted:#6b7280; --line:#e5e7eb; --bg:#f7f8fa; --accent:#2563eb;
  --bad:#b91c1c; --good:#166534; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
main { max-width:1440px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:24px; margin:0 0 6px; }
h2 { font-size:18px; margin:32px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:14px; margin:0 0 8px; }
.desc { max-width:900px; margin:4px 0 8px; }
.meta, .muted, .hint { color:var(--muted); }
.hint { margin:0 0 10px; font-size:13px; }
a { color:var(--accent); text-decoration:none; }
a:hover { text-decoration:underline; }
.bad { color:var(--bad); font-weight:600; }
.table-wrap { overflow-x:auto; background:#fff; border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; font-size:13px; }
tbody td.name, tfoot th { min-width:120px; }
th, td { padding:6px 7px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
thead th { position:sticky; top:0; background:#f1f3f6; font-weight:600; white-space:nowrap;
  cursor:pointer; user-select:none; }
thead th:hover { background:#e7eaf0; }
thead th[aria-sort=ascending]::after { content:" \\25B2"; color:var(--accent); font-size:10px; }
thead th[aria-sort=descending]::after { content:" \\25BC"; color:var(--accent); font-size:10px; }
tbody tr:nth-child(even) { background:#fafbfc; }
tbody tr:hover { background:#f0f5ff; }
td.num { text-align:right; white-space:nowrap; }
td.best { font-weight:700; color:var(--good); }
td.cls { min-width:46px; }
td.sampling { white-space:nowrap; }
td.changes { max-width:230px; }
.n { display:block; color:var(--muted); font-size:11px; font-weight:400; }
.chip { display:inline-block; background:#eef2ff; color:#3730a3; border-radius:4px; padding:1px 5px;
  margin:1px 0; font-size:11.5px; white-space:nowrap; }
.badge { display:inline-block; font-size:11px; border-radius:10px; padding:0 7px; margin-left:4px;
  background:#e5e7eb; color:#374151; }
.badge.failed { background:#fee2e2; color:var(--bad); }
.badge.ok { background:#dcfce7; color:var(--good); }
.badge.not-run, .badge.incomplete { background:#fef3c7; color:#92400e; }
tr.failed td { background:#fff7f7; }
.error { color:var(--bad); font-size:12px; margin-top:3px; white-space:pre-wrap;
  max-width:520px; overflow-wrap:anywhere; }
tfoot tr.floor th, tfoot tr.floor td { background:#f8fafc; border-top:2px solid #cbd5e1;
  text-align:left; font-weight:600; }
tfoot tr.floor td.num { text-align:right; }
.notes, .not-drawn { background:#fffbeb; border:1px solid #fde68a; border-radius:8px;
  padding:10px 14px; margin:12px 0; font-size:13px; }
.notes ul, .not-drawn ul { margin:0; padding-left:18px; }
details { margin:10px 0; }
summary { cursor:pointer; color:var(--accent); }
pre { background:#fff; border:1px solid var(--line); border-radius:6px; padding:10px;
  overflow-x:auto; font-size:12px; max-height:420px; }
.plots { display:grid; grid-template-columns:repeat(auto-fit,minmax(560px,1fr)); gap:16px;
  grid-auto-flow:row dense; }
.plot-card.wide { grid-column:1 / -1; }
.plot-card { margin:0; background:#fff; border:1px solid var(--line); border-radius:8px;
  padding:14px; }
svg.plot { width:100%; height:auto; display:block; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(420px,1fr)); gap:16px; }
.card { margin:0; background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px;
  overflow:hidden; }
.card.failed { border-color:#fca5a5; }
.card figcaption { margin-bottom:8px; }
.card img { max-width:100%; height:auto; image-rendering:pixelated; display:block; }
.caption { color:var(--muted); font-size:12px; margin-top:4px; }
.nogrid { color:var(--muted); padding:24px; text-align:center; background:var(--bg);
  border-radius:6px; }
.imgs { display:flex; gap:12px; align-items:flex-start; flex-wrap:wrap; }
.imgs .img { flex:1 1 100%; }  /* the grid above, the closest pairs (as wide) below */
td.verdict { font-weight:600; min-width:8em; }
td.verdict .n { white-space:nowrap; }
td.v-better { background:#dcfce7; color:var(--good); }
td.v-worse { background:#fee2e2; color:var(--bad); }
td.v-none { background:#f3f4f6; color:#374151; font-weight:400; }
td.v-na, td.v-base { color:var(--muted); font-weight:400; }
.badge.base { background:#e0e7ff; color:#3730a3; }
details.runs > summary { margin:14px 0 8px; }
footer { margin-top:36px; color:var(--muted); font-size:12px; }
"""

# Sorts a table's body by the clicked column: numbers by data-sort (missing last), text
# naturally ("w10" after "w2"); higher-is-better columns sort descending first.
JS = """
(function () {
  "use strict";
  function key(cell, numeric) {
    var v = cell.getAttribute("data-sort");
    if (v === null) { v = cell.textContent.trim(); }
    if (numeric) { return v === "" ? NaN : parseFloat(v); }
    return v.toLowerCase();
  }
  function sortBy(table, th, col) {
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var asc = current ? current !== "ascending" : !th.hasAttribute("data-desc-first");
    Array.prototype.forEach.call(th.parentNode.cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
      if (numeric) {
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
        return asc ? x - y : y - x;
      }
      var c = x.localeCompare(y, undefined, { numeric: true });
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="diffscape">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main>
<header>
<h1>{title}</h1>
{description}
<p class="meta">{meta}</p>
</header>
<section id="results">
<h2>Results</h2>
<p class="hint">Click a column header to sort. FID and KID: lower is better, comparable only at
equal n (FID is biased upward at small n; KID is not). Accuracy: how often a judge trained on
real images sees the class that was asked for. The last row is real data in place of samples.
</p>
{table}
{notes}
{base}
</section>
<section id="plots">
<h2>Plots</h2>
{plots}
</section>
<section id="samples">
<h2>Samples</h2>
<p class="hint">One row per class, as generated (grid.png of each sampling).</p>
{cards}
</section>
<footer>Built from {sources}. Per run it reads config.json, metrics.jsonl, samples/&hellip;/grid.png
and samples.json, metrics.json, accuracy.json and result.json.</footer>
</main>
<script>{js}</script>
</body>
</html>
"""
