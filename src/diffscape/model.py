"""The network: a diffusers ``UNet2DModel`` built from ``ModelConfig``, with its activation
reaching every nonlinearity.

diffusers' ``act_fn`` only reaches the ResNet blocks: ``UNet2DModel`` hard-codes SiLU in the
time-embedding MLP (``TimestepEmbedding``'s default) and the output head (``conv_act``). A study of
activations must change all of them, so after building we swap every activation module for the
chosen one. The swap is a pure function of the saved ``act_fn``, so :func:`load_unet` (and any
user, in two lines) rebuilds exactly the trained network from a diffusers folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from diffscape.config import ModelConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
}
_ACTIVATION_TYPES = tuple(_ACTIVATIONS.values())


def num_class_embeds(cfg: ModelConfig) -> int | None:
    """Class embeddings: one per class plus the "no class" token (the last index) for
    classifier-free guidance; ``None`` for unconditional models."""
    return cfg.num_classes + 1 if cfg.conditional else None


def null_class(cfg: ModelConfig) -> int:
    """Index of the "no class" token."""
    return cfg.num_classes


def build_unet(cfg: ModelConfig) -> UNet2DModel:
    """A freshly initialised UNet for this config (weights drawn from torch's global RNG:
    seed it first)."""
    if cfg.conditional and cfg.num_classes < 1:
        raise ValueError("model.num_classes must be set (>= 1) for a conditional model")
    levels = len(cfg.channels)
    sizes = [cfg.image_size // 2**i for i in range(levels)]
    attn = set(cfg.attention_resolutions)
    down = tuple("AttnDownBlock2D" if s in attn else "DownBlock2D" for s in sizes)
    up = tuple("AttnUpBlock2D" if s in attn else "UpBlock2D" for s in reversed(sizes))
    unet = UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_groups,
        act_fn=cfg.activation,
        dropout=cfg.dropout,
        num_class_embeds=num_class_embeds(cfg),
    )
    return apply_activation(unet, cfg.activation)


def apply_activation(module: nn.Module, name: str) -> nn.Module:
    """Replace every activation submodule (SiLU, ReLU, GELU, Mish) with ``name``, in place.

    ResNet blocks hold theirs as ``.nonlinearity``; the time MLP as ``.act``; the head as
    ``.conv_act`` — all are modules, so one walk over children covers them.
    """
    try:
        cls = _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {list(_ACTIVATIONS)}") from None
    for parent in module.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, _ACTIVATION_TYPES) and type(child) is not cls:
                setattr(parent, child_name, cls())
    return module


def load_unet(path: str | Path, dtype: torch.dtype | None = None) -> UNet2DModel:
    """Load a saved UNet folder (diffusers format) and restore its activation everywhere."""
    unet = UNet2DModel.from_pretrained(str(path), torch_dtype=dtype)
    return apply_activation(unet, unet.config.act_fn)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
