"""A trained network for sampling: a run folder (its newest intact checkpoint) or a checkpoint
folder, read into a :class:`LoadedModel` with its config and class names."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel

from diffscape.checkpoint import resolve_checkpoint
from diffscape.core import layout
from diffscape.core.errors import DiffscapeError
from diffscape.model.unet import load_unet
from diffscape.settings.presets import load_config_json
from diffscape.settings.sections import RunConfig


@dataclass(frozen=True)
class LoadedModel:
    unet: UNet2DModel
    cfg: RunConfig
    classes: list[str]  # class names (empty for unconditional models)
    checkpoint: Path
    weights: str  # "ema" or "model"


def load_for_sampling(
    path: str | Path, use_ema: bool = True, device: str | torch.device | None = None
) -> LoadedModel:
    """A run folder (its latest complete checkpoint) or a checkpoint folder -> the network.

    A trainer may prune the checkpoint while it is read: a run folder is then read again from
    its newest intact checkpoint (saying so); a checkpoint folder that vanished is an error that
    says what happened."""
    weights = layout.EMA_DIR if use_ema else layout.MODEL_DIR
    for attempt in range(3):
        ckpt = resolve_checkpoint(Path(path))
        try:
            cfg = load_config_json(ckpt / layout.CONFIG_JSON)
            classes = class_names(ckpt, cfg)
            unet = load_unet(ckpt / weights).eval()
            break
        except (OSError, DiffscapeError):
            if (ckpt / layout.COMPLETE).is_file():
                raise  # still there: not a race, a real problem
            if Path(path).resolve() == ckpt.resolve() or attempt == 2:
                raise DiffscapeError(
                    f"checkpoint {ckpt} was removed while it was being read (a trainer prunes "
                    "old checkpoints); sample the run folder, or a milestone checkpoint"
                ) from None
            print(
                f"note: checkpoint {ckpt.name} was removed while it was being read (pruned by "
                "the trainer); reading the newest intact checkpoint instead",
                file=sys.stderr,
            )
    unet.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return LoadedModel(unet, cfg, classes, ckpt, weights)


def class_names(ckpt: Path, cfg: RunConfig) -> list[str]:
    """A conditional model's class names from the checkpoint's run.json, each checked as one
    safe folder name (they become ``OUT/<class>/``); ``class<i>`` when run.json has none that
    fit the model. Unconditional models: no classes."""
    if not cfg.model.conditional:
        return []
    path = ckpt / layout.RUN_JSON
    try:
        info = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DiffscapeError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None
    names = info.get("classes") if isinstance(info, dict) else None
    if not isinstance(names, list) or len(names) != cfg.model.num_classes:
        return [f"class{i}" for i in range(cfg.model.num_classes)]
    return layout.check_class_names(names, path, hint="each class needs its own folder")
