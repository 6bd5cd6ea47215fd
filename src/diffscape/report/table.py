"""The numbers of each row, once, for both the HTML table and results.csv."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

from diffscape.core.atomic import atomic_path
from diffscape.report.rows import Row


def train_stats(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Training time, speed, steps and last loss from metrics.jsonl.

    ``seconds`` counts from the start of each ``train`` call, so a resumed run's log restarts
    it: the time is the sum over those segments. ``img/s`` is the median of the logged windows
    (robust to the slow first window and to pauses)."""
    recs = [r for r in log if not r.get("skipped")]
    if not recs:
        return {}
    total, segment, prev = 0.0, 0.0, -1.0
    for r in recs:
        s = r.get("seconds")
        if s is None:
            continue
        if s < prev:  # a new train() call: resumed
            total += segment
        segment, prev = s, s
    total += segment
    rates = [r["images_per_second"] for r in recs if r.get("images_per_second")]
    return {
        "train_seconds": total or None,
        "images_per_second": statistics.median(rates) if rates else None,
        "train_steps": recs[-1].get("step"),
        "final_loss": recs[-1].get("loss"),
    }


def class_names(rows: list[Row]) -> list[str]:
    """Classes in the judge's order, as first seen."""
    seen: dict[str, None] = {}
    for r in rows:
        for c in (r.accuracy or {}).get("per_class") or {}:
            seen.setdefault(c, None)
        for c in (r.metrics or {}).get("per_class") or {}:
            seen.setdefault(c, None)
    return list(seen)


def summary(row: Row, classes: list[str]) -> dict[str, Any]:
    """Flat numbers of one row (None where missing)."""
    m, a, s = row.metrics or {}, row.accuracy or {}, row.sampling or {}
    kid = m.get("kid") or {}
    out: dict[str, Any] = {
        "name": row.name,
        "status": row.status,
        "changes": "; ".join(f"{k}={v}" for k, v in row.changes.items()),
        "sampler": s.get("sampler"),
        "sampler_steps": s.get("steps"),
        "guidance": s.get("guidance"),
        "n_samples": s.get("n"),
        "fid": m.get("fid"),
        "kid_mean": kid.get("mean"),
        "kid_std": kid.get("std"),
        "kid_subset_size": kid.get("subset_size"),
        "n_fake": m.get("n_fake"),
        "n_real": m.get("n_real"),
        "accuracy": a.get("accuracy"),
        "n_judged": a.get("n"),
        "judge_real_accuracy": (a.get("real") or {}).get("accuracy"),
        "setting": row.group,
        "seed": row.seed,
        "precision": m.get("precision"),
        "recall": m.get("recall"),
        "fid64": m.get("fid64"),
        "memorisation_share": (m.get("memorisation") or {}).get("share"),
    }
    for kind, acc in row.judges.items():
        out[f"accuracy_{kind}_judge"] = acc.get("accuracy")
    per_class_acc = a.get("per_class") or {}
    per_class_m = m.get("per_class") or {}
    for c in classes:
        out[f"accuracy_{c}"] = (per_class_acc.get(c) or {}).get("accuracy")
        out[f"n_judged_{c}"] = (per_class_acc.get(c) or {}).get("n")
        out[f"fid_{c}"] = (per_class_m.get(c) or {}).get("fid")
        out[f"kid_{c}"] = ((per_class_m.get(c) or {}).get("kid") or {}).get("mean")
    out |= {"train_seconds": None, "images_per_second": None, "train_steps": None}
    out["final_loss"] = None
    out |= train_stats(row.log)
    out["error"] = row.error
    return out


def write_csv(rows: list[Row], path: Path) -> Path:
    """results.csv: one line per row; every changed setting also gets a column of its own."""
    classes = class_names(rows)
    records = [summary(r, classes) for r in rows]
    changed = list(dict.fromkeys(k for r in rows for k in r.changes))
    for rec, row in zip(records, rows, strict=True):
        for k in changed:
            rec[k] = row.changes.get(k)
    # Every row's columns (rows with a further judge have its accuracy column), in order.
    fields = list(dict.fromkeys(k for rec in records for k in rec)) or ["name"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([csv_cell(k) for k in fields])
        w.writerows([csv_cell(rec.get(k)) for k in fields] for rec in records)
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
