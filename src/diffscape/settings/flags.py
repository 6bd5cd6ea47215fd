"""Command-line flags generated from the settings: ``--name`` per setting, its help (meaning,
type, bounds, default) from the field, its value parsed and checked by the engine after argparse
is done, so that a bad value is one :class:`ConfigError` naming the flag the user typed."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from diffscape.settings.engine import (
    ConfigError,
    Row,
    Settings,
    describe,
    parse_text,
    rows,
    type_text,
    value_text,
)


class Flags:
    """The flags of some settings of one section (all when ``names`` is None, nested sections
    left out), named ``--<name>`` with dashes unless ``rename`` says otherwise. ``default``
    words the default when the command's base is not the section's defaults (``the preset's``)."""

    def __init__(
        self,
        cls: type[Settings],
        names: Iterable[str] | None = None,
        *,
        exclude: Iterable[str] = (),
        rename: Mapping[str, str] | None = None,
        default: str | None = None,
    ) -> None:
        table = {r.key.split(".", 1)[1]: r for r in rows(cls)}
        table = {name: row for name, row in table.items() if "." not in name}  # not nested
        chosen = list(names) if names is not None else [n for n in table if n not in exclude]
        self.cls, self.default = cls, default
        self.rows: dict[str, Row] = {n: table[n] for n in chosen}
        rename = rename or {}
        self.flags = {n: "--" + rename.get(n, n).replace("_", "-") for n in chosen}

    def dest(self, name: str) -> str:
        return f"{self.cls.section}.{name}"

    def add_to(self, parser: argparse.ArgumentParser, title: str | None = None) -> None:
        """One option per setting (in a group of their own under ``title``); nothing is set in
        ``args`` for a flag not given."""
        parser.set_defaults(settings_help=parser.prog)  # for the errors' "see ... --help"
        group = parser.add_argument_group(title) if title else parser
        for name, row in self.rows.items():
            ann = row.field.annotation
            kw: dict[str, Any] = {"dest": self.dest(name), "default": argparse.SUPPRESS}
            if type_text(ann) == "bool":
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(ann) is Literal:
                kw["choices"] = typing.get_args(ann)  # listed by argparse
            else:
                kw["metavar"] = self.flags[name].lstrip("-").replace("-", "_").upper()
            about = f" ({describe(row)})" if "metavar" in kw else ""  # choices, bools: said
            default = self.default or value_text(row.default)
            text = f"{row.field.description}{about}; default: {default}"
            group.add_argument(self.flags[name], help=text.replace("%", "%%"), **kw)

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The values of the flags given, parsed from their text (free text kept as is)."""
        out = {}
        for name, row in self.rows.items():
            if hasattr(args, self.dest(name)):
                value = getattr(args, self.dest(name))
                free = type_text(row.field.annotation) in ("str", "str or none")  # a path, a name
                out[name] = parse_text(value) if isinstance(value, str) and not free else value
        return out

    def build(self, args: argparse.Namespace, base: Settings | None = None) -> Any:
        """``base`` (the section's defaults when None) with the flags given; a bad value is a
        ConfigError naming its flag: ``--n 0 is out of range; must be at least 1, ...``."""
        base = self.cls() if base is None else base
        values = self.given(args)
        try:
            return base.with_changes(**values) if values else base
        except ConfigError as e:
            name = e.path[0] if e.path else ""
            if name not in values:
                raise
            raw = getattr(args, self.dest(name))
            error = e.naming(
                f"{self.flags[name]} {raw if isinstance(raw, str) else value_text(raw)}"
            )
            see = f" (see {args.settings_help} --help)"  # set by add_to, which made the flag
            raise ConfigError(f"{error}{see}", e.path, e.shown, e.problem) from None

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """These flags' settings, the section's defaults with the flags given, as keyword
        arguments (checked as :meth:`build` does)."""
        return self.build(args).model_dump(include=set(self.rows))
