"""One typed, frozen configuration per run: presets (TOML diffs), dotted overrides, validation.

``RunConfig`` nests ``ModelConfig``, ``DiffusionConfig`` and ``TrainConfig``. A run resolves
``defaults <- preset TOML <- --set overrides`` once, validates it, and writes it as
``config.json`` into the run folder and every checkpoint; sampling rebuilds the network from
that file alone.

This module is the one settings engine of the package. ``SampleSettings``, ``EvaluateSettings``
and ``JudgeSettings`` (a sweep's ``[sample]``, ``[evaluate]`` and ``[judge]``) are parsed by the
same :func:`parse_section`. Every field is declared with :func:`setting`, which keeps its one-line
help and its bounds in the field's metadata; that table checks values (one function,
``_coerce``), is printed by :func:`describe_settings` for ``--help``, builds argparse options in
:func:`add_setting_arguments`, and generates ``docs/settings.md``
(``python -m diffscape.config > docs/settings.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from diffscape.core.errors import DiffscapeError

Activation = Literal["silu", "relu", "gelu", "mish"]
Schedule = Literal["linear", "cosine", "sigmoid"]
Prediction = Literal["epsilon", "v_prediction"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# ddpm: ancestral, all T steps; ddim; dpm: DPM-Solver++ (2M). diffusion.py builds them.
Sampler = Literal["ddpm", "ddim", "dpm", "dpm3", "dpm-karras", "unipc", "heun"]
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)

MANY = 10**9  # upper bound of step counts and cadences: far beyond any run, far below overflow
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


class ConfigError(DiffscapeError, ValueError):
    """A bad preset, override or value; the message names the field."""


def setting(
    default: Any,
    help: str,  # the word argparse and dataclass metadata use
    *,
    lo: float | None = None,
    hi: float | None = None,
    above: float | None = None,
    below: float | None = None,
    count: tuple[int, int] | None = None,
) -> Any:
    """A dataclass field with its row of the settings table: a one-line help, inclusive bounds
    ``lo``/``hi``, exclusive bounds ``above``/``below`` (for a list: of each item) and
    ``count`` = (fewest, most) items of a list. Floats must also be finite."""
    meta = {"help": help, "lo": lo, "hi": hi, "above": above, "below": below, "count": count}
    return field(default=default, metadata=meta)


# ---- the field table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = setting(
        32, "pixels per side; a multiple of 8 and of 2**(levels-1)", lo=8, hi=512
    )
    channels: tuple[int, ...] = setting(
        (32, 64, 64), "UNet width per resolution level", lo=1, hi=2048, count=(1, 6)
    )
    layers_per_block: int = setting(
        1, "ResNet blocks per level (the up path has one more)", lo=1, hi=16
    )
    attention_resolutions: tuple[int, ...] = setting(
        (8,), "pixel sizes whose blocks get self-attention", lo=1, hi=512, count=(0, 6)
    )
    attention_head_dim: int = setting(32, "channels per attention head", lo=1, hi=2048)
    activation: Activation = setting(
        "silu", "every nonlinearity, time MLP and output head included"
    )
    dropout: float = setting(0.0, "dropout inside ResNet blocks", lo=0, below=1)
    norm_groups: int = setting(8, "GroupNorm groups; must divide every width", lo=1, hi=2048)
    conditional: bool = setting(False, "class-conditional (classifier-free guidance) or not")
    num_classes: int = setting(
        0, "set from the dataset when conditional; the 'no class' token is extra", lo=0, hi=10_000
    )


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: Schedule = setting("linear", "beta schedule")
    timesteps: int = setting(1000, "T, number of noise levels", lo=2, hi=10_000)
    rescale_linear: bool = setting(
        True, "linear betas 1e-4..0.02 scaled by 1000/T (same end noise)"
    )
    beta_start: float = setting(1e-4, "linear schedule's first beta, at T=1000", above=0, below=1)
    beta_end: float = setting(0.02, "linear schedule's last beta, at T=1000", above=0, below=1)
    prediction: Prediction = setting("epsilon", "what the network predicts: noise or v")
    loss_weighting: Literal["none", "min_snr"] = setting("none", "per-timestep loss weight")
    min_snr_gamma: float = setting(
        5.0, "min-SNR-gamma clamp (Hang et al. 2023), when used", above=0, hi=1000
    )


@dataclass(frozen=True)
class TrainConfig:
    steps: int = setting(2000, "optimizer steps in total", lo=1, hi=MANY)
    # At this many minutes the step in progress finishes, a checkpoint is saved and training
    # ends (exit 0, logged as ended by the budget).
    minutes: float = setting(0.0, "wall-clock budget in minutes, 0 = none", lo=0)
    batch_size: int = setting(32, "images per step, summed over processes", lo=1, hi=65_536)
    lr: float = setting(2e-4, "peak AdamW learning rate", above=0, hi=1)
    warmup_steps: int = setting(100, "linear LR warm-up from 0, in steps", lo=0, hi=MANY)
    lr_schedule: Literal["constant", "cosine"] = setting("constant", "LR after warm-up")
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay", lo=0, hi=10)
    grad_clip: float = setting(1.0, "clip the gradient at this global norm, 0 = off", lo=0)
    ema_decay: float = setting(
        0.999, "EMA of weights per step; 0 = no EMA (EMA = model)", lo=0, below=1
    )
    ema_warmup: bool = setting(True, "EMA decay min(ema_decay, (1+step)/(10+step)) early on")
    label_dropout: float = setting(
        0.1, "per-sample chance to drop the class (conditional only)", lo=0, below=1
    )
    hflip: bool = setting(True, "random horizontal flips, on the fly")
    # fp16 only on GPU (with loss scaling); auto: bf16 on a CPU with native bf16
    # (AMX/AVX512-BF16; 1.6-2.1x here), else fp32 (incl. CUDA: faster at 32 px on an H100)
    precision: Precision = setting(
        "fp32", "autocast dtype; auto: bf16 on CPUs with native bf16, else fp32"
    )
    channels_last: bool = setting(False, "NHWC memory format for convolutions")
    compile: bool = setting(False, "torch.compile the UNet")
    # The whole uint8 split on the training device, gathered there each step with the step's
    # draws on a device generator: no host work or copies per step (issue 17).
    data_on_device: Literal["auto", "on", "off"] = setting(
        "auto", "hold the split on the device; auto: on CUDA when <= 25% of free GPU memory"
    )
    seed: int = setting(0, "seeds weights, data order, noise and dropout", lo=0, hi=SEED_MAX)
    log_every_steps: int = setting(
        25, "metrics.jsonl cadence: a line per this many steps", lo=1, hi=MANY
    )
    checkpoint_every_steps: int = setting(
        500, "checkpoint cadence; 0 = only at the end", lo=0, hi=MANY
    )
    keep_last: int = setting(2, "complete checkpoints kept, older ones deleted", lo=1, hi=10_000)
    milestone_every_steps: int = setting(
        0, "also keep every checkpoint at multiples of this, 0 = none", lo=0, hi=MANY
    )
    sample_every_steps: int = setting(
        500, "EMA sample grid of every class, 0 = never", lo=0, hi=MANY
    )
    sample_steps: int = setting(25, "DDIM steps for those grids", lo=1, hi=10_000)
    max_bad_steps: int = setting(5, "stop after this many non-finite steps in a row", lo=1, hi=MANY)


@dataclass(frozen=True)
class SampleSettings:
    n: int = setting(50, "images per class (conditional models) or in total", lo=1, hi=1_000_000)
    sampler: Sampler = setting(
        "ddim",
        "ddpm: ancestral, all T steps; ddim; dpm: DPM-Solver++ 2M; dpm3: 3M; dpm-karras: 2M on "
        "Karras sigmas; unipc: UniPC (bh2); heun: Heun, 2 network calls per step",
    )
    steps: int = setting(50, "sampler steps; ddpm ignores it and takes all T", lo=1, hi=10_000)
    guidance: float = setting(
        1.0, "classifier-free guidance w: 0 uncond, 1 cond, >1 guided", lo=0, hi=100
    )
    eta: float = setting(0.0, "DDIM noise (0 = deterministic)", lo=0, hi=1)
    seed: int = setting(0, "image i of class c depends only on (seed, c, i)", lo=0, hi=SEED_MAX)
    batch: int | None = setting(
        None,
        "images denoised together (memory only: the images do not change); none: 64 on a CPU, 256 on a GPU",
        lo=1,
        hi=4096,
    )


@dataclass(frozen=True)
class EvaluateSettings:
    enabled: bool = setting(True, "FID/KID of every sampling (Inception: a few images/s on a CPU)")
    n: int | None = setting(
        None,
        "generated images used (FID/KID need 2); none: all that were made",
        lo=2,
        hi=10_000_000,
    )
    n_real: int | None = setting(
        None, "real images; none: same as n (the whole split when n is none)", lo=2, hi=10_000_000
    )
    split: str = setting("train", "the real split generated images are compared with")
    floor: bool = setting(True, "also score the test split against it once: the real-vs-real floor")
    resize: Literal["tf1", "torch"] = setting(
        "tf1", "Inception's resize: tf1 (torch-fidelity, published FIDs) or torch (torchmetrics)"
    )
    bootstrap: int = setting(
        0, "FID bootstrap resamples for a within-run interval, 0 = none", lo=0, hi=10_000
    )
    fid64: bool = setting(True, "also FID on 64-d features of 150 vs 150 images (seed report)")
    memorisation: bool = setting(True, "nearest training image of every generated one; near-copies")
    near_copy: float = setting(
        0.5, "flag a near-copy below this ratio to the train-to-train distance", above=0, hi=10
    )


@dataclass(frozen=True)
class JudgeSettings:
    enabled: bool = setting(True, "per-class accuracy of conditional samples")
    kind: Literal["cnn", "svc"] = setting("cnn", "judge trained once per sweep into RUNS/_judge")
    path: str | None = setting(
        None, "an already trained judge folder instead (relative to the file)"
    )
    also: tuple[Literal["cnn", "svc"], ...] = setting(
        (), "more judges, trained once per study, a column each (svc: the seed's)", count=(0, 2)
    )


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "tiny"  # the preset this was resolved from (for the record)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: Path) -> None:
        from diffscape.core.atomic import write_text

        write_text(path, self.to_json())


# A run's config (config.json), then every section the engine parses.
SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}
ALL_SECTIONS = {
    **SECTIONS,
    "sample": SampleSettings,
    "evaluate": EvaluateSettings,
    "judge": JudgeSettings,
}


@dataclass(frozen=True)
class Row:
    """One field of the settings table."""

    key: str  # dotted, e.g. train.lr
    hint: Any  # the type annotation, resolved
    default: Any
    meta: Mapping[str, Any]  # help, lo, hi, above, below, count

    @property
    def help(self) -> str:
        return self.meta.get("help", "")


@functools.cache
def table(section: str) -> tuple[Row, ...]:
    """The rows of one section of :data:`ALL_SECTIONS`, in declaration order."""
    cls = _section_class(section)
    hints = typing.get_type_hints(cls)
    return tuple(
        Row(f"{section}.{f.name}", hints[f.name], f.default, f.metadata)
        for f in dataclasses.fields(cls)
    )


def _section_class(section: str) -> type:
    if section not in ALL_SECTIONS:
        raise ConfigError(f"unknown settings section {section!r}; known: {', '.join(ALL_SECTIONS)}")
    return ALL_SECTIONS[section]


# ---- values: one coercion and bounds check for every section -----------------------------------


def _number_text(value: float) -> str:
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:_}"
    return format(value, "g") if isinstance(value, float) else str(value)


def bounds_text(meta: Mapping[str, Any]) -> str:
    """``at least 8, at most 512``; empty when the field has no bounds."""
    words = (("lo", "at least"), ("above", "above"), ("hi", "at most"), ("below", "below"))
    parts = [f"{w} {_number_text(meta[k])}" for k, w in words if meta.get(k) is not None]
    if not meta.get("count"):
        return ", ".join(parts)
    fewest, most = meta["count"]
    return f"{fewest} to {most} items" + (", each " + ", ".join(parts) if parts else "")


def _check_bounds(name: str, value: float, meta: Mapping[str, Any]) -> None:
    lo, hi, above, below = (meta.get(k) for k in ("lo", "hi", "above", "below"))
    if (
        (lo is not None and value < lo)
        or (hi is not None and value > hi)
        or (above is not None and value <= above)
        or (below is not None and value >= below)
    ):
        shown = {k: meta.get(k) for k in ("lo", "hi", "above", "below")}
        raise ConfigError(
            f"{name}: {_number_text(value)} is out of range; must be {bounds_text(shown)}"
        )


def _integer(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            pass
    if not isinstance(value, bool):
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            as_float = math.nan
        if math.isfinite(as_float) and as_float.is_integer():
            return int(as_float)
    raise ConfigError(f"{name}: expected an integer, got {value!r}")


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name}: {value!r} is not a finite number")
    return number


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _coerce(name: str, value: Any, hint: Any, meta: Mapping[str, Any] | None = None) -> Any:
    """A TOML/JSON/CLI value -> the field's type within the field's bounds, or raise naming the
    field. Strings are accepted where a CLI gives them (``"1e-4"``, ``"true"``, ``"16,32"``)."""
    meta = meta or {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (types.UnionType, typing.Union) and type(None) in args:  # X | None
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, hint, meta)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        fewest, most = meta.get("count") or (0, math.inf)
        if not fewest <= len(value) <= most:
            raise ConfigError(f"{name}: {len(value)} items; give {fewest} to {most}")
        return tuple(_coerce(name, v, args[0], meta) for v in value)
    if hint is bool:
        return _boolean(name, value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if hint not in (int, float):
        raise AssertionError(f"unhandled type {hint} for {name}")  # internal: a new field type
    number = _integer(name, value) if hint is int else _real(name, value)
    _check_bounds(name, number, meta)
    return number


def parse_section(section: str, values: Mapping[str, Any]) -> Any:
    """One section's dataclass from plain data (a TOML table, a JSON object, parsed overrides):
    unknown keys, wrong types and values out of bounds raise a ConfigError naming the key."""
    cls, rows = _section_class(section), table(section)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a table of settings, got {values!r}")
    names = {r.key.partition(".")[2]: r for r in rows}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"{section}.{unknown[0]}: unknown key {', '.join(unknown)}; known: {', '.join(names)}"
        )
    kwargs = {k: _coerce(names[k].key, v, names[k].hint, names[k].meta) for k, v in values.items()}
    return cls(**kwargs)


def check_settings(obj: Any) -> Any:
    """Re-check a settings dataclass built directly (``SampleSettings(n=0)``): returns it, or
    raises the ConfigError that parsing the same values would."""
    (section,) = [s for s, cls in ALL_SECTIONS.items() if isinstance(obj, cls)]
    return parse_section(section, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from nested plain data (a preset or config.json)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a table of sections, got {type(data).__name__}")
    unknown = set(data) - set(SECTIONS) - {"preset"}
    if unknown:
        raise ConfigError(
            f"unknown config section {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}"
        )
    parts = {name: parse_section(name, data.get(name, {})) for name in SECTIONS}
    cfg = RunConfig(**parts, preset=str(data.get("preset", "custom")))
    validate(cfg)
    return cfg


def load_config_json(path: Path) -> RunConfig:
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a valid config.json ({e})") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# ---- presets and dotted overrides ---------------------------------------------------------------


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
    folder = resources.files("diffscape") / "presets"
    res = folder / f"{name_or_path}.toml"
    if not res.is_file():
        raise ConfigError(
            f"unknown preset {name_or_path!r}; choose one of {', '.join(preset_names())} "
            "or give a path to a .toml file"
        )
    data = tomllib.loads(res.read_text())
    data.setdefault("preset", name_or_path)
    return data


def split_key(key: str, sections: Iterable[str] = SECTIONS) -> tuple[str, str]:
    """``"train.lr"`` -> ``("train", "lr")``, the section checked against ``sections``."""
    section, _, name = key.strip().partition(".")
    if section not in sections or not name or "." in name:
        raise ConfigError(
            f"{key!r} is not a setting; the key must be one of "
            f"{', '.join(s + '.<name>' for s in sections)}, e.g. train.lr"
        )
    return section, name


def parse_override(text: str, sections: Iterable[str] = SECTIONS) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, raw value). TOML syntax for values is accepted
    (``model.channels=[32,64]``); anything TOML cannot parse is kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        section, name = split_key(key, sections)
    except ConfigError as e:
        raise ConfigError(f"override {text!r}: {e}") from None
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, name, value


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


def with_changes(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with some fields of some sections replaced, validated."""
    data = cfg.to_dict()
    for name, values in sections.items():
        data[name].update(values)
    return from_dict(data)


