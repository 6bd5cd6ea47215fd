"""The training step: the pure pieces (LR, EMA, flips, the loss) and :func:`train_step`, the
one copy of the step (``train()`` runs it; the benchmarks time it).

Every random draw of a step comes from ``parts.gen`` (flips, noise, timesteps, label dropout),
whose state is checkpointed, and the LR is a pure function of the step (and, with a wall-clock
budget, of the seconds trained, which are checkpointed too): what exact resume needs.

The step does not wait for the device: a non-finite step is skipped on the device (fused AdamW's
``found_inf``, an EMA weight of 0), and the loop reads the steps' flags and losses once per
logging window, checkpoint or stop (``TrainLogger.settle``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from diffscape.checkpoint import TrainingState
from diffscape.data.source import BatchSource
from diffscape.model import diffusion
from diffscape.model.unet import null_class
from diffscape.settings.sections import DiffusionConfig, RunConfig


def lr_at(
    step: int, cfg_lr: float, warmup_steps: int, total_steps: int, schedule: str,
    budget_progress: float = 0.0,
) -> float:  # fmt: skip
    """Linear warm-up from 0 to ``cfg_lr``, then constant, or a cosine or linear decay that
    reaches 0 at the end of training: at ``total_steps``, or when the wall-clock budget is spent
    (``budget_progress``: the fraction of ``train.minutes`` used), whichever comes first."""
    if warmup_steps and step < warmup_steps:
        return cfg_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(progress, budget_progress))
    if schedule == "cosine":
        return cfg_lr * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return cfg_lr * (1.0 - progress)
    return cfg_lr


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """EMA decay for the update after ``step`` optimizer steps: ``min(decay, (1+s)/(10+s))``
    with warm-up (the schedule of diffusers' EMAModel), so early averages are not dominated by
    the random initialisation."""
    if not warmup:
        return decay
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, weight: float | torch.Tensor) -> None:
    """ema <- ema + weight * (model - ema), over all parameters at once (weight = 1 - decay).

    A 0-d tensor ``weight`` stays on the device: 0 for a skipped step leaves the EMA as it was
    with no host sync. By hand rather than diffusers' EMAModel: keeping the EMA as a whole UNet
    makes it save as a diffusers folder and sample directly, with no shadow-parameter list.
    """
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    if not torch.is_tensor(weight):
        torch._foreach_lerp_(e, m, weight)
    elif e[0].device.type == "cuda":
        # lerp with a list of 0-d weights has no multi-tensor CUDA kernel (shapes differ: it
        # falls back to one lerp per tensor); sub, mul by a tensor scalar and add have one each.
        diff = torch._foreach_sub(m, e)
        torch._foreach_mul_(diff, weight)
        torch._foreach_add_(e, diff)
    else:  # CPU foreach ops loop over the tensors anyway; the float-weight lerp, bit for bit
        torch._foreach_lerp_(e, m, [weight] * len(e))


def random_flip(
    x: torch.Tensor, gen: torch.Generator, whole: int | None = None, share: slice = slice(None)
) -> torch.Tensor:
    """Flip each image left-right with probability 1/2: one draw per image of the whole batch
    (``whole`` images; default: ``x``'s) from ``gen``, of which ``x`` is the ``share``."""
    mask = (torch.rand(whole or x.shape[0], generator=gen, device=gen.device) < 0.5)[share]
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def diffusion_loss(
    pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
    d: DiffusionConfig,
) -> torch.Tensor:  # fmt: skip
    """MSE in fp32, weighted per sample by ``diffusion.loss_weighting`` (min-SNR or none)."""
    weights = diffusion.loss_weights(t, alpha_bar, d.prediction, d.loss_weighting, d.min_snr_gamma)
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    return (weights * per_sample).mean()


Guard = Literal["device", "host", "off"]


@dataclass
class StepParts:
    """What every step works on; built once by :func:`step_parts` (train() and benchmarks)."""

    cfg: RunConfig
    accelerator: Accelerator
    model: torch.nn.Module  # the parameters: the EMA's source, what checkpoints save
    net: torch.nn.Module  # what runs forward: ``model`` or its compiled/DDP-prepared wrapper
    ema: torch.nn.Module | None  # None: no EMA update (a benchmark measuring its cost)
    optimizer: torch.optim.Optimizer  # prepared by the accelerator
    gen: torch.Generator  # this process's flips, noise, timesteps, label dropout; data's device
    alpha_bar: torch.Tensor  # cumulative alpha product of the noise schedule, (T,)
    # Non-finite steps are skipped. "device": decided on the device, no host sync (needs an
    # optimizer that reads ``found_inf``, i.e. fused AdamW; others fall back to "host");
    # "host": the flag is read before the update (one sync per step); "off": benchmarks only.
    guard: Guard = "device"


@dataclass(frozen=True)
class StepResult:
    """Tensors on the device; reading them syncs (TrainLogger reads them once per window)."""

    loss: torch.Tensor  # mean over processes
    grad_norm: torch.Tensor  # before clipping
    lr: float
    finite: torch.Tensor  # bool; False: the step was skipped (weights, optimizer, EMA unchanged)


def process_share(acc: Accelerator) -> slice:
    """This process's share of what processes split: items rank, rank + world, ... (a batch's
    images and random draws, a sample grid's images)."""
    return slice(acc.process_index, None, acc.num_processes)


def step_inputs(
    parts: StepParts, step: int, data: BatchSource
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This process's share of the batch of ``step`` and of its draws from ``parts.gen``, in
    this order: flips, noise, timesteps, label dropout; made where the data is (``parts.gen`` is
    there: :func:`~diffscape.train.setup.step_generator`), then moved to the training device (a
    no-op for a :class:`DeviceSource`). Returns (x0, noise, t, labels).

    Every process draws for the whole batch (its generator is the same on all of them) and
    keeps its share, as the data does: N processes train what one would, up to float rounding
    (``train.processes``: :mod:`diffscape.train.processes`)."""
    cfg, t, acc, gen = parts.cfg, parts.cfg.train, parts.accelerator, parts.gen
    x0, y = data.batch(step, acc.process_index, acc.num_processes)
    n, share = t.batch_size, process_share(acc)
    if t.hflip:
        x0 = random_flip(x0, gen, n, share)
    noise = torch.randn((n, *x0.shape[1:]), generator=gen, device=gen.device)[share]
    tt = torch.randint(0, cfg.diffusion.timesteps, (n,), generator=gen, device=gen.device)[share]
    class_labels = None
    if cfg.model.conditional:
        class_labels = diffusion.drop_labels(
            y, t.label_dropout, null_class(cfg.model), gen, n, share
        )
        class_labels = class_labels.to(acc.device)
    x0, noise, tt = (v.to(acc.device) for v in (x0, noise, tt))
    return x0, noise, tt, class_labels


def train_step(parts: StepParts, state: TrainingState, data: BatchSource) -> StepResult:
    """One optimizer step of ``state.step`` on ``data`` (a :class:`HostSource` or
    :class:`DeviceSource`); advances ``state.step``. The only copy of the training step.

    With ``parts.guard="device"`` nothing here waits for the device: whether the step was
    finite is ``StepResult.finite``; :meth:`TrainLogger.settle` reads it later and keeps
    ``state.skipped_steps``/``bad_steps_in_a_row``."""
    cfg, t, acc = parts.cfg, parts.cfg.train, parts.accelerator
    step, alpha_bar = state.step, parts.alpha_bar
    x0, noise, tt, class_labels = step_inputs(parts, step, data)
    if t.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    x_t = diffusion.q_sample(x0, noise, tt, alpha_bar)
    target = diffusion.training_target(x0, noise, tt, alpha_bar, cfg.diffusion.prediction)

    spent = state.seconds / (60 * t.minutes) if t.minutes > 0 else 0.0
    lr = lr_at(step, t.lr, t.warmup_steps, t.steps, t.lr_schedule, spent)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    with acc.autocast():
        pred = parts.net(x_t, tt, class_labels=class_labels).sample
    loss = diffusion_loss(pred, target, tt, alpha_bar, cfg.diffusion)
    acc.backward(loss)
    max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
    grad_norm = acc.clip_grad_norm_(parts.net.parameters(), max_norm)
    mean_loss = acc.reduce(loss.detach(), "mean")
    finite = torch.isfinite(mean_loss) & torch.isfinite(grad_norm)
    decay = ema_decay_at(step, t.ema_decay, t.ema_warmup)
    guard = parts.guard
    if guard == "device" and not skips_on_device(parts.optimizer):
        guard = "host"
    if guard == "device":
        _update_unless(parts, finite, 1.0 - decay)
    elif guard == "off" or bool(finite):  # "host": the host sync of the step
        parts.optimizer.step()
        if parts.ema is not None:
            ema_update(parts.ema, parts.model, 1.0 - decay)
    if guard == "off":
        finite = torch.ones_like(finite)  # never skipped
    parts.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return StepResult(loss=mean_loss, grad_norm=grad_norm, lr=lr, finite=finite)


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the real one


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer skips its update on a device flag: torch's fused Adam/AdamW read
    ``found_inf`` (GradScaler's protocol, ``_step_supports_amp_scaling``) inside the kernel."""
    return bool(getattr(inner_optimizer(optimizer), "_step_supports_amp_scaling", False))


def _update_unless(parts: StepParts, finite: torch.Tensor, ema_weight: float) -> None:
    """Optimizer and EMA update, both no-ops on the device when ``finite`` is false: fused AdamW
    with ``found_inf=1`` leaves parameters and moments as they were and takes its step count back
    (torch/optim/adam.py, _fused_adam), and the EMA moves by a weight of 0. No host sync."""
    inner = inner_optimizer(parts.optimizer)
    # An fp16 GradScaler sets (and then deletes) its own found_inf in the step; inf/NaN
    # gradients are what it checks, and they make ``finite`` false too.
    inner.found_inf = (~finite).float()
    try:
        parts.optimizer.step()
    finally:
        inner.__dict__.pop("found_inf", None)
    if parts.ema is not None:
        ema_update(parts.ema, parts.model, finite.float() * ema_weight)
