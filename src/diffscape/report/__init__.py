"""One page a person reads: every run of a sweep (or any run folders) with its numbers, plots
and samples, as a self-contained HTML file, plus ``results.csv`` beside it
(:mod:`diffscape.report.rows` documents which files it reads).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from diffscape.core import atomic, layout
from diffscape.report.rows import Collection, Row, collect
from diffscape.report.table import write_csv

__all__ = ["Collection", "Row", "build_report", "collect", "write_csv"]


def build_report(
    runs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_html: str | os.PathLike[str],
    *,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the report page for ``runs`` (a sweep folder, a run folder, a folder of run folders,
    or a list of these) to ``out_html``, and ``results.csv`` beside it; returns the page's path.
    Each is new, or a page or table of this program's replaced with ``overwrite``.
    """
    from diffscape.report.page import render
    from diffscape.report.plots import all_plots

    out = layout.check_out(out_html, "html", overwrite=overwrite)
    layout.check_out(out.with_name(layout.RESULTS_CSV), "csv", overwrite=overwrite)
    coll = collect(runs)
    if title:
        coll.title = title
    write_csv(coll.rows, out.with_name(layout.RESULTS_CSV))
    atomic.write_text(out, render(coll, all_plots(coll.rows, coll.floor)))
    return out
