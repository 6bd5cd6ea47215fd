"""The report as one self-contained HTML page, so that it opens from disk with no server and no
network: the page is ``templates/page.html`` (Jinja2, autoescaped) with its CSS and its few lines
of JS (sortable tables) inlined from ``page.css`` and ``page.js``; this module gives it the data:
the tables (HTML built here and in :mod:`.settings_html`), plots as inline SVG, sample grids as
base64 data URIs."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

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


def _figure(path: Path, alt: str, caption: str) -> dict[str, Any]:
    return {"src": _data_uri(path), "size": _png_size(path), "alt": alt, "caption": caption}


def _card(row: Row) -> dict[str, Any]:
    """What the page shows of one run under its samples: the headline metrics (the registry's),
    its grid and closest pairs."""
    recs, facts = records(row), []
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


def render(coll: Collection, plots: list[Plot], csv_name: str | None) -> str:
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
        csv_name=csv_name,
        table=Markup(tables(coll)),
        notes=_notes(coll),
        base="\n".join(f"{k} = {json.dumps(v)}" for k, v in sorted(coll.base.items())),
        plots=plots,
        cards=[_card(r) for r in coll.rows],
        sources=", ".join(str(p) for p in coll.sources),
    )  # fmt: skip
