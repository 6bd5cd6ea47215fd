"""The numbers of each row, once, for the HTML table, the plots and results.csv.

results.csv has a line per row: its name, status and sampling, one column per metric of
:mod:`diffscape.metrics.registry` (by its key, also per class and per further judge), the image
counts, the training's numbers, the error, and a column per changed setting."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from diffscape.core.atomic import atomic_path
from diffscape.metrics import registry
from diffscape.metrics.registry import Metric
from diffscape.report.rows import Row


def summary(row: Row, metrics: list[Metric]) -> dict[str, Any]:
    """Flat numbers of one row (None where missing): one per metric, by its key."""
    recs, s = row.records, row.sampling or {}
    out: dict[str, Any] = {
        "name": row.name,
        "status": row.status,
        "changes": "; ".join(f"{k}={v}" for k, v in row.changes.items()),
        "sampler": s.get("sampler"),
        "sampler_steps": s.get("steps"),
        "guidance": s.get("guidance"),
        "n_samples": s.get("n"),
        "setting": row.group,
        "seed": row.seed,
    }
    out |= {m.key: m.value(recs) for m in metrics}
    ev, a = row.metrics or {}, row.accuracy or {}
    out |= {"n_fake": ev.get("n_fake"), "n_real": ev.get("n_real"), "n_judged": a.get("n")}
    out["judge_real_accuracy"] = (a.get("real") or {}).get("accuracy")
    out |= recs["train"]
    out["error"] = row.error
    return out


def summaries(rows: list[Row]) -> list[dict[str, Any]]:
    """Every row's :func:`summary`, with the same columns: every metric any row has, per
    further judge too, then per class (class by class)."""
    runs = [r.records for r in rows]
    metrics, classes = registry.metrics_for(runs, every_class=True), registry.class_names(runs)
    metrics.sort(key=lambda m: classes.index(m.scope[-1]) + 1 if m.scope else 0)
    return [summary(r, metrics) for r in rows]


def write_csv(rows: list[Row], path: Path) -> Path:
    """results.csv: one line per row; every changed setting also gets a column of its own."""
    lines = summaries(rows)
    changed = list(dict.fromkeys(k for r in rows for k in r.changes))
    for line, row in zip(lines, rows, strict=True):
        line |= {k: row.changes.get(k) for k in changed}
    fields = list(lines[0]) if lines else ["name"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([csv_cell(k) for k in fields])
        w.writerows([csv_cell(line.get(k)) for k in fields] for line in lines)
    return path


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` as results.csv writes it: text that a spreadsheet would run as a formula (a run
    or class name such as ``=1+2``) gets a leading ``'``, which shows it as text; numbers, even
    negative ones, and None (an empty cell) stay as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
