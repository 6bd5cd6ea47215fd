"""A run's config resolved: ``defaults <- preset TOML <- dotted overrides``, validated once, and
read back from ``config.json``; what a resumed run may not change (:func:`shape_changes`) and what
differs between two configs (:func:`diff`)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from diffscape.settings.engine import ConfigError, parse_text
from diffscape.settings.sections import RUN_SECTIONS, RunConfig


def preset_names() -> list[str]:
    folder = resources.files("diffscape") / "presets"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset by name (shipped TOML) or path to a TOML file, as nested plain data."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        try:
            return tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    res = resources.files("diffscape") / "presets" / f"{name_or_path}.toml"
    if not res.is_file():
        raise ConfigError(
            f"unknown preset {name_or_path!r}; choose one of {', '.join(preset_names())} "
            "or give a path to a .toml file"
        )
    data = tomllib.loads(res.read_text())
    data.setdefault("preset", name_or_path)
    return data


def from_dict(data: Any) -> RunConfig:
    """A validated RunConfig from nested plain data (a preset or config.json); a table
    without ``preset`` is recorded as ``custom``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a table of sections, got {type(data).__name__}")
    return RunConfig.parse({"preset": "custom", **data})


def load_config_json(path: Path) -> RunConfig:
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a valid config.json ({e})") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def split_key(key: str) -> tuple[str, str]:
    """``"train.lr"`` -> ``("train", "lr")``, the section one of a run's config."""
    section, _, name = key.strip().partition(".")
    if section not in RUN_SECTIONS or not name or "." in name:
        raise ConfigError(
            f"{key!r} is not a setting; the key must be one of "
            f"{', '.join(s + '.<name>' for s in RUN_SECTIONS)}, e.g. train.lr"
        )
    return section, name


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value parsed from text: ``none``, numbers,
    ``true``/``false``, ``[16, 32]``, else the text)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        section, name = split_key(key)
    except ConfigError as e:
        raise ConfigError(f"override {text!r}: {e}") from None
    return section, name, parse_text(raw)


def resolve(
    preset: str = "tiny",
    overrides: Iterable[str] | Mapping[str, Any] = (),
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """defaults <- preset (or ``base`` data) <- overrides, validated. Overrides are
    ``section.key=value`` texts (the CLI's ``--set``) or a mapping ``{"train.lr": 1e-4}`` with
    values as TOML would give them (a sweep file's dotted keys)."""
    data = base if base is not None else load_preset(preset)
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if isinstance(overrides, Mapping):
        parsed = [(*split_key(k), v) for k, v in overrides.items()]
    else:
        parsed = [parse_override(text) for text in overrides]
    for section, name, value in parsed:
        part = data.setdefault(section, {})
        if not isinstance(part, dict):
            raise ConfigError(f"{section}: expected a table of settings")
        part[name] = value
    return from_dict(data)


# Settings that fix the shapes of saved tensors: a resumed run may not change them.
SHAPE_FIELDS = (
    "model.image_size",
    "model.channels",
    "model.layers_per_block",
    "model.attention_resolutions",
    "model.attention_head_dim",
    "model.norm_groups",
    "model.conditional",
    "model.num_classes",
)


def get_field(cfg: RunConfig, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def shape_changes(old: RunConfig, new: RunConfig) -> list[str]:
    """The shape-defining fields that differ, as ``field: old -> new`` lines."""
    return [
        f"{f}: {get_field(old, f)!r} -> {get_field(new, f)!r}"
        for f in SHAPE_FIELDS
        if get_field(old, f) != get_field(new, f)
    ]


def diff(base: RunConfig, other: RunConfig) -> dict[str, Any]:
    """Dotted fields of ``other`` that differ from ``base`` (for sweep tables)."""
    return {
        f"{section}.{name}": getattr(getattr(other, section), name)
        for section, cls in RUN_SECTIONS.items()
        for name in cls.model_fields
        if getattr(getattr(base, section), name) != getattr(getattr(other, section), name)
    }
