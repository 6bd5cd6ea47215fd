"""How a duration reads to a person: one formatter for the report and the training log."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """'45 s', '2.5 min', '9.6 h'; '–' when unknown."""
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
