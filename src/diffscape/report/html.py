"""The HTML pieces every table of the report is made of: escaped text, a sortable cell, a small
note after a value."""

from __future__ import annotations

import html
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def cell(text: str, sort: float | str | None, classes: str = "", extra: str = "") -> str:
    """A table cell; ``sort`` is the value the page's script sorts the column by."""
    sort_attr = "" if sort is None else f' data-sort="{esc(sort)}"'
    if sort is None and classes.startswith("num"):
        sort_attr = ' data-sort=""'  # missing numbers sort last either way
    cls = f' class="{classes}"' if classes else ""
    return f"<td{cls}{sort_attr}{extra}>{text}</td>"


def small(text: str) -> str:
    """A small note after a value (its n, the step it was read at)."""
    return f'<span class="n">{esc(text)}</span>'
