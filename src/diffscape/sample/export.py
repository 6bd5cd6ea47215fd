"""Out of diffscape: a row of images interpolated between two seeds' noise, and a folder that
diffusers loads (``unet/`` + ``scheduler/``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffscape.core import atomic, layout
from diffscape.core.errors import DiffscapeError
from diffscape.data.imagefolder import make_grid, save_image
from diffscape.model import diffusion
from diffscape.model.unet import null_class
from diffscape.sample.folder import chosen_classes
from diffscape.sample.generate import (
    denoise,
    image_generator,
    sample_settings,
    slerp,
    to_uint8,
)
from diffscape.sample.load import load_for_sampling

MAX_FRAMES = 256  # images in an interpolation row, denoised in one batch


def interpolate(
    source: str | Path,
    out_png: str | Path,
    *,
    seed_a: int,
    seed_b: int,
    frames: int = 8,
    class_name: str | None = None,
    sampler: diffusion.Sampler = "ddim",
    steps: int | None = None,
    guidance: float = 1.0,
    overwrite: bool = False,
) -> np.ndarray:
    """A row of images whose starting noise walks from seed_a's to seed_b's (slerp), with the
    deterministic DDIM (eta 0) or DPM-Solver++ so the row changes smoothly. ``steps`` None is
    the sampler's default."""
    if sampler == "ddpm":
        raise DiffscapeError("interpolation needs a deterministic sampler: ddim or dpm")
    s = sample_settings(
        None, {"sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed_a}
    )
    sample_settings(None, {"seed": seed_b})
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= MAX_FRAMES:
        raise DiffscapeError(f"frames {frames!r}: give 2..{MAX_FRAMES} images in the row")
    if Path(out_png).suffix.lower() != ".png":
        raise DiffscapeError(f"interpolate writes a PNG image: {out_png} must end in .png")
    out_png = layout.check_out(out_png, "image", overwrite=overwrite)
    model = load_for_sampling(source)
    k = chosen_classes(model, [class_name] if class_name else None)[0]
    size = model.cfg.model.image_size
    a = torch.randn((3, size, size), generator=image_generator(seed_a, k, 0))
    b = torch.randn((3, size, size), generator=image_generator(seed_b, k, 0))
    noise = torch.stack([slerp(a, b, u) for u in np.linspace(0.0, 1.0, frames)])
    labels = None if k is None else torch.full((frames,), k)
    gens = [torch.Generator().manual_seed(0) for _ in range(frames)]  # unused at eta 0
    x = denoise(model.unet, model.cfg, noise, labels, gens, s)
    images = to_uint8(x)
    save_image(Image.fromarray(make_grid(images, nrow=frames).transpose(1, 2, 0)), out_png)
    return images


def export_diffusers(
    source: str | Path, out: str | Path, use_ema: bool = True, overwrite: bool = False
) -> Path:
    """A folder diffusers loads: ``unet/`` (UNet2DModel) and ``scheduler/`` (DDPMScheduler with
    the model's betas). Other samplers load from the same scheduler config. Written as a whole;
    ``out`` may be new or empty, or an older export with ``overwrite``."""
    out = layout.check_out(out, "export", overwrite=overwrite)
    model = load_for_sampling(source, use_ema=use_ema, device="cpu")
    tmp = atomic.tmp_dir_beside(out)
    try:
        model.unet.save_pretrained(tmp / layout.EXPORT_UNET, safe_serialization=True)
        sched = diffusion.make_scheduler(model.cfg.diffusion, "ddpm")
        sched.save_pretrained(tmp / layout.EXPORT_SCHEDULER)
        info = {"classes": model.classes, "null_class": null_class(model.cfg.model)}
        atomic.write_json(tmp / layout.EXPORT_CLASSES, info)
        atomic.write_text(tmp / layout.EXPORT_CONFIG, model.cfg.to_json())
        atomic.publish_dir(tmp, layout.check_out(out, "export", overwrite=overwrite))
    except Exception as e:
        if atomic.is_disk_full(e):
            need = sum(t.numel() * t.element_size() for t in model.unet.state_dict().values())
            raise atomic.disk_full(e, out, tmp, need) from None
        raise
    finally:
        atomic.remove_tmp(tmp)
    if model.cfg.model.activation != "silu":
        print(
            f"note: activation {model.cfg.model.activation!r} also replaces the SiLU that "
            "diffusers hard-codes in the time MLP and output head; load with "
            "diffscape.model.unet.load_unet (or apply_activation after from_pretrained) to get the "
            "trained network",
            file=sys.stderr,
        )
    return out