def validate(cfg: RunConfig) -> None:
    """Checks across fields (each field's own bounds were checked when it was parsed); each
    error names the field and says what would work."""
    m, d = cfg.model, cfg.diffusion
    levels = len(m.channels)
    if m.image_size % 8:
        raise ConfigError(f"model.image_size: {m.image_size} must be a multiple of 8")
    if m.image_size % (2 ** (levels - 1)):
        raise ConfigError(
            f"model.image_size: {m.image_size} cannot be halved {levels - 1} times for "
            f"{levels} levels in model.channels"
        )
    bad = [c for c in m.channels if c % m.norm_groups]
    if bad:
        raise ConfigError(f"model.norm_groups: {m.norm_groups} does not divide widths {bad}")
    sizes = {m.image_size // 2**i for i in range(levels)}
    stray = [r for r in m.attention_resolutions if r not in sizes]
    if stray:
        raise ConfigError(
            f"model.attention_resolutions: {stray} are not resolutions of this UNet "
            f"({sorted(sizes, reverse=True)})"
        )
    if m.num_classes and not m.conditional:
        raise ConfigError("model.num_classes: only set (>= 1) for conditional models")
    if not d.beta_start < d.beta_end:
        raise ConfigError("diffusion.beta_start/beta_end: need 0 < start < end < 1")


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
    out = {}
    for section in SECTIONS:
        a, b = getattr(base, section), getattr(other, section)
        for f in dataclasses.fields(a):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if va != vb:
                out[f"{section}.{f.name}"] = vb
    return out


# ---- the table rendered: --help text, argparse options, docs/settings.md -----------------------


def type_text(hint: Any) -> str:
    """``int``, ``list of int``, ``int or none``, ``one of silu, relu, ...``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return f"list of {type_text(args[0])}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join("none" if a is type(None) else type_text(a) for a in args)
    return getattr(hint, "__name__", str(hint))


def value_text(value: Any) -> str:
    """A value as one would type it after ``--set key=`` (TOML-like)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, int | float):
        return _number_text(value)
    return str(value)


