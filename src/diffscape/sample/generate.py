"""Generation: DDPM / DDIM / DPM-Solver++ through diffusers schedulers, with classifier-free
guidance and per-image seeds.

Every image draws its starting noise and its per-step noise from its own generator, seeded by
(seed, class, index). An image therefore depends only on those three numbers, never on the
batch it was computed in (diffusers' ``randn_tensor`` accepts one generator per batch item).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DModel
from tqdm.auto import tqdm

from diffscape.core.errors import DiffscapeError
from diffscape.data.show import labelled_rows_image
from diffscape.model import diffusion
from diffscape.model.unet import null_class
from diffscape.settings.sections import RunConfig, SampleSettings


def image_generator(seed: int, class_idx: int | None, index: int) -> torch.Generator:
    """The generator of one image: a pure function of (seed, class, index)."""
    c = 0 if class_idx is None else class_idx + 1
    (state,) = np.random.SeedSequence([seed, c, index]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def slerp(a: torch.Tensor, b: torch.Tensor, u: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (keeps the Gaussian norm; Shoemake 1985,
    as used for latent walks since White 2016)."""
    af, bf = a.flatten().double(), b.flatten().double()
    cos = torch.clamp(af @ bf / (af.norm() * bf.norm()), -1.0, 1.0)
    theta = torch.arccos(cos)
    if theta.abs() < 1e-6:
        return ((1 - u) * a + u * b).to(a.dtype)
    s = torch.sin(theta)
    return ((torch.sin((1 - u) * theta) / s) * a + (torch.sin(u * theta) / s) * b).to(a.dtype)


def model_output(
    unet: UNet2DModel,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    null: int,
    guidance: float,
) -> torch.Tensor:
    """The network's prediction with classifier-free guidance; cond and uncond in one batch."""
    tt = t.expand(x.shape[0]).to(x.device)
    if labels is None:  # unconditional model
        return unet(x, tt).sample
    if guidance == 1.0:
        return unet(x, tt, class_labels=labels).sample
    nulls = torch.full_like(labels, null)
    if guidance == 0.0:
        return unet(x, tt, class_labels=nulls).sample
    both = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([labels, nulls]))
    cond, uncond = both.sample.chunk(2)
    return diffusion.guide(cond, uncond, guidance)


@torch.inference_mode()
def denoise(
    unet: UNet2DModel,
    cfg: RunConfig,
    noise: torch.Tensor,
    labels: torch.Tensor | None,
    generators: list[torch.Generator],
    settings: SampleSettings | None = None,
    **changes: Any,
) -> torch.Tensor:
    """Run a sampler from ``noise`` (B, 3, H, W) to images (float, on CPU), not clamped: about
    [-1, 1] for a trained model; ``to_uint8`` clamps. The sampling is ``settings`` (the defaults
    when None) with ``changes`` (:func:`sample_settings`); its guidance applies at the steps
    whose noise level lies in its guidance_interval (:func:`diffusion.guidance_at`)."""
    s = sample_settings(settings, changes)
    sampler = s.sampler
    device = next(unet.parameters()).device
    sched = diffusion.make_scheduler(cfg.diffusion, sampler)
    n_steps = diffusion.sampler_steps(cfg.diffusion.timesteps, sampler, s.steps)
    sched.set_timesteps(n_steps, device=device)
    x = noise.to(device) * sched.init_noise_sigma
    if labels is not None:
        labels = labels.to(device)
    extra: dict = {"eta": s.eta} if sampler == "ddim" else {}
    if sampler in diffusion.TAKES_GENERATOR:
        extra["generator"] = generators
    null = null_class(cfg.model)
    alpha_bar = sched.alphas_cumprod
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        ab = float(alpha_bar[min(int(round(float(t))), len(alpha_bar) - 1)])
        w = diffusion.guidance_at(s.guidance, s.guidance_interval, ab)
        out = model_output(unet, model_in, t, labels, null, w)
        x = sched.step(out, t, x, **extra).prev_sample
    if not torch.isfinite(x).all():  # would become black images silently
        raise DiffscapeError(
            f"{sampler} produced NaN or infinite pixels: the weights are damaged or the settings "
            f"diverge (guidance {s.guidance:g}); try another checkpoint or a smaller --guidance"
        )
    return x.float().cpu()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float -> uint8 (N, 3, H, W), rounding to nearest, clamped to [0, 255]."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def generate_images(
    unet: UNet2DModel,
    cfg: RunConfig,
    *,
    class_idx: Sequence[int | None],
    index: Sequence[int],
    settings: SampleSettings | None = None,
    progress: bool = True,
    **changes: Any,
) -> np.ndarray:
    """Images for the given (class, index) pairs as uint8 (N, 3, H, W), in memory, sampled with
    ``settings`` and ``changes`` (:func:`sample_settings`)."""
    size = cfg.model.image_size
    out = np.empty((len(index), 3, size, size), np.uint8)
    pairs = list(zip(class_idx, index, strict=True))
    s = sample_settings(settings, changes)
    for start, images in iter_images(unet, cfg, pairs, s, progress=progress):
        out[start : start + len(images)] = images
    return out


def iter_images(
    unet: UNet2DModel,
    cfg: RunConfig,
    pairs: Sequence[tuple[int | None, int]],
    s: SampleSettings,
    *,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """(position of the batch's first pair, its images as uint8 (B, 3, H, W)) for the (class,
    index) ``pairs``, ``s.batch`` (:func:`default_batch` when None) at a time: memory holds one
    batch whatever the number of images."""
    conditional, batch = cfg.model.conditional, s.batch or default_batch(unet)
    size, null = cfg.model.image_size, null_class(cfg.model)
    desc = f"sample ({s.sampler})"
    bar = tqdm(total=len(pairs), desc=desc, unit="img", dynamic_ncols=True, disable=not progress)
    was_training = unet.training
    unet.eval()
    try:
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            if not conditional and any(c is not None for c, _ in chunk):
                raise DiffscapeError("this model is unconditional: it cannot sample a class")
            if conditional and any(c is None for c, _ in chunk) and s.guidance != 0.0:
                raise DiffscapeError("a conditional model needs a class per image (or guidance 0)")
            gens = [image_generator(s.seed, c, i) for c, i in chunk]
            noise = torch.stack([torch.randn((3, size, size), generator=g) for g in gens])
            labels = None
            if conditional:
                labels = torch.tensor([null if c is None else c for c, _ in chunk])
            yield start, to_uint8(denoise(unet, cfg, noise, labels, gens, s))
            bar.update(len(gens))
    finally:
        bar.close()
        unet.train(was_training)


def default_batch(unet: UNet2DModel) -> int:
    """Images denoised together when ``sample.batch`` is none: 256 on a GPU, 64 on a CPU."""
    return 256 if next(unet.parameters()).device.type == "cuda" else 64


def grid_image(images: np.ndarray, row_names: Sequence[str], per_row: int):  # noqa: ANN201
    """A PIL image with one labelled row of ``per_row`` images per name."""
    rows = [(name, images[k * per_row : (k + 1) * per_row]) for k, name in enumerate(row_names)]
    return labelled_rows_image(rows)


def sample_settings(settings: SampleSettings | None, changes: dict[str, Any]) -> SampleSettings:
    """``settings`` (the defaults when None) with ``changes`` (SampleSettings fields: sampler=,
    steps=, guidance=, ...), checked by the settings engine against the bounds that ``--help``
    shows: a one-line ConfigError naming the setting."""
    s = settings or SampleSettings()
    return s.with_changes(**changes) if changes else s
