"""Generation: DDPM / DDIM / DPM-Solver++ through diffusers schedulers, with classifier-free
guidance, per-class folders and per-image seeds.

Every image draws its starting noise and its per-step noise from its own generator, seeded by
(seed, class, index). An image therefore depends only on those three numbers, never on the
batch it was computed in (diffusers' ``randn_tensor`` accepts one generator per batch item).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

from diffscape import __version__, atomic, config, diffusion, layout, lock
from diffscape.checkpoint import resolve_checkpoint
from diffscape.config import RunConfig, load_config_json
from diffscape.errors import DiffscapeError
from diffscape.imagefolder import make_grid, save_png
from diffscape.model import load_unet, null_class


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
    """A run folder (its latest complete checkpoint) or a checkpoint folder -> the network."""
    ckpt = resolve_checkpoint(Path(path))
    cfg = load_config_json(ckpt / layout.CONFIG_JSON)
    classes = class_names(ckpt, cfg)
    weights = layout.EMA_DIR if use_ema else layout.MODEL_DIR
    unet = load_unet(ckpt / weights).eval()
    unet.to(device or default_device())
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
    names = [layout.safe_component(c, f"class name in {path}") for c in names]
    if len(set(names)) != len(names):
        raise DiffscapeError(f"{path} lists a class name twice; each class needs its own folder")
    return names


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    *,
    sampler: diffusion.Sampler = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Run a sampler from ``noise`` (B, 3, H, W) to images (float, on CPU), not clamped: about
    [-1, 1] for a trained model; ``to_uint8`` clamps."""
    device = next(unet.parameters()).device
    sched = diffusion.make_scheduler(cfg.diffusion, sampler)
    n_steps = diffusion.sampler_steps(cfg.diffusion.timesteps, sampler, steps)
    sched.set_timesteps(n_steps, device=device)
    x = noise.to(device) * sched.init_noise_sigma
    if labels is not None:
        labels = labels.to(device)
    extra: dict = {"eta": eta} if sampler == "ddim" else {}
    if sampler in diffusion.TAKES_GENERATOR:
        extra["generator"] = generators
    null = null_class(cfg.model)
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        out = model_output(unet, model_in, t, labels, null, guidance)
        x = sched.step(out, t, x, **extra).prev_sample
    if not torch.isfinite(x).all():  # would become black images silently
        raise DiffscapeError(
            f"{sampler} produced NaN or infinite pixels: the weights are damaged or the settings "
            f"diverge (guidance {guidance:g}); try another checkpoint or a smaller --guidance"
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
    seed: int,
    sampler: diffusion.Sampler = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    guidance: float = 1.0,
    batch: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Images for the given (class, index) pairs as uint8 (N, 3, H, W)."""
    if len(class_idx) != len(index):
        raise ValueError("class_idx and index must have the same length")
    check_settings(sampler=sampler, steps=steps, eta=eta, guidance=guidance, seed=seed, batch=batch)
    conditional = cfg.model.conditional
    if not conditional and any(c is not None for c in class_idx):
        raise DiffscapeError("this model is unconditional: it cannot sample a class")
    if conditional and any(c is None for c in class_idx) and guidance != 0.0:
        raise DiffscapeError("a conditional model needs a class per image (or guidance 0)")
    size = cfg.model.image_size
    out = np.empty((len(index), 3, size, size), np.uint8)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(index), desc=f"sample ({sampler})", unit="img", dynamic_ncols=True)
    was_training = unet.training
    unet.eval()
    for start in range(0, len(index), batch):
        sl = slice(start, start + batch)
        gens = [image_generator(seed, c, i) for c, i in zip(class_idx[sl], index[sl], strict=True)]
        noise = torch.stack([torch.randn((3, size, size), generator=g) for g in gens])
        labels = None
        if conditional:
            null = null_class(cfg.model)
            labels = torch.tensor([null if c is None else c for c in class_idx[sl]])
        x = denoise(
            unet, cfg, noise, labels, gens,
            sampler=sampler, steps=steps, eta=eta, guidance=guidance,
        )  # fmt: skip
        out[sl] = to_uint8(x)
        if bar is not None:
            bar.update(len(gens))
    if bar is not None:
        bar.close()
    unet.train(was_training)
    return out


def grid_image(images: np.ndarray, row_names: Sequence[str], per_row: int):  # noqa: ANN201
    """A PIL image with one labelled row of ``per_row`` images per name."""
    from diffscape.data.show import labelled_rows_image

    rows = [(name, images[k * per_row : (k + 1) * per_row]) for k, name in enumerate(row_names)]
    return labelled_rows_image(rows)


def check_settings(**given: object) -> None:
    """Sample settings given to the library (``n``, ``sampler``, ``steps``, ``eta``,
    ``guidance``, ``seed``, ``batch``) checked by the settings engine against the bounds that
    ``--help`` shows: a one-line ConfigError naming the setting. None: not given (default)."""
    config.parse_section("sample", {k: v for k, v in given.items() if v is not None})


def plan(
    model: LoadedModel, n: int, per_class: bool, classes: Sequence[str] | None
) -> tuple[list[int | None], list[int], list[str]]:
    """(class index, index within class, folder name) for every image to make.

    Conditional: ``n`` per class with ``per_class``, else ``n`` in total spread round-robin over
    the chosen classes. Unconditional: ``n`` images into ``unconditional/``.
    """
    if not model.cfg.model.conditional:
        if classes:
            raise DiffscapeError(
                "this model is unconditional (trained without --conditional): it cannot make "
                f"images of class {', '.join(classes)}; drop --class"
            )
        return [None] * n, list(range(n)), [layout.UNCONDITIONAL] * n
    chosen = [layout.safe_component(c, "class name") for c in classes or model.classes]
    unknown = [c for c in chosen if c not in model.classes]
    if unknown:
        raise DiffscapeError(
            f"unknown class {', '.join(unknown)}; this model knows {', '.join(model.classes)}"
        )
    ks = [model.classes.index(c) for c in chosen]
    if per_class:
        pairs = [(k, i) for k in ks for i in range(n)]
    else:
        counters = dict.fromkeys(ks, 0)
        pairs = []
        for j in range(n):
            k = ks[j % len(ks)]
            pairs.append((k, counters[k]))
            counters[k] += 1
    return [k for k, _ in pairs], [i for _, i in pairs], [model.classes[k] for k, _ in pairs]


def sample_to_folder(
    source: str | Path,
    out: str | Path,
    *,
    n: int = 16,
    per_class: bool = False,
    classes: Sequence[str] | None = None,
    sampler: diffusion.Sampler = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    guidance: float | None = None,
    seed: int = 0,
    batch: int | None = None,
    use_ema: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Sample from a run or checkpoint into ``out/<class>/<index>.png`` + ``grid.png`` +
    ``samples.json``; returns the samples.json record.

    The folder is written as a whole: built beside ``out`` and renamed into place when done, so
    an interruption leaves nothing half-written. An existing samples folder is replaced only
    with ``overwrite`` (its old images are deleted, never mixed with the new ones); ``steps``
    None is the sampler's default, and the record says the steps really taken.
    """
    check_settings(sampler=sampler, n=n, batch=batch, steps=steps, seed=seed, guidance=guidance,
                   eta=eta)  # fmt: skip
    out = samples_out(out, overwrite)
    with lock.hold_beside(out, "samples folder"):
        samples_out(out, overwrite)  # again: another writer may have finished meanwhile
        model = load_for_sampling(source, use_ema=use_ema)
        if not model.cfg.model.conditional and guidance not in (None, 0.0, 1.0):
            raise DiffscapeError(
                "this model is unconditional: --guidance needs a model trained with --conditional"
            )
        w = 1.0 if guidance is None else guidance
        class_idx, index, folders = plan(model, n, per_class, classes)
        names = sorted(set(folders), key=folders.index)
        record = {
            "checkpoint": str(model.checkpoint.resolve()),
            "weights": model.weights,
            "sampler": sampler,
            "steps": diffusion.sampler_steps(model.cfg.diffusion.timesteps, sampler, steps),
            "eta": eta,
            "guidance": w if model.cfg.model.conditional else None,
            "seed": seed,
            "n": len(index),
            "per_class": per_class,
            "classes": names,
            "counts": {name: folders.count(name) for name in names},
            "image_size": model.cfg.model.image_size,
            "versions": versions(),
        }
        if batch is None:
            batch = 256 if next(model.unet.parameters()).device.type == "cuda" else 64
        tmp = atomic.tmp_dir_beside(out)
        try:
            images = generate_images(
                model.unet, model.cfg, class_idx=class_idx, index=index, seed=seed,
                sampler=sampler, steps=steps, eta=eta, guidance=w, batch=batch, progress=progress,
            )  # fmt: skip
            write_samples(tmp, images, folders, index, record)
            atomic.publish_dir(tmp, out)
        finally:  # interrupted or failed: no half-written folder stays behind
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def samples_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a Path when a samples folder may be written there: a new or empty folder, or
    an older samples folder with ``overwrite``, in a folder this process can write to (checked
    before any image is made). Otherwise a one-line error that says what to do."""
    out = layout.check_out(out, "samples")
    if layout.is_samples_dir(out) and not overwrite:
        raise layout.OutError(
            f"--out {out} already holds samples; add --overwrite to replace them (the old images "
            "are deleted, never mixed with the new ones), or pick another folder"
        )
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiffscapeError(
            f"cannot write into {parent} (read-only file system or no permission); pick an "
            "--out in a folder you can write to"
        )
    return out


def write_samples(
    folder: Path, images: np.ndarray, folders: Sequence[str], index: Sequence[int], record: dict
) -> None:
    """The files of a samples folder: ``<class>/<index>.png``, grid.png (one labelled row of
    up to 8 images per class) and samples.json (written last)."""
    for img, name, i in zip(images, folders, index, strict=True):
        save_png(folder / name / layout.sample_name(i), img)
    names = record["classes"]
    per_row = min(8, max(1, min(folders.count(f) for f in names)))
    picks = [[j for j, f in enumerate(folders) if f == name][:per_row] for name in names]
    grid_image(np.concatenate([images[p] for p in picks]), names, per_row).save(
        folder / layout.GRID_PNG
    )
    atomic.write_json(folder / layout.SAMPLES_JSON, record)


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
) -> np.ndarray:
    """A row of images whose starting noise walks from seed_a's to seed_b's (slerp), with the
    deterministic DDIM (eta 0) or DPM-Solver++ so the row changes smoothly. ``steps`` None is
    the sampler's default."""
    if sampler == "ddpm":
        raise DiffscapeError("interpolation needs a deterministic sampler: ddim or dpm")
    check_settings(sampler=sampler, steps=steps, guidance=guidance, seed=seed_a)
    check_settings(seed=seed_b)
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= MAX_FRAMES:
        raise DiffscapeError(f"frames {frames!r}: give 2..{MAX_FRAMES} images in the row")
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise DiffscapeError(f"interpolate writes a PNG image: {out_png} must end in .png")
    model = load_for_sampling(source)
    class_idx, _, _ = plan(model, 1, False, [class_name] if class_name else None)
    k = class_idx[0]
    size = model.cfg.model.image_size
    a = torch.randn((3, size, size), generator=image_generator(seed_a, k, 0))
    b = torch.randn((3, size, size), generator=image_generator(seed_b, k, 0))
    noise = torch.stack([slerp(a, b, u) for u in np.linspace(0.0, 1.0, frames)])
    labels = None if k is None else torch.full((frames,), k)
    gens = [torch.Generator().manual_seed(0) for _ in range(frames)]  # unused at eta 0
    x = denoise(
        model.unet, model.cfg, noise, labels, gens, sampler=sampler, steps=steps, guidance=guidance
    )
    images = to_uint8(x)
    from PIL import Image

    with atomic.atomic_path(out_png) as tmp:
        Image.fromarray(make_grid(images, nrow=frames).transpose(1, 2, 0)).save(tmp, format="PNG")
    return images


def export_diffusers(source: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """A folder diffusers loads: ``unet/`` (UNet2DModel) and ``scheduler/`` (DDPMScheduler with
    the model's betas). Other samplers load from the same scheduler config. Written as a whole;
    ``out`` may be new, empty or an older export."""
    out = layout.check_out(out, "export")
    model = load_for_sampling(source, use_ema=use_ema, device="cpu")
    tmp = atomic.tmp_dir_beside(out)
    try:
        model.unet.save_pretrained(tmp / layout.EXPORT_UNET, safe_serialization=True)
        sched = diffusion.make_scheduler(model.cfg.diffusion, "ddpm")
        sched.save_pretrained(tmp / layout.EXPORT_SCHEDULER)
        info = {"classes": model.classes, "null_class": null_class(model.cfg.model)}
        atomic.write_json(tmp / layout.EXPORT_CLASSES, info)
        atomic.write_text(tmp / layout.EXPORT_CONFIG, model.cfg.to_json())
        atomic.publish_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if model.cfg.model.activation != "silu":
        print(
            f"note: activation {model.cfg.model.activation!r} also replaces the SiLU that "
            "diffusers hard-codes in the time MLP and output head; load with "
            "diffscape.model.load_unet (or apply_activation after from_pretrained) to get the "
            "trained network",
            file=sys.stderr,
        )
    return out


def versions() -> dict[str, str]:
    import diffusers

    return {
        "diffscape": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }
