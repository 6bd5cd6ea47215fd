"""The report as one self-contained HTML page, so that it opens from disk with no server and no
network: the page is ``templates/page.html`` (Jinja2, autoescaped) with its CSS and its few lines
of JS (sortable tables) inlined from ``page.css`` and ``page.js``; this module gives it the data:
the tables (HTML built here and in :mod:`.settings_html`), plots as inline SVG, sample grids as
base64 data URIs."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from diffscape import __version__
from diffscape.core.timefmt import duration
from diffscape.report.html import cell, esc, small
from diffscape.report.plots import Plot
from diffscape.report.rows import Collection, Row
from diffscape.report.settings_html import settings_table, value_cell, verdict_cell
from diffscape.report.table import class_names, summary
from diffscape.report.verdicts import metrics_for, settings

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


# Columns: (header, type, tooltip, higher is better). "num" columns sort numerically.
def _columns(
    classes: list[str], extra: Sequence[tuple[str, str, str, bool]] = ()
) -> list[tuple[str, str, str, bool]]:
    cols = [
        ("Run", "text", "run name (click to see its samples)", False),
        ("Changes from base", "text", "settings that differ from the base config", False),
        ("Sampling", "text", "sampler, steps, guidance w", False),
        ("FID", "num", "Fréchet Inception Distance; lower is better; n = generated / real", False),
        (
            "KID",
            "num",
            "Kernel Inception Distance, mean ± std over subsets; lower is better",
            False,
        ),
        ("Accuracy", "num", "judge accuracy on the samples; n = images judged", True),
    ]
    cols += [(c, "num", f"judge accuracy on samples of class {c}", True) for c in classes]
    cols += list(extra)
    cols += [
        ("Train time", "num", "wall time of training, summed over resumes (metrics.jsonl)", False),
        ("img/s", "num", "training images per second (median over log windows)", True),
        ("Loss", "num", "last logged training loss", False),
    ]
    return cols


def _best(values: list[float | None], higher: bool) -> float | None:
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    return max(present) if higher else min(present)


def results_table(coll: Collection, extras: tuple[list[Any], list[Any], list[Any]]) -> str:
    """The per-run table; ``extras`` = (columns, cells per row, foot padding) of the issue-16
    numbers (further judges, precision/recall, fid64, near-copies, verdicts)."""
    rows = coll.rows
    classes = class_names(rows)
    sums = [summary(r, classes) for r in rows]
    extra_cols, extra_cells, _ = extras
    cols = _columns(classes, extra_cols)
    ok = [s for s in sums if s["status"] in ("ok", "unknown")]
    best = {
        "fid": _best([s["fid"] for s in ok], False),
        "kid_mean": _best([s["kid_mean"] for s in ok], False),
        "accuracy": _best([s["accuracy"] for s in ok], True),
    }
    head = "".join(
        f'<th data-type="{t}"{" data-desc-first" if hi else ""} title="{esc(tip)}" scope="col">'
        f"{esc(name)}</th>"
        for name, t, tip, hi in cols
    )
    body = []
    for i, (row, s) in enumerate(zip(rows, sums, strict=True)):
        body.append(_row_html(i, row, s, classes, best, extra_cells[i]))
    foot = _floor_row(coll, sums, classes, len(cols))
    return (
        '<div class="table-wrap"><table id="runs" class="sortable">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>{foot}</table></div>"
    )


def _row_html(
    i: int,
    row: Row,
    s: dict[str, Any],
    classes: list[str],
    best: dict[str, float | None],
    extra: list[str],
) -> str:
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
    sampling = "–"
    if s["sampler"]:
        w = "" if s["guidance"] is None else f" · w={s['guidance']:g}"
        sampling = f"{esc(s['sampler'])} {esc(s['sampler_steps'])}{w}"
        if s["n_samples"]:
            sampling += small(f"{s['n_samples']} images")
    cells = [
        cell(name, row.name, "name"),
        cell(changes, s["changes"], "changes"),
        cell(sampling, f"{s['sampler'] or ''} {s['sampler_steps'] or 0:05d}", "sampling"),
    ]
    fid_text = _fmt(s["fid"], ".2f")
    if s["fid"] is not None:
        fid_text += small(f"n {s['n_fake']} / {s['n_real']}")
    cells.append(cell(fid_text, s["fid"], "num" + (" best" if s["fid"] == best["fid"] else "")))
    kid = "–"
    if s["kid_mean"] is not None:
        kid = f"{s['kid_mean']:.4f} ± {s['kid_std']:.4f}"
        if s["kid_subset_size"]:
            kid += small(f"subsets of {s['kid_subset_size']}")
    best_kid = s["kid_mean"] is not None and s["kid_mean"] == best["kid_mean"]
    cells.append(cell(kid, s["kid_mean"], "num" + (" best" if best_kid else "")))
    acc = _fmt(None if s["accuracy"] is None else 100 * s["accuracy"], ".1f")
    if s["accuracy"] is not None:
        acc += "%" + small(f"n {s['n_judged']}")
    best_acc = s["accuracy"] is not None and s["accuracy"] == best["accuracy"]
    cells.append(cell(acc, s["accuracy"], "num" + (" best" if best_acc else "")))
    for c in classes:
        v = s[f"accuracy_{c}"]
        text = _fmt(None if v is None else 100 * v, ".0f") + ("%" if v is not None else "")
        tip = [f"{c}: {s[f'n_judged_{c}']} judged"] if v is not None else [c]
        if s[f"fid_{c}"] is not None:
            tip.append(f"FID {s[f'fid_{c}']:.1f}")
        if s[f"kid_{c}"] is not None:
            tip.append(f"KID {s[f'kid_{c}']:.4f}")
        cells.append(cell(text, v, "num cls", _heat(v) + f' title="{esc(", ".join(tip))}"'))
    cells += extra
    secs = s["train_seconds"]
    cells.append(cell(duration(secs), secs, "num"))
    cells.append(cell(_fmt(s["images_per_second"], ".0f"), s["images_per_second"], "num"))
    loss = _fmt(s["final_loss"], ".4f")
    if s["train_steps"]:
        loss += small(f"step {s['train_steps']}")
    cells.append(cell(loss, s["final_loss"], "num"))
    cls = f' class="{esc(row.status.replace(" ", "-"))}"'
    return f"<tr{cls}>{''.join(cells)}</tr>"


def tables(coll: Collection) -> str:
    """The results: for a sweep with seeds, the settings table (mean ± 95 % interval over the
    seeds, verdicts against the baseline) above the per-run table; otherwise the per-run table,
    with a verdict per headline metric when there are settings to compare."""
    metrics = metrics_for(coll.rows)
    sets = settings(coll, metrics)
    replicated = coll.seeds is not None or any(len(s.rows) > 1 for s in sets)
    shown = [m for m in metrics if m.key.startswith("judge_") or m.key in EXTRA_KEYS]
    verdicts = [m for m in metrics if m.verdict] if len(sets) > 1 and not replicated else []
    cols = [(f"{m.label} vs baseline", "num", VERDICT_TIP, False) for m in verdicts]
    cols += [
        (m.label, "num", EXTRA_TIPS.get(m.key, "accuracy of a further judge"), m.higher_is_better)
        for m in shown
    ]
    of = {r.group: s for s in sets for r in s.rows}
    cells = [
        [verdict_cell(m, of.get(r.group)) for m in verdicts] + [value_cell(m, r) for m in shown]
        for r in coll.rows
    ]
    runs = results_table(coll, (cols, cells, []))
    if not replicated:
        return runs
    baseline = next((s.name for s in sets if s.is_baseline), "")
    return (
        f'<p class="hint">{esc(SETTINGS_HINT.format(baseline=baseline))}</p>'
        + settings_table(coll, sets, metrics)
        + f'<details class="runs"><summary>Every run ({len(coll.rows)}, one per setting and '
        f"seed)</summary>{runs}</details>"
    )


EXTRA_KEYS = ("precision", "recall", "fid64", "memorisation")
EXTRA_TIPS = {
    "precision": "share of generated images inside the real images' manifold (Kynkäänniemi "
    "et al. 2019, k=3): sharpness/fidelity",
    "recall": "share of real images inside the generated images' manifold: variety",
    "fid64": "FID on 64-d Inception features, 150 vs 150 images: the seed report's yardstick",
    "memorisation": "share of generated images that are near-copies of a training image",
}
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


def _floor_row(coll: Collection, sums: list[dict[str, Any]], classes: list[str], width: int) -> str:
    """The real-data reference under the table (not sorted): real vs real FID/KID, and the
    judge's accuracy on real test images."""
    floor = coll.floor
    real = next(
        (r.accuracy.get("real") for r in coll.rows if r.accuracy and r.accuracy.get("real")), None
    )
    if floor is None and real is None:
        return ""
    cells = ['<th scope="row">Real data<span class="n">the floor / ceiling</span></th>']
    cells.append('<td colspan="2" class="muted">real images in place of samples</td>')
    if floor is not None and floor.get("fid") is not None:
        fid = f"{floor['fid']:.2f}" + small(f"n {floor.get('n_fake')} / {floor.get('n_real')}")
        kid_d = floor.get("kid") or {}
        kid = f"{kid_d['mean']:.4f} ± {kid_d['std']:.4f}" if kid_d else "–"
        src = f"{floor.get('fake', {}).get('source', '?')} vs {floor.get('real', {}).get('split', '?')}"
        cells.append(
            f'<td class="num" title="{esc(src)}">{fid}</td><td class="num">{esc(kid)}</td>'
        )
    else:
        cells.append('<td class="num">–</td><td class="num">–</td>')
    if real is not None:
        acc = f"{100 * real['accuracy']:.1f}%" + small(f"n {real.get('n') or '?'}")
        cells.append(f'<td class="num" title="{esc(real.get("source", ""))}">{acc}</td>')
    else:
        cells.append('<td class="num">–</td>')
    cells.append(f'<td colspan="{width - 6}"></td>')
    return f'<tfoot><tr class="floor">{"".join(cells)}</tr></tfoot>'


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _png_size(path: Path) -> tuple[int, int] | None:
    data = Path(path).read_bytes()[:24]
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _figure(path: Path, alt: str, caption: str) -> dict[str, Any]:
    return {"src": _data_uri(path), "size": _png_size(path), "alt": alt, "caption": caption}


def _card(row: Row, s: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one run under its samples."""
    facts = []
    if s["fid"] is not None:
        facts.append(f"FID {s['fid']:.2f} (n {s['n_fake']})")
    if s["kid_mean"] is not None:
        facts.append(f"KID {s['kid_mean']:.4f} ± {s['kid_std']:.4f}")
    if s["accuracy"] is not None:
        facts.append(f"judge {100 * s['accuracy']:.1f}% of {s['n_judged']}")
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
    classes = class_names(coll.rows)
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
        cards=[_card(r, summary(r, classes)) for r in coll.rows],
        sources=", ".join(str(p) for p in coll.sources),
    )  # fmt: skip