def describe_settings(*sections: str) -> str:
    """Every dotted key of ``sections`` (all when none given), one per line:
    ``key=default  help (type; bounds)``; for a ``--help`` epilog."""
    lines = []
    for section in sections or tuple(ALL_SECTIONS):
        for row in table(section):
            about = "; ".join(filter(None, [type_text(row.hint), bounds_text(row.meta)]))
            lines.append(f"  {row.key}={value_text(row.default)}  {row.help} ({about})")
    return "\n".join(lines)


def settings_markdown() -> str:
    """docs/settings.md: a table per section, generated from the field table."""
    out = [
        "# Settings",
        "",
        "Generated from the field table in `src/diffscape/config.py` by",
        "`python -m diffscape.config > docs/settings.md`; do not edit by hand.",
        "",
        "`model.*`, `diffusion.*` and `train.*` are a run's config (`diffscape train --set",
        "section.key=value`, presets, a sweep's `[base]`/`[grid]`/`[[runs]]`), saved as",
        "`config.json`. `sample.*`, `evaluate.*` and `judge.*` are a sweep file's `[sample]`,",
        "`[evaluate]` and `[judge]` tables. Floats must be finite.",
    ]
    for section in ALL_SECTIONS:
        out += ["", f"## {section}", "", "| key | type | default | bounds | meaning |"]
        out.append("|---|---|---|---|---|")
        for row in table(section):
            cells = [
                f"`{row.key}`",
                type_text(row.hint),
                f"`{value_text(row.default)}`",
                bounds_text(row.meta),
                row.help,
            ]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


