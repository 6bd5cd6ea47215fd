"""The network: a diffusers ``UNet2DModel`` built from ``ModelConfig``, with its activation
reaching every nonlinearity.

diffusers' ``act_fn`` only reaches the ResNet blocks: ``UNet2DModel`` hard-codes SiLU in the
time-embedding MLP (``TimestepEmbedding``'s default) and the output head (``conv_act``). A study of
activations must change all of them, so after building we swap every activation module for the
chosen one. The swap is a pure function of the saved ``act_fn``, so :func:`load_unet` (and any
user, in two lines) rebuilds exactly the trained network from a diffusers folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
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
    return cpu_fp32_attention(apply_activation(unet, cfg.activation))


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


class CpuAutocastFp32Attention(AttnProcessor2_0):
    """diffusers' SDPA attention, run in fp32 while CPU autocast is on; unchanged elsewhere.

    torch's CPU flash-attention kernel is about 5x slower in bf16 than in fp32 at this UNet's
    shapes (64 tokens, 32-channel heads: 25.6 vs 5.0 ms fwd+bwd, one thread), about 7% of a bf16
    training step of the small preset (bench/bench.py, docs/benchmarks.md). The projections
    around it are small, so the whole block runs in fp32 (more exact too) and its output goes
    back to the input's dtype, so the rest of the network sees what diffusers' processor gives.
    On CUDA, bf16 SDPA is fast and this processor is diffusers' own.
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


def cpu_fp32_attention(unet: nn.Module) -> nn.Module:
    """Give every attention block :class:`CpuAutocastFp32Attention`, in place (not saved: a
    diffusers folder loads with diffusers' default processor and computes the same thing)."""
    return set_attention_processor(unet, CpuAutocastFp32Attention)


def load_unet(path: str | Path, dtype: torch.dtype | None = None) -> UNet2DModel:
    """Load a saved UNet folder (diffusers format) and restore its activation everywhere."""
    unet = UNet2DModel.from_pretrained(str(path), torch_dtype=dtype)
    return cpu_fp32_attention(apply_activation(unet, unet.config.act_fn))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
