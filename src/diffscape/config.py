"""One typed, frozen configuration per run: presets (TOML diffs), dotted overrides, validation.

``RunConfig`` nests ``ModelConfig``, ``DiffusionConfig`` and ``TrainConfig``. A run resolves
``defaults <- preset TOML <- --set overrides`` once, validates it, and writes it as
``config.json`` into the run folder and every checkpoint; sampling rebuilds the network from
that file alone.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from diffscape.errors import DiffscapeError

Activation = Literal["silu", "relu", "gelu", "mish"]
Schedule = Literal["linear", "cosine", "sigmoid"]
Prediction = Literal["epsilon", "v_prediction"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ConfigError(DiffscapeError, ValueError):
    """A bad preset, override or value; the message names the field."""


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 32  # pixels per side; a multiple of 2**(levels-1) and of 8
    channels: tuple[int, ...] = (32, 64, 64)  # UNet width per resolution level
    layers_per_block: int = 1  # ResNet blocks per level (down path; up path has one more)
    attention_resolutions: tuple[int, ...] = (8,)  # pixel sizes whose blocks get self-attention
    attention_head_dim: int = 32  # channels per attention head
    activation: Activation = "silu"  # every nonlinearity, time MLP and output head included
    dropout: float = 0.0  # dropout inside ResNet blocks
    norm_groups: int = 8  # GroupNorm groups; must divide every width
    conditional: bool = False  # class-conditional (classifier-free guidance) or not
    num_classes: int = 0  # set from the dataset when conditional; the "no class" token is extra


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: Schedule = "linear"  # beta schedule
    timesteps: int = 1000  # T, number of noise levels
    rescale_linear: bool = True  # linear betas 1e-4..0.02 scaled by 1000/T (same end noise)
    beta_start: float = 1e-4  # linear schedule, at T=1000
    beta_end: float = 0.02  # linear schedule, at T=1000
    prediction: Prediction = "epsilon"  # what the network predicts: noise or v
    loss_weighting: Literal["none", "min_snr"] = "none"  # per-timestep loss weight
    min_snr_gamma: float = 5.0  # min-SNR-gamma clamp (Hang et al. 2023), when used


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimizer steps in total
    # wall-clock budget: at this many minutes the step in progress finishes, a checkpoint is
    # saved and training ends (exit 0, logged as ended by the budget); 0 = no budget
    minutes: float = 0.0
    batch_size: int = 32  # images per step, summed over processes
    lr: float = 2e-4  # peak AdamW learning rate
    warmup_steps: int = 100  # linear LR warm-up from 0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # clip the gradient at this global norm, 0 = off
    ema_decay: float = 0.999  # EMA of weights per step; 0 = no EMA (EMA = model)
    ema_warmup: bool = True  # decay min(ema_decay, (1+step)/(10+step)) early on
    label_dropout: float = 0.1  # per-sample chance to drop the class (conditional only)
    hflip: bool = True  # random horizontal flips, on the fly
    # autocast dtype; fp16 only on GPU (with loss scaling); auto: bf16 on a CPU with native bf16
    # (AMX/AVX512-BF16; 1.6-2.1x here), else fp32 (incl. CUDA: faster at 32 px on an H100)
    precision: Precision = "fp32"
    channels_last: bool = False  # NHWC memory format for convolutions
    compile: bool = False  # torch.compile the UNet
    seed: int = 0  # seeds weights, data order, noise and dropout
    log_every_steps: int = 25  # metrics.jsonl cadence (also the only host sync points)
    checkpoint_every_steps: int = 500  # 0 = only at the end
    keep_last: int = 2  # complete checkpoints kept, older ones deleted
    milestone_every_steps: int = 0  # also keep every checkpoint at multiples of this, 0 = none
    sample_every_steps: int = 500  # EMA sample grid of every class, 0 = never
    sample_steps: int = 25  # DDIM steps for those grids
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row


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
        Path(path).write_text(self.to_json())


SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a TOML/JSON/CLI value to the field's type, or raise naming the field."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(name, v, item) for v in value)
    if hint is bool:
        if isinstance(value, str):
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(as_float)
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if hint is str:
        return str(value)
    raise AssertionError(f"unhandled type {hint} for {name}")  # internal: a new field type


def _section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        names = ", ".join(f"{prefix}.{k}" for k in sorted(unknown))
        raise ConfigError(f"unknown setting {names}; known: {', '.join(sorted(hints))}")
    kwargs = {k: _coerce(f"{prefix}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from nested plain data (a preset or config.json)."""
    unknown = set(data) - set(SECTIONS) - {"preset"}
    if unknown:
        raise ConfigError(
            f"unknown config section {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}"
        )
    parts = {}
    for name, cls in SECTIONS.items():
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: expected a table of settings")
        parts[name] = _section(cls, section, name)
    cfg = RunConfig(**parts, preset=str(data.get("preset", "custom")))
    validate(cfg)
    return cfg


