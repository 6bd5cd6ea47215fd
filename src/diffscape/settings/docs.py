"""The settings as text: ``--help`` epilogs (:func:`describe_settings`) and docs/settings.md
(:func:`settings_markdown`; ``python -m diffscape.settings > docs/settings.md``)."""

from __future__ import annotations

from diffscape.settings.engine import bounds_text, describe, rows, type_text, value_text
from diffscape.settings.sections import ALL_SECTIONS

INTRO = """\
# Settings

Generated from the settings classes in `src/diffscape/settings/sections.py` by
`python -m diffscape.settings > docs/settings.md`; do not edit by hand.

`model.*`, `diffusion.*` and `train.*` are a run's config (`diffscape train --set
section.key=value`, presets, a sweep's `[base]`/`[grid]`/`[[runs]]`), saved as `config.json`.
`sample.*`, `evaluate.*` and `judge.*` are a sweep file's `[sample]`, `[evaluate]` and
`[judge]` tables and the flags of `diffscape sample`, `evaluate` and `judge train`; `cnn.*` and
`svc.*` are how `diffscape judge train` / `judge cas` (and a study) train a judge; `demo.*` are
the flags of `diffscape demo` (its `demo.sample.*` and `demo.evaluate.*` are listed where they
differ from `sample.*` and `evaluate.*`). A flag is the key's name with dashes (`--n-real`); settings
marked "a study" are not flags. Floats must be finite."""


def describe_settings(*sections: str) -> str:
    """Every dotted key of ``sections`` (all when none given), one per line:
    ``key=default  help (type; bounds)``; for a ``--help`` epilog."""
    return "\n".join(
        f"  {row.key}={value_text(row.default)}  {row.field.description} ({describe(row)})"
        for section in sections or tuple(ALL_SECTIONS)
        for row in rows(ALL_SECTIONS[section])
    )


def settings_markdown() -> str:
    """docs/settings.md: a table per section."""
    out = [INTRO]
    for section, cls in ALL_SECTIONS.items():
        out += ["", f"## {section}", ""]
        if cls.__doc__ and section in ("cnn", "svc", "demo"):
            out += [" ".join(cls.__doc__.replace("``", "`").split()), ""]
        out += ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
        for row in rows(cls):
            if row.key.count(".") > 1 and row.default == row.field.get_default():
                continue  # a nested section's setting at that section's default
            cells = [
                f"`{row.key}`",
                type_text(row.field.annotation),
                f"`{value_text(row.default)}`",
                bounds_text(row.field),
                row.field.description,
            ]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"
