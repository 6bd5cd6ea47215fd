"""Noise schedules, the forward process, the training target and guidance — thin over diffusers.

We compute the betas ourselves and hand them to diffusers schedulers as ``trained_betas`` so that
every sampler (DDPM, DDIM, DPM-Solver++, UniPC, Heun) uses exactly the schedule the model was
trained with, including our rescaled linear schedule, which diffusers does not offer.
"""

from __future__ import annotations

import math

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffscape.core.errors import DiffscapeError
from diffscape.settings.sections import DEFAULT_SAMPLE_STEPS, SAMPLERS, DiffusionConfig, Sampler

# The sampler names (Sampler, SAMPLERS) are listed once, in settings/sections.py, so that the CLI
# can offer them without importing torch; they are importable from here too.


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """The betas of ``cfg.schedule``, in float64."""
    if cfg.schedule == "linear":
        # Ho et al. 2020. With rescale_linear the endpoints are multiplied by 1000/T, so that
        # T=500 ends at about the same total noise as T=1000 (improved-diffusion's
        # get_named_beta_schedule); without it, the endpoints are used as given for any T.
        scale = 1000.0 / cfg.timesteps if cfg.rescale_linear else 1.0
        start, end = cfg.beta_start * scale, cfg.beta_end * scale
        return torch.linspace(start, end, cfg.timesteps, dtype=torch.float64)
    if cfg.schedule == "cosine":
        # Nichol & Dhariwal 2021, eq. 17 (s = 0.008, betas capped at 0.999): squaredcos_cap_v2
        return betas_for_alpha_bar(cfg.timesteps, max_beta=0.999).to(torch.float64)
    if cfg.schedule == "sigmoid":
        # as diffusers' DDPMScheduler "sigmoid", between beta_start and beta_end
        x = torch.linspace(-6, 6, cfg.timesteps, dtype=torch.float64)
        return torch.sigmoid(x) * (cfg.beta_end - cfg.beta_start) + cfg.beta_start
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def sampler_steps(timesteps: int, sampler: Sampler, steps: int | None = None) -> int:
    """The denoising steps a sampler really takes: DDPM all ``timesteps`` (T), whatever
    ``steps`` says; DDIM and DPM-Solver++ ``steps`` (None: ``DEFAULT_SAMPLE_STEPS``, at most T).
    More steps than T are refused: the schedulers cannot visit a training step twice."""
    if sampler == "ddpm":
        return timesteps
    if steps is None:
        return min(DEFAULT_SAMPLE_STEPS, timesteps)
    if not 1 <= steps <= timesteps:
        raise DiffscapeError(
            f"{sampler} cannot take {steps} steps: this model has diffusion.timesteps={timesteps},"
            f" so choose 1..{timesteps} steps"
        )
    return steps


# Samplers whose ``step`` takes a ``generator`` (the stochastic ones draw noise from it).
TAKES_GENERATOR = frozenset({"ddpm", "ddim", "dpm", "dpm3", "dpm-karras"})


def make_scheduler(cfg: DiffusionConfig, sampler: Sampler = "ddpm") -> SchedulerMixin:
    """A fresh diffusers scheduler for this model's betas and prediction type.

    Fast samplers use "trailing" timestep spacing so the first step starts at t = T-1 (pure
    noise), as recommended by Lin et al. 2023 ("Common diffusion noise schedules and sample
    steps are flawed"); diffusers' default "leading" starts lower and leaves noise in images at
    few steps. DDPM uses all T steps, where spacing does not matter. ``dpm-karras`` and
    ``heun`` space their steps by Karras et al. 2022's sigmas (rho 7) instead.
    """
    common = {
        "num_train_timesteps": cfg.timesteps,
        "trained_betas": make_betas(cfg).tolist(),
        "prediction_type": cfg.prediction,
    }
    if sampler == "ddpm":
        return DDPMScheduler(**common, clip_sample=True, variance_type="fixed_small")
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=True, timestep_spacing="trailing")
    if sampler in ("dpm", "dpm3", "dpm-karras"):
        return DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=3 if sampler == "dpm3" else 2,
            use_karras_sigmas=sampler == "dpm-karras",
            timestep_spacing="trailing",
            thresholding=False,
        )
    if sampler == "unipc":
        return UniPCMultistepScheduler(**common, timestep_spacing="trailing")
    if sampler == "heun":
        return HeunDiscreteScheduler(**common, use_karras_sigmas=True)
    raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")


def alphas_cumprod(cfg: DiffusionConfig) -> torch.Tensor:
    return torch.cumprod(1.0 - make_betas(cfg), dim=0)


def q_sample(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (Ho et al. 2020, eq. 4). Same as diffusers'
    ``add_noise``, but with ``alpha_bar`` passed in (no scheduler state in the training step)."""
    ab = alpha_bar.to(device=x0.device, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def training_target(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, prediction: str
) -> torch.Tensor:
    """What the network is trained to predict: eps, or v = sqrt(ab) eps - sqrt(1-ab) x0
    (Salimans & Ho 2022)."""
    if prediction == "epsilon":
        return noise
    ab = alpha_bar.to(device=x0.device, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    return ab.sqrt() * noise - (1 - ab).sqrt() * x0


def loss_weights(
    t: torch.Tensor, alpha_bar: torch.Tensor, prediction: str, weighting: str, gamma: float
) -> torch.Tensor | None:
    """Per-sample MSE weights. ``min_snr``: Hang et al. 2023 ("Efficient Diffusion Training via
    Min-SNR Weighting Strategy"), min(SNR, gamma)/SNR for eps targets and min(SNR, gamma)/(SNR+1)
    for v targets, which stops easy low-noise steps from dominating; ``none``: plain MSE."""
    if weighting == "none":
        return None
    ab = alpha_bar.to(device=t.device, dtype=torch.float32)[t]
    snr = ab / (1 - ab)
    clamped = torch.clamp(snr, max=gamma)
    return clamped / (snr + 1) if prediction == "v_prediction" else clamped / snr


def guide(out_cond: torch.Tensor, out_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022) in our convention:
    out = out_uncond + w (out_cond - out_uncond); w=0 unconditional, w=1 conditional, w>1 guided.
    """
    return out_uncond + w * (out_cond - out_uncond)


def guidance_at(w: float, interval: tuple[float, float] | None, alpha_bar: float) -> float:
    """The guidance weight at a step whose noise level is ``alpha_bar``: ``w`` inside the
    interval of sigma = sqrt((1 - alpha_bar) / alpha_bar), (lo, hi], else 1 (conditional)."""
    if interval is None:
        return w
    sigma = math.sqrt((1 - alpha_bar) / alpha_bar)
    return w if interval[0] < sigma <= interval[1] else 1.0


def drop_labels(
    labels: torch.Tensor, p: float, null_class: int, generator: torch.Generator,
    whole: int | None = None, share: slice = slice(None),
) -> torch.Tensor:  # fmt: skip
    """Replace each label by the "no class" token with probability ``p`` (per sample): one draw
    per sample of the whole batch (``whole``; default: ``labels``'), of which ``labels`` is the
    ``share``."""
    if p <= 0:
        return labels
    u = torch.rand(whole or labels.shape[0], generator=generator, device=generator.device)[share]
    return torch.where(u.to(labels.device) < p, torch.full_like(labels, null_class), labels)