def load_config_json(path: Path) -> RunConfig:
    return from_dict(json.loads(Path(path).read_text()))


def preset_names() -> list[str]:
    folder = resources.files("diffscape") / "presets"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset by name (shipped TOML) or path to a TOML file, as nested plain data."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return tomllib.loads(path.read_text())
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


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, raw value). TOML syntax for values is accepted
    (``model.channels=[32,64]``); anything TOML cannot parse is kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    section, _, name = key.strip().partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(
            f"override {text!r}: the key must be one of "
            f"{', '.join(s + '.<name>' for s in SECTIONS)}"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, name, value


def resolve(
    preset: str = "tiny",
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """defaults <- preset (or ``base`` data) <- overrides, validated."""
    data = base if base is not None else load_preset(preset)
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        section, name, value = parse_override(text)
        data.setdefault(section, {})[name] = value
    return from_dict(data)


def with_changes(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with some fields of some sections replaced, validated."""
    data = cfg.to_dict()
    for name, values in sections.items():
        data[name].update(values)
    return from_dict(data)


def validate(cfg: RunConfig) -> None:
    """Checks across fields; each error names the field and says what would work."""
    m, d, t = cfg.model, cfg.diffusion, cfg.train
    levels = len(m.channels)
    if levels < 1 or any(c <= 0 for c in m.channels):
        raise ConfigError("model.channels: give one positive width per level, e.g. [32, 64, 64]")
    if m.image_size < 8 or m.image_size % 8:
        raise ConfigError(f"model.image_size: {m.image_size} must be a multiple of 8 (>= 8)")
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
    if m.layers_per_block < 1:
        raise ConfigError("model.layers_per_block: must be >= 1")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError("model.dropout: must be in [0, 1)")
    if m.num_classes < 0 or (m.num_classes and not m.conditional):
        raise ConfigError("model.num_classes: only set (>= 1) for conditional models")
    if d.timesteps < 2:
        raise ConfigError("diffusion.timesteps: must be >= 2")
    if not 0 < d.beta_start < d.beta_end < 1:
        raise ConfigError("diffusion.beta_start/beta_end: need 0 < start < end < 1")
    if t.steps < 1:
        raise ConfigError("train.steps: must be >= 1")
    if t.batch_size < 1:
        raise ConfigError("train.batch_size: must be >= 1")
    if t.lr <= 0:
        raise ConfigError("train.lr: must be > 0")
    if t.warmup_steps < 0:
        raise ConfigError("train.warmup_steps: must be >= 0")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError("train.ema_decay: must be in [0, 1)")
    if not 0.0 <= t.label_dropout < 1.0:
        raise ConfigError("train.label_dropout: must be in [0, 1)")
    if t.grad_clip < 0:
        raise ConfigError("train.grad_clip: must be >= 0 (0 = off)")
    for name in ("log_every_steps",):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name}: must be >= 1")
    for name in ("checkpoint_every_steps", "sample_every_steps", "milestone_every_steps"):
        if getattr(t, name) < 0:
            raise ConfigError(f"train.{name}: must be >= 0 (0 = off)")
    if t.keep_last < 1:
        raise ConfigError("train.keep_last: must be >= 1")
    if t.max_bad_steps < 1:
        raise ConfigError("train.max_bad_steps: must be >= 1")


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
