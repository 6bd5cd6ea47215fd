"""The settings engine: a frozen pydantic model per section, every setting declared once with
``Field(default, ge=/le=/gt=/lt=, description=...)``.

Pydantic checks types and bounds; this module adds what it does not do: one-line
:class:`ConfigError` messages that name the dotted setting (``train.lr: nan is not a finite
number``), values parsed from text (``--set`` overrides and command-line flags), validated
copies (:meth:`Settings.with_changes`), and the table of every setting (:func:`rows`) that
``--help`` and docs/settings.md are rendered from.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic.fields import FieldInfo

from diffscape.core.errors import DiffscapeError


class ConfigError(DiffscapeError, ValueError):
    """A bad preset, override or value; the message names the setting (or the flag).

    ``path`` is the field names from the model that was validated (``("train", "lr")``),
    ``shown`` the value as the message shows it (None: not shown) and ``problem`` the rest
    (``is out of range; must be ...``), so that a command can name its own flag instead."""

    def __init__(
        self, message: str, path: tuple[str, ...] = (), shown: str | None = None, problem: str = ""
    ) -> None:
        super().__init__(message)
        self.path, self.shown, self.problem = path, shown, problem

    def naming(self, what: str) -> ConfigError:
        """The same error, naming ``what`` (``--n 0``) instead of the dotted setting."""
        text = f"{what} {self.problem}" if self.shown is not None else f"{what}: {self.problem}"
        return ConfigError(text, self.path, self.shown, self.problem)


class FieldError(ValueError):
    """Raised by a cross-field validator: the field the message is about, and the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Settings(BaseModel):
    """A section of settings: frozen, unknown keys refused, floats finite. Built directly
    (``SampleSettings(n=0)``) or by :meth:`parse`, a bad value raises a :class:`ConfigError`."""

    # defer_build: validators are built on first use, so that ``--help`` pays only for the
    # field table (building all ten took about 25 ms on the development VM).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, defer_build=True)
    section: ClassVar[str] = ""  # the prefix of its dotted keys ("train"); "" for a whole config

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise config_error(type(self), e) from None

    @classmethod
    def parse(cls, data: Any) -> Self:
        """The settings from plain data (a TOML table, a JSON object, parsed overrides)."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise config_error(cls, e) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, nested sections as dicts (what config.json and the records hold)."""
        return self.model_dump()

    def with_changes(self, **changes: Any) -> Self:
        """A validated copy with some settings replaced; a mapping given for a nested section
        changes only the keys it names (``cfg.with_changes(train={"steps": 10})``)."""
        data = self.model_dump()
        for key, value in changes.items():
            merge = isinstance(value, Mapping) and isinstance(data.get(key), dict)
            data[key] = {**data[key], **value} if merge else value
        return type(self).parse(data)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: Any) -> Any:
        # pydantic takes True for 1; a setting that is a number refuses it, as TOML does
        kind = type_text(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and "bool" not in kind.split(" or "):
            raise FieldError("", f"{value_text(value)} is not {kind}")
        return value


# ---- errors: pydantic's first error as one line --------------------------------------------------

RANGE = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
IS_NOT = {
    "finite_number": "a finite number",
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "tuple_type": "a list", "list_type": "a list",
}  # fmt: skip


def config_error(cls: type[Settings], exc: ValidationError) -> ConfigError:
    """The first of pydantic's errors as a ConfigError naming the dotted setting."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] in RANGE), errors[0])  # a union's: the bound
    path, field, model, item = _walk(cls, err["loc"])
    shown, problem = _describe(err, field, model, item, path)
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):  # a nested section's own (pydantic calls its __init__)
        path, shown, problem = path + cause.path, cause.shown, cause.problem
    elif isinstance(cause, FieldError) and cause.field:
        path += (cause.field,)
    key = ".".join(filter(None, (cls.section, *path))) or "config"
    message = f"{key}: {shown} {problem}" if shown is not None else f"{key}: {problem}"
    return ConfigError(message, path, shown, problem)


def _walk(cls: type[Settings], loc: tuple) -> tuple[tuple[str, ...], FieldInfo | None, Any, bool]:
    """(field names along ``loc``, the last field, the model holding it, inside a list?)."""
    path: list[str] = []
    holder: Any = cls
    model: Any = cls
    field, item = None, False
    for part in loc:
        if model is None:  # inside a list or a union: item indexes and member tags
            item = item or isinstance(part, int)
            continue
        holder, field = model, model.model_fields.get(part)
        path.append(str(part))
        model = _settings_class(field.annotation) if field else None
    return tuple(path), field, holder, item


def _describe(
    err: dict, field: FieldInfo | None, model: Any, item: bool, path: tuple[str, ...]
) -> tuple[str | None, str]:
    """(the value shown, what is wrong with it) for one pydantic error."""
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        return None, f"unknown key {path[-1]}; known: {', '.join(model.model_fields)}"
    if kind == "value_error":
        return None, str(err["ctx"]["error"])
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return None, f"expected a table of settings, got {type(value).__name__}"
    if kind == "missing":
        return None, "is required"
    shown = repr(value) if isinstance(value, str) else value_text(value)
    if field is not None and kind in RANGE:
        return shown, f"is out of range; must be {_bounds(field, item=_is_list(field))}"
    if kind in ("too_short", "too_long") and field is not None:
        fewest, most = _count(field)
        return shown, f"has {len(value)} items; give {fewest} to {most}"
    if kind == "literal_error" or (field is not None and _is_union(field.annotation)):
        return shown, f"is not {type_text(field.annotation) if field else 'allowed'}"
    if kind in IS_NOT:
        return shown, f"is not {IS_NOT[kind]}"
    return shown, err["msg"][0].lower() + err["msg"][1:]


# ---- values from text ----------------------------------------------------------------------------


def parse_text(text: str) -> Any:
    """A value as typed after ``--set key=`` or a flag: ``none``, else a TOML value (integers,
    floats, ``true``/``false``, ``[16, 32]``, ``"quoted"``), else the text itself; ``16,32``
    without brackets is a list too."""
    s = text.strip()
    if s.lower() in ("none", "null"):
        return None
    if "\n" in s:
        return s
    tries = (s, f"[{s}]") if "," in s and not s.startswith(("[", '"', "'")) else (s,)
    for candidate in tries:
        try:
            return tomllib.loads(f"v = {candidate}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    return s


# ---- the table of settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One setting: its dotted key, its field (type, bounds, description) and default."""

    key: str
    field: FieldInfo
    default: Any


def rows(cls: type[Settings], prefix: str | None = None, defaults: Any = None) -> Iterator[Row]:
    """Every setting of ``cls`` in declaration order; a nested section's settings are listed
    under its key (``demo.sample.n``) with the defaults the outer one gives them."""
    prefix = cls.section if prefix is None else prefix
    for name, field in cls.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        default = (
            field.get_default(call_default_factory=True)
            if defaults is None
            else getattr(defaults, name)
        )
        inner = _settings_class(field.annotation)
        if inner is not None:
            yield from rows(inner, key, default)
        else:
            yield Row(key, field, default)


def _settings_class(annotation: Any) -> type[Settings] | None:
    bare = _bare(annotation)
    return bare if isinstance(bare, type) and issubclass(bare, Settings) else None


def _bare(annotation: Any) -> Any:
    """The annotation without ``Annotated[...]`` constraints."""
    return (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )


def _is_union(annotation: Any) -> bool:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) in (types.UnionType, typing.Union) and len(args) > 1


