"""The network: a diffusers ``UNet2DModel`` built from ``ModelConfig``, with its activation
reaching every nonlinearity.

diffusers' ``act_fn`` only reaches the ResNet blocks: ``UNet2DModel`` hard-codes SiLU in the
time-embedding MLP (``TimestepEmbedding``'s default) and the output head (``conv_act``). A study of
activations must change all of them, so after building we swap every activation module for the
chosen one. The swap is a pure function of the saved ``act_fn``, so :func:`load_unet` (and any
user, in two lines) rebuilds exactly the trained network from a diffusers folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.models.activations import ACT2CLS, get_activation
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from diffscape.core.atomic import plain
from diffscape.core.errors import DiffscapeError
from diffscape.core.layout import COMPLETE, CONFIG_JSON, UNET_WEIGHTS
from diffscape.data.memory import available_bytes
from diffscape.settings.engine import ConfigError
from diffscape.settings.presets import from_dict, load_config_json
from diffscape.settings.sections import ModelConfig

_ACTIVATION_TYPES = tuple(set(ACT2CLS.values()))  # diffusers' own: SiLU, ReLU, GELU, Mish


def null_class(cfg: ModelConfig) -> int:
    """Index of the "no class" token of classifier-free guidance: the last class embedding."""
    return cfg.num_classes


class ModelTooLarge(DiffscapeError):
    """The network would not fit in this machine's memory."""


class ModelFolderError(DiffscapeError):
    """A diffusers model folder that diffscape did not write or cannot trust."""