def _argument_type(row: Row) -> Any:
    def parse(text: str) -> Any:
        try:
            return _coerce(row.key, text, row.hint, row.meta)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = type_text(row.hint)
    return parse


def add_setting_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    section: str,
    names: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """``--name`` options for some fields of a section, typed, bounded and described by the
    field table (``defaults`` replaces a field's default for this command). The values are
    parsed by the same engine as ``--set`` and sweep files; ``dest`` is the field name."""
    rows = {r.key.partition(".")[2]: r for r in table(section)}
    defaults = defaults or {}
    for name in names:
        if name not in rows:
            raise KeyError(f"{section}.{name} is not a setting")  # internal: a caller's typo
        row = rows[name]
        default = defaults.get(name, row.default)
        about = bounds_text(row.meta)
        help_text = f"{row.help}{f' ({about})' if about else ''}; default: %(default)s"
        flag = "--" + name.replace("_", "-")
        if row.hint is bool:
            parser.add_argument(
                flag,
                dest=name,
                default=default,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
            continue
        choices = typing.get_args(row.hint) if typing.get_origin(row.hint) is Literal else None
        parser.add_argument(
            flag,
            dest=name,
            default=default,
            choices=choices,
            help=help_text,
            type=_argument_type(row),
            metavar=None if choices else name.upper(),
        )


if __name__ == "__main__":
    sys.stdout.write(settings_markdown())