def _is_list(field: FieldInfo) -> bool:
    return typing.get_origin(_bare(field.annotation)) is tuple


def type_text(annotation: Any) -> str:
    """``int``, ``list of int``, ``int or none``, ``one of silu, relu, ...``."""
    ann = _bare(annotation)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return f"list of {type_text(args[0])}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join("none" if a is type(None) else type_text(a) for a in args)
    return getattr(ann, "__name__", str(ann))


def _constraints(annotation: Any, metadata: Any = ()) -> dict[str, float]:
    """``{"ge": 1, "le": 2048}`` from a field's metadata and its Annotated (or union) members."""
    found: dict[str, float] = {}
    items = list(metadata)
    if typing.get_origin(annotation) is Annotated:
        items += typing.get_args(annotation)[1:]
    elif typing.get_origin(annotation) in (types.UnionType, typing.Union):
        for member in typing.get_args(annotation):
            found |= _constraints(member)
    for item in items:
        for sub in item.metadata if isinstance(item, FieldInfo) else [item]:
            for bound in ("ge", "gt", "le", "lt"):
                if getattr(sub, bound, None) is not None:
                    found[bound] = getattr(sub, bound)
    return found


def _count(field: FieldInfo) -> tuple[int, int]:
    fewest = next((m.min_length for m in field.metadata if hasattr(m, "min_length")), 0)
    most = next((m.max_length for m in field.metadata if hasattr(m, "max_length")), 0)
    return fewest, most


def _bounds(field: FieldInfo, item: bool = False) -> str:
    """``at least 8, at most 512`` (of a list's items when ``item``); empty without bounds."""
    ann = _bare(field.annotation)
    source = typing.get_args(ann)[0] if item else field.annotation
    found = _constraints(source, () if item else field.metadata)
    words = (("ge", "at least"), ("gt", "above"), ("le", "at most"), ("lt", "below"))
    return ", ".join(f"{w} {value_text(found[k])}" for k, w in words if k in found)


def bounds_text(field: FieldInfo) -> str:
    """The bounds of a setting as docs and ``--help`` show them: ``at least 8, at most 512``;
    ``1 to 6 items, each at least 1, at most 2048`` for a list."""
    if not _is_list(field):
        return _bounds(field)
    fewest, most = _count(field)
    each = _bounds(field, item=True)
    return f"{fewest} to {most} items" + (f", each {each}" if each else "")


def value_text(value: Any) -> str:
    """A value as one would type it after ``--set key=`` (TOML-like; 10_000 for big ints)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:_}"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def describe(row: Row) -> str:
    """``type; bounds`` of one setting, for ``--help`` and the docs."""
    return "; ".join(filter(None, [type_text(row.field.annotation), bounds_text(row.field)]))