def unet_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` arguments for this config (diffusers' defaults for the rest)."""
    if cfg.conditional and cfg.num_classes < 1:
        raise ConfigError("model.num_classes must be set (>= 1) for a conditional model")
    levels = len(cfg.channels)
    sizes = [cfg.image_size // 2**i for i in range(levels)]
    attn = set(cfg.attention_resolutions)
    return {
        "sample_size": cfg.image_size,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": tuple(cfg.channels),
        "layers_per_block": cfg.layers_per_block,
        "down_block_types": tuple("AttnDownBlock2D" if s in attn else "DownBlock2D" for s in sizes),
        "up_block_types": tuple(
            "AttnUpBlock2D" if s in attn else "UpBlock2D" for s in reversed(sizes)
        ),
        "attention_head_dim": cfg.attention_head_dim,
        "norm_num_groups": cfg.norm_groups,
        "act_fn": cfg.activation,
        "dropout": cfg.dropout,
        "num_class_embeds": cfg.num_classes + 1 if cfg.conditional else None,  # + "no class"
    }


def build_unet(cfg: ModelConfig) -> UNet2DModel:
    """A freshly initialised UNet for this config (weights drawn from torch's global RNG:
    seed it first). Refused in one line if training it would not fit in memory."""
    check_memory(cfg, training=True)
    unet = UNet2DModel(**unet_kwargs(cfg))
    return set_attention_processor(apply_activation(unet, cfg.activation), CpuAutocastFp32Attention)


# --- memory ------------------------------------------------------------------------------------

# Bytes per parameter: training holds fp32 weights, the EMA copy, gradients and AdamW's two
# moments (5 x 4); loading holds the weights and the file's tensors being copied in (2 x 4).
TRAIN_BYTES_PER_PARAMETER = 20
LOAD_BYTES_PER_PARAMETER = 8
_GIB = 2**30


def _meta_unet(cfg: ModelConfig) -> UNet2DModel:
    """The network on torch's meta device: shapes and config, no memory for the weights."""
    with torch.device("meta"):
        return UNet2DModel(**unet_kwargs(cfg))


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of ``build_unet(cfg)``, counted without allocating them (about 20 ms)."""
    return count_parameters(_meta_unet(cfg))


def activation_bytes(cfg: ModelConfig, *, training: bool) -> int:
    """A rough lower bound on the fp32 feature maps of one image: a forward pass keeps every
    level's skip connections plus a few working maps; training keeps about four maps per ResNet
    block (norm, activation, two convolutions) on both paths for the backward pass."""
    total = 0
    for i, width in enumerate(cfg.channels):
        pixels = (cfg.image_size // 2**i) ** 2
        maps = 4 * (2 * cfg.layers_per_block + 1) if training else cfg.layers_per_block + 2
        total += maps * pixels * width
    return 4 * total


def estimate_memory_bytes(cfg: ModelConfig, *, training: bool = False) -> int:
    """About how much memory the network needs: parameters times the bytes each costs (see
    above) plus one image's feature maps. A lower bound: frameworks add their own."""
    per_parameter = TRAIN_BYTES_PER_PARAMETER if training else LOAD_BYTES_PER_PARAMETER
    return parameter_count(cfg) * per_parameter + activation_bytes(cfg, training=training)


def check_memory(cfg: ModelConfig, *, training: bool) -> None:
    """Refuse (ModelTooLarge, one line) a network that would not fit in available memory."""
    need = estimate_memory_bytes(cfg, training=training)
    have = available_bytes()
    if have is not None and need > have:
        raise ModelTooLarge(
            f"model of {parameter_count(cfg):,} parameters needs about {need / _GIB:.1f} GiB "
            f"({'training' if training else 'loading'}, batch 1), this machine has "
            f"{have / _GIB:.1f} GiB available; use smaller model.channels, model.image_size, "
            "model.layers_per_block or fewer classes"
        )


def apply_activation(module: nn.Module, name: str) -> nn.Module:
    """Replace every activation submodule (SiLU, ReLU, GELU, Mish) with ``name``, in place.

    ResNet blocks hold theirs as ``.nonlinearity``; the time MLP as ``.act``; the head as
    ``.conv_act`` — all are modules, so one walk over children covers them. An unknown ``name``
    is diffusers' ValueError.
    """
    cls = type(get_activation(name))
    for parent in module.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, _ACTIVATION_TYPES) and type(child) is not cls:
                setattr(parent, child_name, cls())
    return module


class CpuAutocastFp32Attention(AttnProcessor2_0):
    """diffusers' SDPA attention, run in fp32 while CPU autocast is on; unchanged elsewhere.

    torch's CPU flash-attention kernel is about 5x slower in bf16 than in fp32 at this UNet's
    shapes (64 tokens, 32-channel heads: 25.6 vs 5.0 ms fwd+bwd, one thread), about 7% of a bf16
    training step of the small preset (bench/bench.py, docs/benchmarks.md). The projections
    around it are small, so the whole block runs in fp32 (more exact too) and its output goes
    back to the input's dtype, so the rest of the network sees what diffusers' processor gives.
    On CUDA, bf16 SDPA is fast and this processor is diffusers' own. It is not saved: a
    diffusers folder loads with diffusers' default processor and computes the same thing.
    """

    # diffusers passes only the keyword arguments named in this signature: keep its names.
    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        if hidden_states.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                out = super().__call__(
                    attn, hidden_states.float(), encoder_hidden_states, attention_mask, temb
                )
            return out.to(hidden_states.dtype)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def set_attention_processor(
    unet: nn.Module, make: Callable[[], AttnProcessor2_0] = AttnProcessor2_0
) -> nn.Module:
    """Give every attention block a processor from ``make()``, in place (diffusers' own by
    default)."""
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(make())
    return unet


def load_unet(path: str | Path, dtype: torch.dtype | None = None) -> UNet2DModel:
    """Load a saved UNet folder (diffusers format) and restore its activation everywhere.

    The folder's ``config.json`` is checked before anything is allocated: it must describe a
    network ``build_unet`` makes (within the config bounds), match the checkpoint's own
    ``config.json`` when the folder is part of one, and fit in memory; weights must be
    safetensors (anything else would be unpickled)."""
    path = Path(path)
    saved = read_unet_config(path)
    cfg = model_config_from_unet(saved, path)
    expected = _meta_unet(cfg).config
    for key, value in saved.items():
        if key in expected and not key.startswith("_") and plain(value) != plain(expected[key]):
            raise ModelFolderError(
                f"{path / CONFIG_JSON}: {key}={value!r} is not what diffscape builds "
                f"({expected[key]!r}); this folder was not written by diffscape"
            )
    _check_against_checkpoint(path, cfg)
    check_memory(cfg, training=False)
    if not (path / UNET_WEIGHTS).is_file():
        raise ModelFolderError(
            f"{path} has no {UNET_WEIGHTS}; diffscape only loads safetensors weights"
        )
    try:
        unet = UNet2DModel.from_pretrained(str(path), torch_dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:  # weights that do not fit the config
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelFolderError(f"{path}: cannot load the weights ({line})") from None
    unet = apply_activation(unet, unet.config.act_fn)
    return set_attention_processor(unet, CpuAutocastFp32Attention)


def read_unet_config(path: Path) -> dict[str, Any]:
    """A diffusers model folder's config.json as a dict, or ModelFolderError."""
    file = Path(path) / CONFIG_JSON
    if not file.is_file():
        raise ModelFolderError(f"{path} is not a model folder (no {CONFIG_JSON})")
    if file.stat().st_size > 1 << 20:
        raise ModelFolderError(f"{file} is {file.stat().st_size} bytes, not a model config")
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{file} is not a table of settings")
    return data


def model_config_from_unet(saved: dict[str, Any], path: Path) -> ModelConfig:
    """The ModelConfig that ``build_unet`` turns into this diffusers config, validated by the
    config module like any other (bounds included)."""
    try:
        levels = len(saved["block_out_channels"])
        if levels > 32:  # sizes below would halve past one pixel long before
            raise ValueError(f"{levels} levels")
        sizes = [saved["sample_size"] // 2**i for i in range(levels)]
        down = saved["down_block_types"]
        classes = saved.get("num_class_embeds")
        model = {
            "image_size": saved["sample_size"],
            "channels": list(saved["block_out_channels"]),
            "layers_per_block": saved["layers_per_block"],
            "attention_resolutions": [
                s for s, kind in zip(sizes, down, strict=True) if "Attn" in str(kind)
            ],
            "attention_head_dim": saved["attention_head_dim"],
            "activation": saved["act_fn"],
            "dropout": saved.get("dropout", 0.0),
            "norm_groups": saved["norm_num_groups"],
            "conditional": classes is not None,
            "num_classes": classes - 1 if isinstance(classes, int) else 0,
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFolderError(
            f"{path / CONFIG_JSON} does not describe a diffscape UNet ({type(e).__name__}: {e})"
        ) from None
    try:
        return from_dict({"model": model}).model
    except ConfigError as e:
        raise ModelFolderError(f"{path / CONFIG_JSON}: {e}") from None


def _check_against_checkpoint(path: Path, cfg: ModelConfig) -> None:
    """Inside a checkpoint, the model folder must describe the network of the checkpoint's own
    config.json (the file sampling and resuming trust)."""
    ckpt = path.parent
    if not ((ckpt / COMPLETE).is_file() and (ckpt / CONFIG_JSON).is_file()):
        return
    theirs, ours = unet_kwargs(load_config_json(ckpt / CONFIG_JSON).model), unet_kwargs(cfg)
    if theirs != ours:
        key = next(k for k in ours if ours[k] != theirs[k])
        raise ModelFolderError(
            f"{path / CONFIG_JSON} disagrees with {ckpt / CONFIG_JSON} ({key}: {ours[key]!r} vs "
            f"{theirs[key]!r}); the checkpoint was altered"
        )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
